"""Storage drivers by name. An unknown name is a settings error, never a silent fallback."""

from __future__ import annotations

from collections.abc import Callable

from cargohold.settings import Settings
from cargohold.storage.driver import StorageDriver
from cargohold.storage.filesystem import FilesystemDriver
from cargohold.storage.memory import MemoryDriver


def _s3(settings: Settings) -> StorageDriver:
    from cargohold.storage.s3 import S3Driver  # boto3 is imported only where it is used

    return S3Driver.from_settings(settings.storage.s3)


DRIVERS: dict[str, Callable[[Settings], StorageDriver]] = {
    "filesystem": lambda s: FilesystemDriver(
        s.storage.filesystem.root, fsync=s.storage.filesystem.fsync
    ),
    "memory": lambda s: MemoryDriver(),
    "s3": _s3,
}


def build_driver(settings: Settings) -> StorageDriver:
    try:
        factory = DRIVERS[settings.storage.driver]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown storage driver {settings.storage.driver!r} ({known})") from None
    return factory(settings)
