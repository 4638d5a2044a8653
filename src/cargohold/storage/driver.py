"""The storage driver port: a flat key/value object store.

Drivers know nothing of digests, manifests or repositories; `storage.layout` builds
every key from names that were validated before, and `check_key` refuses anything
else before a driver touches it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """Base of every driver failure."""


class ObjectNotFound(StorageError):
    pass


class InvalidKey(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: datetime


_KEY_RE = re.compile(r"[a-z0-9]+(?:/[A-Za-z0-9._-]+)*")


def check_key(key: str) -> str:
    """Keys are relative, slash-separated, and never contain `.` or `..` components."""
    if len(key) > 512 or not _KEY_RE.fullmatch(key):
        raise InvalidKey(f"invalid storage key {key!r}")
    if any(part in {".", ".."} for part in key.split("/")):
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


class UploadWriter(Protocol):
    """Appends to an object in progress. Readers never see it under a final key."""

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Flush and release; the object can be reopened at its size later."""


class ObjectReader(Protocol):
    """What reading an object takes: a driver, or the storage locations (which read
    from whichever location has it)."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream an object from `offset`, `length` bytes or to the end; raises ObjectNotFound."""


class StorageDriver(Protocol):
    name: str

    async def stat(self, key: str) -> ObjectInfo:
        """Size and time of an object; raises ObjectNotFound."""

    async def get_bytes(self, key: str) -> bytes:
        """A small object's content; raises ObjectNotFound."""

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old or the new content, never a part."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream an object from `offset`, `length` bytes or to the end; raises ObjectNotFound."""

    async def writer(self, key: str, *, offset: int = 0) -> UploadWriter:
        """Open `key` for appending at `offset`, discarding anything beyond it."""

    async def commit(self, src: str, dst: str) -> None:
        """Durably move a finished object to its final key (overwriting it)."""

    async def delete(self, key: str) -> None:
        """Remove an object or a whole prefix; a missing key is not an error."""

    def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object below `prefix`, in any order."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for zero-copy serving, or None if the driver has none."""

    async def redirect_url(self, key: str) -> str | None:
        """A URL to send blob downloads to (a presigned URL) when the driver is set up to
        redirect them, else None: the registry serves the bytes itself."""

    def exclusive(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold `key` exclusively against other processes sharing this storage (the caller
        serialises its own tasks). Used around writes to an upload in progress."""
