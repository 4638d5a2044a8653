"""Manifests and tags: push, pull, delete.

A manifest is accepted only if every blob it names is linked into the repository (with
the size its descriptor claims) and, for an index, every child manifest is in the
repository too. Its bytes are stored exactly as pushed.

Every change is audited in its own transaction (a committed push always has its "push"
entry, and "create_tag"/"move_tag" when it points a tag); pulls are queued, never
written on the request path (services/audit.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db import queries
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.domain.digests import Digest, digest_of, parse_digest
from cargohold.domain.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
    Referenced,
)
from cargohold.domain.manifests import Descriptor, ParsedManifest, parse_manifest
from cargohold.domain.names import RepositoryName, is_tag, parse_tag
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.cache import MetadataCache
from cargohold.services.records import ManifestRecord
from cargohold.services.repositories import RepositoryCreator

MANIFEST_DIGEST = sql("SELECT digest FROM manifest WHERE id = :id")
LIVE_TAG_DIGEST = sql(
    """SELECT t.id, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id
       WHERE t.repository_id = :repository_id AND t.name = :name AND t.ended_at IS NULL"""
)
LIVE_TAGS_OF_MANIFEST = sql(
    "SELECT name FROM tag WHERE manifest_id = :id AND ended_at IS NULL ORDER BY name"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference from a URL: exactly one of tag and digest is set."""

    tag: str | None = None
    digest: Digest | None = None


def parse_reference(text: str) -> Reference:
    if ":" in text:
        return Reference(digest=parse_digest(text))
    if is_tag(text):
        return Reference(tag=text)
    parse_tag(text)  # raises TagInvalid with the grammar
    raise AssertionError("unreachable")


