"""Blob download responses: zero-copy from a local file where the server offers it
(`http.response.pathsend`), otherwise 1 MiB reads, never whole blobs in memory."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cargohold.domain.errors import RangeNotSatisfiable

CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (start, end inclusive); None for the whole blob.

    Syntax this server does not serve (several ranges, other units) is ignored, as
    RFC 9110 allows; a well-formed range outside the blob is not satisfiable."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size=size)
        return max(size - n, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise RangeNotSatisfiable(size=size)
    return start, end


class BlobResponse(Response):
    def __init__(
        self,
        *,
        size: int,
        headers: Mapping[str, str],
        path: Path | None,
        stream: AsyncIterator[bytes] | None,
        byte_range: tuple[int, int] | None,
        send_body: bool,
    ) -> None:
        self.status_code = 206 if byte_range else 200
        self.background = None
        start, end = byte_range if byte_range else (0, size - 1)
        self.offset = start
        self.length = end - start + 1 if size else 0
        hdrs = dict(headers)
        hdrs["Content-Length"] = str(self.length)
        hdrs["Accept-Ranges"] = "bytes"
        if byte_range:
            hdrs["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.init_headers(hdrs)
        self.path = path
        self.stream = stream
        self.send_body = send_body
        self.whole = byte_range is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if not self.send_body or self.length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        extensions = scope.get("extensions") or {}
        if self.path is not None and self.whole and "http.response.pathsend" in extensions:
            await send({"type": "http.response.pathsend", "path": str(self.path)})
            return
        if self.path is not None:
            await self._send_file(send, self.path)
        elif self.stream is not None:
            async for data in self.stream:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _send_file(self, send: Send, path: Path) -> None:
        fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        try:
            remaining, offset = self.length, self.offset
            while remaining > 0:
                data = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, remaining), offset)
                if not data:
                    break
                remaining -= len(data)
                offset += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": remaining > 0})
            if remaining > 0:  # the file shrank under us; end the body rather than hang
                await send({"type": "http.response.body", "body": b""})
        finally:
            os.close(fd)
