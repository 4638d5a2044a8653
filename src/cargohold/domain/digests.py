"""Content digests: parsing, verification and streaming hashers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cargohold.domain.errors import DigestInvalid, Unsupported

# The spec's general grammar: algorithm ":" encoded.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[a-f0-9]+")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> Hasher:
        return new_hasher(self.algorithm)


def parse_digest(text: str) -> Digest:
    """Parse `sha256:<64 hex>` or `sha512:<128 hex>`; anything else raises DigestInvalid."""
    if len(text) > 200 or not _GRAMMAR.fullmatch(text):
        raise DigestInvalid("digest does not match algorithm:hex")
    algorithm, encoded = text.split(":", 1)
    expected = _HEX_LENGTH.get(algorithm)
    if expected is None:
        raise Unsupported(f"digest algorithm {algorithm!r} is not supported (sha256, sha512)")
    if len(encoded) != expected or not _HEX_RE.fullmatch(encoded):
        raise DigestInvalid(f"{algorithm} digest must be {expected} lowercase hex characters")
    return Digest(algorithm, encoded)


def new_hasher(algorithm: str = "sha256") -> Hasher:
    if algorithm not in _HEX_LENGTH:
        raise Unsupported(f"digest algorithm {algorithm!r} is not supported")
    return hashlib.new(algorithm)


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    h = new_hasher(algorithm)
    h.update(data)
    return Digest(algorithm, h.hexdigest())
