"""The filesystem driver: objects are files below a root directory.

Finished objects reach their key by rename after fsync, so a crash leaves either the
whole file or none of it under the key."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from cargohold.storage.driver import ObjectInfo, ObjectNotFound, check_key

CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemWriter:
    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write_all, data)
        self._size += len(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await asyncio.to_thread(os.close, fd)


class FilesystemDriver:
    name = "filesystem"

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def redirect_url(self, key: str) -> str | None:
        return None

    async def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, self._path(key), data)

    def _put_sync(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(path.parent)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        try:
            if offset:
                f.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                data = await asyncio.to_thread(f.read, want)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            f.close()

    async def writer(self, key: str, *, offset: int = 0) -> FilesystemWriter:
        path = self._path(key)

        def open_at() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            return fd

        return FilesystemWriter(await asyncio.to_thread(open_at), offset)

    async def commit(self, src: str, dst: str) -> None:
        await asyncio.to_thread(self._commit_sync, self._path(src), self._path(dst))

    def _commit_sync(self, src: Path, dst: Path) -> None:
        try:
            if self.fsync:
                fd = os.open(src, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        except FileNotFoundError as exc:
            raise ObjectNotFound(str(src)) from exc
        if self.fsync:
            _fsync_dir(dst.parent)

    @asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        """An flock on the object's file: other worker processes wait; closing releases it."""
        path = self._path(key)

        def acquire() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            return fd

        fd = await asyncio.to_thread(acquire)
        try:
            yield
        finally:
            os.close(fd)

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        base = self._path(prefix)

        def scan() -> list[ObjectInfo]:
            out = []
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    p = Path(dirpath) / name
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    key = p.relative_to(self.root).as_posix()
                    out.append(
                        ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                    )
            return out

        for info in await asyncio.to_thread(scan):
            yield info
