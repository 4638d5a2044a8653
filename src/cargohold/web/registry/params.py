"""Parsing of query parameters and headers shared by the /v2 handlers."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request

from cargohold.domain.errors import BlobUploadInvalid, PaginationInvalid, SizeInvalid
from cargohold.services.uploads import ChunkRange

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?")


def page_size(request: Request, maximum: int, default: int | None = None) -> int:
    """`n` from the query, clamped to `maximum` (a huge `n` is not an error); without `n`,
    `default` (or `maximum`)."""
    text = request.query_params.get("n")
    if text is None or text == "":
        return maximum if default is None else default
    if not (text.isascii() and text.isdigit()):  # isdigit alone accepts "²"
        raise PaginationInvalid("n must be a non-negative integer")
    return maximum if len(text) > 19 else min(int(text), maximum)


def last_param(request: Request) -> str | None:
    last = request.query_params.get("last")
    if last is not None and len(last) > 512:
        raise PaginationInvalid("last is too long")
    if last is not None and "\x00" in last:  # in no name, and PostgreSQL text cannot hold it
        raise PaginationInvalid("last must not contain NUL")
    return last or None


def next_link(path: str, n: int, last: str, **extra: str) -> str:
    query = urlencode({**extra, "n": n, "last": last})
    return f'<{path}?{query}>; rel="next"'


def content_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit() or len(text) > 19:
        raise SizeInvalid("Content-Length must be a non-negative integer")
    return int(text)


def chunk_range(request: Request) -> ChunkRange | None:
    text = request.headers.get("content-range")
    if text is None:
        return None
    m = _CONTENT_RANGE.fullmatch(text.strip())
    if m is None:
        raise BlobUploadInvalid("Content-Range must be <start>-<end>")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise BlobUploadInvalid("Content-Range end is before its start")
    return ChunkRange(start, end)
