"""The Runtime: settings, adapters and services wired once, handed to entry points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cargohold.db.session import Database
from cargohold.services.blobs import BlobService
from cargohold.services.cache import MetadataCache, SharedFileGeneration
from cargohold.services.listings import ListingService
from cargohold.services.manifests import ManifestService
from cargohold.services.uploads import UploadService
from cargohold.settings import Settings
from cargohold.storage.driver import StorageDriver


@dataclass
class Runtime:
    settings: Settings
    db: Database
    storage: StorageDriver
    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    listings: ListingService

    cache: MetadataCache

    @classmethod
    def build(cls, settings: Settings, db: Database, storage: StorageDriver) -> Runtime:
        reg = settings.registry
        # Worker processes of one host share the invalidation counter through a file.
        cache = MetadataCache(SharedFileGeneration(Path(settings.data_dir) / "run" / "cache-gen"))
        return cls(
            settings=settings,
            db=db,
            storage=storage,
            blobs=BlobService(db, cache),
            uploads=UploadService(db, storage, max_blob_bytes=reg.max_blob_bytes),
            manifests=ManifestService(db, cache, max_manifest_bytes=reg.max_manifest_bytes),
            listings=ListingService(db, cache),
            cache=cache,
        )

    async def close(self) -> None:
        await self.db.dispose()
