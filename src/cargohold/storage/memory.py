"""An in-memory driver: a real driver for tests and throwaway registries, not a double."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from cargohold.storage.driver import ObjectInfo, ObjectNotFound, check_key


class MemoryWriter:
    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer

    @property
    def size(self) -> int:
        return len(self._buffer)

    async def write(self, data: bytes) -> None:
        self._buffer.extend(data)

    async def close(self) -> None:
        return None


class MemoryDriver:
    name = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytearray, datetime]] = {}

    def local_path(self, key: str) -> Path | None:
        return None

    async def redirect_url(self, key: str) -> str | None:
        return None

    @asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        yield  # one process: the caller's own lock is enough

    def _get(self, key: str) -> bytearray:
        try:
            return self._objects[check_key(key)][0]
        except KeyError as exc:
            raise ObjectNotFound(key) from exc

    async def stat(self, key: str) -> ObjectInfo:
        data = self._get(key)
        return ObjectInfo(key, len(data), self._objects[key][1])

    async def get_bytes(self, key: str) -> bytes:
        return bytes(self._get(key))

    async def put_bytes(self, key: str, data: bytes) -> None:
        self._objects[check_key(key)] = (bytearray(data), datetime.now(UTC))

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        data = self._get(key)
        end = len(data) if length is None else min(len(data), offset + length)
        for start in range(offset, end, 1 << 20):
            yield bytes(data[start : min(end, start + (1 << 20))])

    async def writer(self, key: str, *, offset: int = 0) -> MemoryWriter:
        buffer = self._objects.setdefault(check_key(key), (bytearray(), datetime.now(UTC)))[0]
        del buffer[offset:]
        return MemoryWriter(buffer)

    async def commit(self, src: str, dst: str) -> None:
        data = self._get(src)
        self._objects[check_key(dst)] = (data, datetime.now(UTC))
        del self._objects[src]

    async def delete(self, key: str) -> None:
        check_key(key)
        for k in [k for k in self._objects if k == key or k.startswith(key + "/")]:
            del self._objects[k]

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        check_key(prefix)
        for key, (data, when) in list(self._objects.items()):
            if key.startswith(prefix + "/"):
                yield ObjectInfo(key, len(data), when)
