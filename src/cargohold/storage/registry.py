"""Storage drivers by name. An unknown name is a settings error, never a silent fallback."""

from __future__ import annotations

from collections.abc import Callable

from cargohold.settings import Settings, StorageLocationSettings
from cargohold.storage.driver import StorageDriver
from cargohold.storage.filesystem import FilesystemDriver
from cargohold.storage.locations import StorageLocations
from cargohold.storage.memory import MemoryDriver


def _s3(location: StorageLocationSettings) -> StorageDriver:
    from cargohold.storage.s3 import S3Driver  # boto3 is imported only where it is used

    return S3Driver.from_settings(location.s3)


DRIVERS: dict[str, Callable[[StorageLocationSettings], StorageDriver]] = {
    "filesystem": lambda s: FilesystemDriver(s.filesystem.root, fsync=s.filesystem.fsync),
    "memory": lambda s: MemoryDriver(),
    "s3": _s3,
}


def build_location(location: StorageLocationSettings) -> StorageDriver:
    try:
        factory = DRIVERS[location.driver]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown storage driver {location.driver!r} ({known})") from None
    return factory(location)


def build_driver(settings: Settings) -> StorageDriver:
    """The default location's driver (the `storage` section itself)."""
    return build_location(settings.storage)


def build_locations(settings: Settings) -> StorageLocations:
    """A driver for every configured location (ARCHITECTURE.md, "Storage locations")."""
    storage = settings.storage
    drivers = {storage.name: build_location(storage)}
    for name, location in storage.locations.items():
        drivers[name] = build_location(location)
    return StorageLocations(
        drivers,
        default=storage.name,
        write_to=storage.writes,
        read_preference=storage.read_preference,
    )
