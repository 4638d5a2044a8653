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
from cargohold.services.gc import blob_linkable, refresh_link
from cargohold.services.repositories import RepositoryCreator
from cargohold.services.usage import Quotas
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


async def link_blob(
    session: DbSession,
    repository: RepositoryName,
    blob_id: int,
    size: int,
    quotas: Quotas,
    *,
    principal: Principal = ANONYMOUS,
    origin: Origin = Origin(),
) -> int:
    """Link a blob into a repository (created on first use), counted against the
    namespace's quota (QuotaExceeded: roll back); the repository id."""
    repo_id = await queries.ensure_repository(session, repository.value, repository.namespace)

    async def link() -> None:
        await quotas.link(
            session,
            repo_id,
            blob_id,
            size,
            repository=repository.value,
            principal=principal,
            origin=origin,
        )

    await link()
    await refresh_link(session, repo_id, blob_id, link)  # grace counts from now
    return repo_id


class BlobService:
    def __init__(
        self,
        db: Database,
        cache: MetadataCache,
        creator: RepositoryCreator,
        quotas: Quotas | None = None,
    ) -> None:
        self.db = db
        self.cache = cache
        self.creator = creator
        self.quotas = quotas or Quotas(db, creator.audit)

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
            blob_id, size = await linked_blob(session, repository.value, digest, for_update=True)
            repo_id = await queries.repository_id(session, repository.value)
            assert repo_id is not None
            if await queries.blob_used_in_repository(session, repo_id, blob_id):
                raise Referenced("blob is referenced by a manifest in this repository")
            await self.quotas.unlink(session, repo_id, blob_id, size)

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

        async def work(session: DbSession) -> bool:
            # A blob the collector is deleting cannot be mounted (the client uploads it
            # again); the check holds the row until this link commits.
            if not await blob_linkable(session, blob_id):
                return False
            repo_id = await self.creator.ensure(session, principal, repository, origin)

            async def link() -> None:
                await self.quotas.link(
                    session,
                    repo_id,
                    blob_id,
                    size,
                    repository=repository.value,
                    principal=principal,
                    origin=origin,
                )

            await link()
            await refresh_link(session, repo_id, blob_id, link)
            return True

        if not await run_write(self.db, work):
            return None
        return BlobInfo(digest, size)
