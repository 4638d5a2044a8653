"""Storage drivers by name. An unknown name is a settings error, never a silent fallback."""

from __future__ import annotations

from collections.abc import Callable

from cargohold.settings import Settings
from cargohold.storage.driver import StorageDriver
from cargohold.storage.filesystem import FilesystemDriver
from cargohold.storage.memory import MemoryDriver

DRIVERS: dict[str, Callable[[Settings], StorageDriver]] = {
    "filesystem": lambda s: FilesystemDriver(
        s.storage.filesystem.root, fsync=s.storage.filesystem.fsync
    ),
    "memory": lambda s: MemoryDriver(),
}


def build_driver(settings: Settings) -> StorageDriver:
    try:
        factory = DRIVERS[settings.storage.driver]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown storage driver {settings.storage.driver!r} ({known})") from None
    return factory(settings)
