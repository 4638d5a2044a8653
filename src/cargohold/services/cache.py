"""In-memory metadata caches for the hot read paths (manifest GET, blob HEAD).

Only positive answers are cached, so creating something never makes an entry stale.
What can go stale (a tag moved, a manifest, tag or blob link deleted) bumps a
generation counter; every cache that sees a new generation empties itself. The counter
is per process (`LocalGeneration`) or shared by the worker processes of one host
through a memory-mapped file (`SharedFileGeneration`); with Redis, bumps also reach the
other hosts (`shared.state.RedisGeneration`)."""

from __future__ import annotations

import mmap
import os
import struct
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cargohold.services.records import ManifestRecord


class Generation(Protocol):
    def current(self) -> int: ...
    def bump(self) -> None: ...


class LocalGeneration:
    def __init__(self) -> None:
        self._value = 0

    def current(self) -> int:
        return self._value

    def bump(self) -> None:
        self._value += 1


class SharedFileGeneration:
    """An 8-byte counter in a shared mapping: reading it costs no system call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def current(self) -> int:
        value: int = struct.unpack_from("<Q", self._map, 0)[0]
        return value

    def bump(self) -> None:
        # A fresh random value rather than +1: a read-modify-write from two processes
        # could write back a value some cache has already seen (and keep it stale).
        struct.pack_into("<Q", self._map, 0, int.from_bytes(os.urandom(8), "little"))


class TickingGeneration:
    """A generation that also moves on by itself every `seconds`: caches on it never
    serve an answer older than that. For several hosts on one PostgreSQL database without
    Redis, where nothing tells one host of another's changes."""

    def __init__(self, inner: Generation, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def current(self) -> int:
        return self.inner.current() + int(time.monotonic() / self.seconds)

    def bump(self) -> None:
        self.inner.bump()


class MetadataCache:
    def __init__(self, generation: Generation, *, max_bytes: int = 64 << 20) -> None:
        self.generation = generation
        self.max_bytes = max_bytes
        self._seen = generation.current()
        self._bytes = 0
        self._manifests: dict[tuple[str, str], ManifestRecord] = {}
        # tag -> (digest, expiry as a UNIX time or None): an expired entry is a miss.
        self._tags: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._blobs: dict[tuple[str, str], int] = {}
        self._repositories: dict[str, int] = {}
        # Lookups answered from memory and not, per kind (read by the metrics).
        self.hits = {"manifest": 0, "tag": 0, "blob": 0}
        self.misses = {"manifest": 0, "tag": 0, "blob": 0}

    def _fresh(self) -> None:
        now = self.generation.current()
        if now != self._seen:
            self._clear()
            self._seen = now

    def _clear(self) -> None:
        self._repositories.clear()
        self._manifests.clear()
        self._tags.clear()
        self._blobs.clear()
        self._bytes = 0

    def snapshot(self) -> int:
        """Take before reading the database; pass to remember_* so that an answer read
        before a concurrent invalidation is not cached after it."""
        return self.generation.current()

    def invalidate(self) -> None:
        """Something cached may be stale now: empty this cache and every other one."""
        self.generation.bump()
        self._clear()
        self._seen = self.generation.current()

    # -- manifests and tags --------------------------------------------------------------

    def manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        self._fresh()
        found = self._manifests.get((repository, digest))
        if found is None:
            self.misses["manifest"] += 1
        else:
            self.hits["manifest"] += 1
        return found

    def tag(self, repository: str, tag: str) -> ManifestRecord | None:
        found = self._tag(repository, tag)
        if found is None:
            self.misses["tag"] += 1
        else:
            self.hits["tag"] += 1
        return found

    def _tag(self, repository: str, tag: str) -> ManifestRecord | None:
        self._fresh()
        entry = self._tags.get((repository, tag))
        if entry is None:
            return None
        digest, expires = entry
        if expires is not None and time.time() >= expires:
            del self._tags[(repository, tag)]  # the tag expired: ask the database
            return None
        return self._manifests.get((repository, digest))

    def remember_manifest(
        self,
        snapshot: int,
        repository: str,
        record: ManifestRecord,
        tag: str | None = None,
        tag_expires: datetime | None = None,
    ) -> None:
        self._fresh()
        if snapshot != self._seen:
            return
        if self._bytes + record.size > self.max_bytes:
            self._clear()
        if (repository, record.digest) not in self._manifests:
            self._bytes += record.size
        self._manifests[(repository, record.digest)] = record
        if tag is not None:
            expires = None if tag_expires is None else tag_expires.timestamp()
            self._tags[(repository, tag)] = (record.digest, expires)

    # -- repository ids (remember only ids of committed rows) ----------------------------

    def repository_id(self, name: str) -> int | None:
        self._fresh()
        return self._repositories.get(name)

    def remember_repository(self, name: str, repository_id: int) -> None:
        self._fresh()
        if len(self._repositories) > 1_000_000:
            self._repositories.clear()
        self._repositories[name] = repository_id

    # -- blob links ----------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        self._fresh()
        found = self._blobs.get((repository, digest))
        if found is None:
            self.misses["blob"] += 1
        else:
            self.hits["blob"] += 1
        return found

    def remember_blob(self, snapshot: int, repository: str, digest: str, size: int) -> None:
        self._fresh()
        if snapshot != self._seen:
            return
        if len(self._blobs) > 1_000_000:
            self._blobs.clear()
        self._blobs[(repository, digest)] = size