class ManifestService:
    def __init__(
        self,
        db: Database,
        cache: MetadataCache,
        audit: AuditLog,
        creator: RepositoryCreator,
        *,
        max_manifest_bytes: int,
    ) -> None:
        self.db = db
        self.creator = creator
        self.cache = cache
        self.audit = audit
        self.max_manifest_bytes = max_manifest_bytes

    # -- pull ----------------------------------------------------------------------------

    async def get(
        self,
        repository: RepositoryName,
        reference: Reference,
        *,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
        log_pull: bool = False,
    ) -> ManifestRecord:
        """The manifest; with `log_pull` (a GET, not a HEAD) a "pull" entry is queued."""
        record = await self._get(repository, reference)
        if log_pull and self.audit.log_pulls:
            details: dict[str, Any] = {"digest": record.digest, "media_type": record.media_type}
            if reference.tag is not None:
                details["tag"] = reference.tag
            self.audit.record(
                AuditEntry("pull", principal, origin, repository=repository.value, details=details)
            )
        return record

    async def _get(self, repository: RepositoryName, reference: Reference) -> ManifestRecord:
        if reference.tag is not None:
            cached = self.cache.tag(repository.value, reference.tag)
        else:
            cached = self.cache.manifest(repository.value, str(reference.digest))
        if cached is not None:
            return cached
        snapshot = self.cache.snapshot()
        async with self.db.read() as session:
            if reference.tag is not None:
                row = await queries.manifest_by_tag(session, repository.value, reference.tag)
            else:
                row = await queries.manifest_by_digest(
                    session, repository.value, str(reference.digest)
                )
            if row is None:
                if await queries.repository_id(session, repository.value) is None:
                    raise NameUnknown(detail={"name": repository.value})
                raise ManifestUnknown(detail={"reference": reference.tag or str(reference.digest)})
        record = ManifestRecord(row[0], row[1], bytes(row[2]), row[3])
        self.cache.remember_manifest(snapshot, repository.value, record, reference.tag)
        return record

    # -- push ----------------------------------------------------------------------------

    async def put(
        self,
        repository: RepositoryName,
        reference: Reference,
        payload: bytes,
        content_type: str | None,
        *,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> ManifestRecord:
        if len(payload) > self.max_manifest_bytes:
            raise ManifestTooLarge(f"manifest larger than {self.max_manifest_bytes} bytes")
        parsed = parse_manifest(payload, content_type)
        if reference.digest is not None:
            digest = digest_of(payload, reference.digest.algorithm)
            if digest != reference.digest:
                raise DigestInvalid("manifest digest does not match the reference")
        else:
            digest = digest_of(payload)
        record = ManifestRecord(
            str(digest),
            parsed.media_type,
            payload,
            str(parsed.subject.digest) if parsed.subject else None,
        )

        known_repo_id = self.cache.repository_id(repository.value)

        async def work(session: DbSession) -> tuple[int, bool]:
            repo_id = known_repo_id or await self.creator.ensure(
                session, principal, repository, origin
            )
            manifest_id, created = await self._store(session, repo_id, record, parsed)
            details: dict[str, Any] = {
                "digest": record.digest,
                "media_type": record.media_type,
                "size": record.size,
                "new": created,
            }
            if reference.tag is not None:
                details["tag"] = reference.tag
            await self._audit(session, "push", principal, origin, repository, details)
            if reference.tag is None:
                return repo_id, False
            changed, old = await _point_tag(session, repo_id, reference.tag, manifest_id)
            if changed:
                kind = "create_tag" if old is None else "move_tag"
                tag_details = {"tag": reference.tag, "old": old, "new": record.digest}
                await self._audit(session, kind, principal, origin, repository, tag_details)
            return repo_id, old is not None

        repo_id, moved = await run_write(self.db, work)
        if moved:
            self.cache.invalidate()  # a tag moved away from what caches may hold
        self.cache.remember_repository(repository.value, repo_id)
        return record

    async def _audit(
        self,
        session: DbSession,
        kind: str,
        principal: Principal,
        origin: Origin,
        repository: RepositoryName,
        details: dict[str, Any],
    ) -> None:
        entry = AuditEntry(kind, principal, origin, repository=repository.value, details=details)
        await self.audit.write(session, entry)

    async def _store(
        self, session: DbSession, repo_id: int, record: ManifestRecord, parsed: ParsedManifest
    ) -> tuple[int, bool]:
        """(the manifest's id, whether this push stored it)."""
        existing = await queries.manifest_id(session, repo_id, record.digest)
        if existing is not None:
            return existing, False
        blob_ids = await _check_blobs(session, repo_id, parsed)
        child_ids = await _check_children(session, repo_id, parsed.children)
        manifest_id = await queries.insert_manifest(
            session,
            repository_id=repo_id,
            digest=record.digest,
            media_type=record.media_type,
            artifact_type=parsed.effective_artifact_type,
            subject_digest=record.subject,
            size=record.size,
            payload=record.payload,
        )
        await queries.add_manifest_references(session, manifest_id, blob_ids, child_ids)
        return manifest_id, True

    # -- delete --------------------------------------------------------------------------

    async def delete(
        self,
        repository: RepositoryName,
        reference: Reference,
        *,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> None:
        """Delete a tag, or a manifest with every tag pointing at it."""

        async def work(session: DbSession) -> None:
            repo_id = await queries.repository_id(session, repository.value)
            if repo_id is None:
                raise NameUnknown(detail={"name": repository.value})
            if reference.tag is not None:
                live = await session.one(LIVE_TAG_DIGEST, repository_id=repo_id, name=reference.tag)
                if live is None:
                    raise ManifestUnknown(detail={"tag": reference.tag})
                await queries.end_tag(session, live[0])
                details = {"tag": reference.tag, "digest": live[1]}
                await self._audit(session, "delete_tag", principal, origin, repository, details)
                return
            digest = str(reference.digest)
            manifest_id = await queries.manifest_id(session, repo_id, digest)
            if manifest_id is None:
                raise ManifestUnknown(detail={"digest": digest})
            if await queries.manifest_is_child(session, manifest_id):
                raise Referenced("manifest is referenced by an index; delete the index first")
            tags = [row[0] for row in await session.all(LIVE_TAGS_OF_MANIFEST, id=manifest_id)]
            await queries.delete_manifest(session, manifest_id)
            # Each tag that went with the manifest gets its own entry, as a tag delete would.
            for tag in tags:
                details = {"tag": tag, "digest": digest, "with_manifest": True}
                await self._audit(session, "delete_tag", principal, origin, repository, details)
            details = {"digest": digest, "tags": tags}
            await self._audit(session, "delete_manifest", principal, origin, repository, details)

        await run_write(self.db, work)
        self.cache.invalidate()


async def _point_tag(
    session: DbSession, repo_id: int, tag: str, manifest_id: int
) -> tuple[bool, str | None]:
    """Point `tag` at the manifest: (whether the tag changed, the digest it pointed at
    before; None for a new tag)."""
    current = await queries.live_tag(session, repo_id, tag)
    old: str | None = None
    if current is not None:
        if current[1] == manifest_id:
            return False, None
        old = await session.value(MANIFEST_DIGEST, id=current[1])
        await queries.end_tag(session, current[0])
    await queries.insert_tag(session, repo_id, tag, manifest_id)
    return True, old


async def _check_blobs(session: DbSession, repo_id: int, parsed: ParsedManifest) -> list[int]:
    wanted = {str(d) for d in parsed.required_blobs()}
    if not wanted:
        return []
    found = await queries.blobs_in_repository(session, repo_id, sorted(wanted))
    descriptors: list[Descriptor] = [*([parsed.config] if parsed.config else []), *parsed.layers]
    for desc in descriptors:
        hit = found.get(str(desc.digest))
        if hit is None:
            if str(desc.digest) in wanted:
                raise ManifestBlobUnknown(detail={"digest": str(desc.digest)})
            continue  # a foreign layer, stored elsewhere by design
        if hit[1] != desc.size:
            raise ManifestInvalid(
                f"descriptor size {desc.size} of {desc.digest} differs from the blob's {hit[1]}"
            )
    return [blob_id for blob_id, _ in found.values()]


async def _check_children(
    session: DbSession, repo_id: int, children: tuple[Descriptor, ...]
) -> list[int]:
    if not children:
        return []
    found = await queries.manifests_in_repository(
        session, repo_id, sorted({str(c.digest) for c in children})
    )
    for desc in children:
        hit = found.get(str(desc.digest))
        if hit is None:
            raise ManifestBlobUnknown(
                "index references a manifest unknown to this repository",
                detail={"digest": str(desc.digest)},
            )
        if hit[1] != desc.size:
            raise ManifestInvalid(
                f"descriptor size {desc.size} of {desc.digest} differs from the manifest's {hit[1]}"
            )
    return [manifest_id for manifest_id, _ in found.values()]
