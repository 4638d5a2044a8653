"""Storage locations by name: one driver each (ARCHITECTURE.md, "Storage locations").

The `storage` section is the default location; `storage.locations` adds named ones.
New blobs are written to `write_to` (the first also holds uploads in progress: the
*primary*), and the database records which locations hold each blob (`blob_placement`;
a blob without a row is in the default location, as everything stored before there were
rows). Reads go to the holders in `read_order`. With one location nothing of this costs
anything: no placement is recorded or looked up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence

from cargohold.storage.driver import ObjectNotFound, StorageDriver

log = logging.getLogger(__name__)


class StorageLocations:
    def __init__(
        self,
        drivers: Mapping[str, StorageDriver],
        *,
        default: str,
        write_to: Sequence[str] = (),
        read_preference: Sequence[str] = (),
    ) -> None:
        if default not in drivers:
            raise ValueError(f"no driver for the default location {default!r}")
        self.drivers = dict(drivers)
        self.default = default
        self.write_to: tuple[str, ...] = tuple(write_to) or (default,)
        unknown = [n for n in (*self.write_to, *read_preference) if n not in self.drivers]
        if unknown:
            raise ValueError(f"unknown storage locations: {', '.join(unknown)}")
        # Preferred first, then where new blobs go, the default, and the rest.
        self.read_order: tuple[str, ...] = tuple(
            dict.fromkeys([*read_preference, *self.write_to, default, *sorted(self.drivers)])
        )
        self.primary_name = self.write_to[0]
        # Uploads in progress and the first copy of every new blob.
        self.primary = self.drivers[self.primary_name]
        # Copied from the primary before a push is answered.
        self.secondaries: tuple[str, ...] = self.write_to[1:]
        # Placements are recorded and consulted only then.
        self.several = len(self.drivers) > 1

    @classmethod
    def single(cls, driver: StorageDriver, name: str = "default") -> StorageLocations:
        return cls({name: driver}, default=name)

    def holders(self, placements: Collection[str]) -> list[tuple[str, StorageDriver]]:
        """The configured locations among `placements`, in read order; no placement at all
        means the default location. A placement in a location no longer configured is
        skipped (and logged)."""
        names = set(placements) if placements else {self.default}
        for name in names - set(self.drivers):
            log.warning("a blob is placed in storage location %r, which is not configured", name)
        return [(n, self.drivers[n]) for n in self.read_order if n in names]

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream `key` from the first location, in read order, that has it (for small
        reads that need no placement lookup: a config blob's labels); ObjectNotFound if
        none has it."""
        for _name, driver in self.holders(self.drivers):
            try:
                await driver.stat(key)
            except ObjectNotFound:
                continue
            async for data in driver.read(key, offset, length):
                yield data
            return
        raise ObjectNotFound(key)

    async def close(self) -> None:
        """Release the drivers' resources (S3 thread pools)."""
        for driver in self.drivers.values():
            close = getattr(driver, "close", None)
            if callable(close):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
