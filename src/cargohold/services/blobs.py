"""Blobs as repositories see them: existence, deletion and cross-repository mounts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db import queries
from cargohold.db.session import Database, DbSession, run_write
from cargohold.domain.digests import Digest
from cargohold.domain.errors import BlobUnknown, Referenced
from cargohold.domain.names import RepositoryName
from cargohold.services.audit import Origin
from cargohold.services.cache import MetadataCache
from cargohold.services.repositories import RepositoryCreator
from cargohold.storage import layout


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int

    @property
    def key(self) -> str:
        return layout.blob_key(self.digest)


async def linked_blob(
    session: DbSession, repository: str, digest: Digest, *, for_update: bool = False
) -> tuple[int, int]:
    """(blob id, size) of a blob linked into `repository`; raises BlobUnknown."""
    row = await queries.linked_blob(session, repository, str(digest), for_update=for_update)
    if row is None:
        raise BlobUnknown(detail={"digest": str(digest)})
    return row[0], row[1]


async def link_blob(session: DbSession, repository: RepositoryName, blob_id: int) -> int:
    """Link a blob into a repository (created on first use); the repository id."""
    repo_id = await queries.ensure_repository(session, repository.value, repository.namespace)
    await queries.link_blob(session, repo_id, blob_id)
    return repo_id


class BlobService:
    def __init__(self, db: Database, cache: MetadataCache, creator: RepositoryCreator) -> None:
        self.db = db
        self.cache = cache
        self.creator = creator

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
            blob_id, _ = await linked_blob(session, repository.value, digest, for_update=True)
            repo_id = await queries.repository_id(session, repository.value)
            assert repo_id is not None
            if await queries.blob_used_in_repository(session, repo_id, blob_id):
                raise Referenced("blob is referenced by a manifest in this repository")
            await queries.unlink_blob(session, repo_id, blob_id)

        await run_write(self.db, work)
        self.cache.invalidate()

    async def mount(
        self,
        repository: RepositoryName,
        digest: Digest,
        source: RepositoryName | None,
        may_read: Callable[[str], Awaitable[bool]],
        *,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> BlobInfo | None:
        """Link a blob the caller can already read into `repository`.

        With a `source`, only that repository is considered; without one, any repository
        holding the blob that the caller may read (automatic mount). None: not mountable,
        and the client must upload the bytes."""
        if source is not None:
            if not await may_read(source.value):
                return None
            async with self.db.read() as session:
                row = await queries.linked_blob(session, source.value, str(digest))
            candidate = None if row is None else (row[0], row[1])
        else:
            async with self.db.read() as session:
                rows = await queries.mount_candidates(session, str(digest))
            candidate = None
            for blob_id, size, holder in rows:
                if await may_read(holder):
                    candidate = (blob_id, size)
                    break
        if candidate is None:
            return None
        blob_id, size = candidate

        async def work(session: DbSession) -> None:
            repo_id = await self.creator.ensure(session, principal, repository, origin)
            await queries.link_blob(session, repo_id, blob_id)

        await run_write(self.db, work)
        return BlobInfo(digest, size)
