"""Blobs as repositories see them: existence, deletion and cross-repository mounts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, exists, select

from cargohold.db.models import Blob, Manifest, ManifestBlob, Repository, RepositoryBlob
from cargohold.db.queries import ensure_repository, insert_ignore
from cargohold.db.session import Database, DbSession, run_write
from cargohold.domain.digests import Digest
from cargohold.domain.errors import BlobUnknown, Referenced
from cargohold.domain.names import RepositoryName
from cargohold.services.cache import MetadataCache
from cargohold.storage import layout


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int

    @property
    def key(self) -> str:
        return layout.blob_key(self.digest)


async def linked_blob(session: DbSession, repository: str, digest: Digest) -> tuple[int, int]:
    """(blob id, size) of a blob linked into `repository`; raises BlobUnknown."""
    row = (
        await session.execute(
            select(Blob.id, Blob.size)
            .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
            .join(Repository, Repository.id == RepositoryBlob.repository_id)
            .where(Repository.name == repository, Blob.digest == str(digest))
        )
    ).first()
    if row is None:
        raise BlobUnknown(detail={"digest": str(digest)})
    return row[0], row[1]


async def link_blob(session: DbSession, repository: RepositoryName, blob_id: int) -> None:
    repo_id = await ensure_repository(session, repository.value, repository.namespace)
    await insert_ignore(session, RepositoryBlob, {"repository_id": repo_id, "blob_id": blob_id})


class BlobService:
    def __init__(self, db: Database, cache: MetadataCache) -> None:
        self.db = db
        self.cache = cache

    async def stat(self, repository: RepositoryName, digest: Digest) -> BlobInfo:
        size = self.cache.blob_size(repository.value, str(digest))
        if size is None:
            snapshot = self.cache.snapshot()
            async with self.db.read() as session:
                _, size = await linked_blob(session, repository.value, digest)
            self.cache.remember_blob(snapshot, repository.value, str(digest), size)
        return BlobInfo(digest, size)

    async def delete(self, repository: RepositoryName, digest: Digest) -> None:
        """Unlink a blob from a repository. Its bytes go when nothing refers to them (GC)."""

        async def work(session: DbSession) -> None:
            blob_id, _ = await linked_blob(session, repository.value, digest)
            repo_id = (
                await session.execute(
                    select(Repository.id).where(Repository.name == repository.value)
                )
            ).scalar_one()
            in_use = await session.scalar(
                select(
                    exists()
                    .where(ManifestBlob.blob_id == blob_id)
                    .where(ManifestBlob.manifest_id == Manifest.id)
                    .where(Manifest.repository_id == repo_id)
                )
            )
            if in_use:
                raise Referenced("blob is referenced by a manifest in this repository")
            await session.execute(
                delete(RepositoryBlob).where(
                    RepositoryBlob.repository_id == repo_id, RepositoryBlob.blob_id == blob_id
                )
            )

        await run_write(self.db, work)
        self.cache.invalidate()

    async def mount(
        self,
        repository: RepositoryName,
        digest: Digest,
        source: RepositoryName | None,
        may_read: Callable[[str], bool],
    ) -> BlobInfo | None:
        """Link a blob the caller can already read into `repository`.

        With a `source`, only that repository is considered; without one, any repository
        holding the blob that the caller may read (automatic mount). None: not mountable,
        and the client must upload the bytes."""
        if source is not None and not may_read(source.value):
            return None
        async with self.db.read() as session:
            query = (
                select(Blob.id, Blob.size, Repository.name)
                .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
                .join(Repository, Repository.id == RepositoryBlob.repository_id)
                .where(Blob.digest == str(digest))
            )
            if source is not None:
                query = query.where(Repository.name == source.value)
            rows = (await session.execute(query.limit(100))).all()
        candidate = next((r for r in rows if may_read(r[2])), None)
        if candidate is None:
            return None
        blob_id, size = candidate[0], candidate[1]

        async def work(session: DbSession) -> None:
            await link_blob(session, repository, blob_id)

        await run_write(self.db, work)
        return BlobInfo(digest, size)
