"""Manifests and tags: push, pull, delete.

A manifest is accepted only if every blob it names is linked into the repository (with
the size its descriptor claims) and, for an index, every child manifest is in the
repository too. Its bytes are stored exactly as pushed.

Every change is audited in its own transaction (a committed push always has its "push"
entry, and "create_tag"/"move_tag" when it points a tag); pulls are queued, never
written on the request path (services/audit.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.domain.digests import Digest, digest_of, parse_digest
from cargohold.domain.errors import (
    Denied,
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
from cargohold.services import immutability, labels
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.cache import MetadataCache
from cargohold.services.records import ManifestRecord
from cargohold.services.repositories import RepositoryCreator
from cargohold.storage.driver import ObjectReader

TOUCH_MANIFEST = sql("UPDATE manifest SET created_at = :now WHERE id = :id")
MANIFEST_DIGEST = sql("SELECT digest FROM manifest WHERE id = :id")
LIVE_TAG_DIGEST = sql(
    f"""SELECT t.id, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id
       WHERE t.repository_id = :repository_id AND t.name = :name AND {queries.LIVE}"""
)
LIVE_TAGS_OF_MANIFEST = sql(
    f"SELECT t.name FROM tag t WHERE t.manifest_id = :id AND {queries.LIVE} ORDER BY t.name"
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
        storage: ObjectReader | None = None,
    ) -> None:
        self.db = db
        self.creator = creator
        self.cache = cache
        self.audit = audit
        self.max_manifest_bytes = max_manifest_bytes
        self.storage = storage  # to read config blobs for their labels (services/labels.py)

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
        expires = as_datetime(row[4]) if reference.tag is not None else None
        self.cache.remember_manifest(snapshot, repository.value, record, reference.tag, expires)
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
        # Read before the transaction: storage I/O must not hold the write lock. None: the
        # manifest is stored already, and so are its labels.
        content_labels = await labels.for_push(
            self.db, self.storage, repository.value, record.digest, parsed
        )

        async def work(session: DbSession) -> tuple[int, bool]:
            repo_id = known_repo_id or await self.creator.ensure(
                session, principal, repository, origin
            )
            manifest_id, created = await self._store(session, repo_id, record, parsed)
            if created:
                if content_labels is None:
                    raise labels.ConfigUnread()  # deleted since: roll back, read, again
                await labels.record(session, manifest_id, content_labels)
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
                if created:
                    await queries.touch_repository(session, repo_id)
                return repo_id, False
            point = await _point_tag(
                session,
                repo_id,
                reference.tag,
                manifest_id,
                expires_after=labels.expires_after(content_labels)
                if content_labels is not None
                else await labels.stored_expires_after(session, manifest_id),
            )
            if point.expired is not None:
                await self._audit(
                    session, "tag_expired", ANONYMOUS, Origin(), repository, point.expired
                )
            if point.changed:
                kind = "create_tag" if point.old is None else "move_tag"
                tag_details: dict[str, Any] = {
                    "tag": reference.tag,
                    "old": point.old,
                    "new": record.digest,
                }
                if point.expires_at is not None:
                    tag_details["expires_at"] = point.expires_at.isoformat()
                await self._audit(session, kind, principal, origin, repository, tag_details)
            if created or point.changed:
                await queries.touch_repository(session, repo_id)
            return repo_id, point.old is not None or point.found_expired

        try:
            repo_id, moved = await run_write(self.db, work)
        except labels.ConfigUnread:
            content_labels = await labels.for_push(
                self.db, self.storage, repository.value, record.digest, parsed, known_new=True
            )
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
            # Pushed again: it starts a new grace period, so that the collector does not
            # take an old untagged manifest that a client is about to tag or reference
            # from an index (on PostgreSQL the update also waits for a collector holding
            # it, which then sees the new time).
            await session.run(TOUCH_MANIFEST, id=existing, now=utcnow())
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
                live = await session.one(
                    LIVE_TAG_DIGEST, repository_id=repo_id, name=reference.tag, now=utcnow()
                )
                if live is None:
                    raise ManifestUnknown(detail={"tag": reference.tag})
                rule = await immutability.rule_for(session, repo_id, reference.tag)
                if rule is not None:
                    raise Denied(immutability.refusal(reference.tag, rule, "deleted"))
                await queries.end_tag(session, live[0])
                await queries.touch_repository(session, repo_id)
                details = {"tag": reference.tag, "digest": live[1]}
                await self._audit(session, "delete_tag", principal, origin, repository, details)
                return
            digest = str(reference.digest)
            manifest_id = await queries.manifest_id(session, repo_id, digest)
            if manifest_id is None:
                raise ManifestUnknown(detail={"digest": digest})
            if await queries.manifest_is_child(session, manifest_id):
                raise Referenced("manifest is referenced by an index; delete the index first")
            rows = await session.all(LIVE_TAGS_OF_MANIFEST, id=manifest_id, now=utcnow())
            tags = [row[0] for row in rows]
            if tags:
                rules = await immutability.rules(session, repo_id)
                for tag in tags:
                    rule = immutability.matching(rules, tag)
                    if rule is not None:
                        action = f"deleted with its manifest {digest}"
                        raise Denied(immutability.refusal(tag, rule, action))
            await queries.delete_manifest(session, manifest_id)
            await queries.touch_repository(session, repo_id)
            # Each tag that went with the manifest gets its own entry, as a tag delete would.
            for tag in tags:
                details = {"tag": tag, "digest": digest, "with_manifest": True}
                await self._audit(session, "delete_tag", principal, origin, repository, details)
            details = {"digest": digest, "tags": tags}
            await self._audit(session, "delete_manifest", principal, origin, repository, details)

        await run_write(self.db, work)
        self.cache.invalidate()


@dataclass(frozen=True, slots=True)
class TagPointed:
    changed: bool  # the tag points somewhere new (or anew)
    old: str | None = None  # the digest it was live on before, if any
    expired: dict[str, Any] | None = None  # audit details of an expired row this ended
    expires_at: datetime | None = None  # of the new row (a quay.expires-after label)
    found_expired: bool = False  # the open row had expired (ended here or by another)


async def _point_tag(
    session: DbSession,
    repo_id: int,
    tag: str,
    manifest_id: int,
    *,
    expires_after: timedelta | None = None,
) -> TagPointed:
    """Point `tag` at the manifest. An open row whose expiry passed is ended first (at
    its expiry, as the expiry job would); moving an immutable tag is refused (DENIED);
    `expires_after` (from a label) applies to a tag that is not immutable."""
    current = await queries.live_tag(session, repo_id, tag)
    old: str | None = None
    expired: dict[str, Any] | None = None
    found_expired = False
    now = utcnow()
    if current is not None:
        current_expiry = as_datetime(current[2])
        if current_expiry is not None and current_expiry <= now:
            found_expired = True
            # Audited only if this ended it: the expiry job of another process may have
            # ended it first (PostgreSQL: this waited on the row, which then no longer
            # matched); an extension committed meanwhile makes the insert below conflict,
            # and run_write's retry then sees a live row.
            if await queries.end_expired_tag(session, current[0]):
                expired = {
                    "tag": tag,
                    "digest": await session.value(MANIFEST_DIGEST, id=current[1]),
                    "expires_at": current_expiry.isoformat(),
                }
        else:
            if current[1] == manifest_id:
                return TagPointed(False)
            rule = await immutability.rule_for(session, repo_id, tag)
            if rule is not None:
                raise Denied(immutability.refusal(tag, rule, "moved"))
            old = await session.value(MANIFEST_DIGEST, id=current[1])
            await queries.end_tag(session, current[0])
    expires_at = None
    if expires_after is not None and await immutability.rule_for(session, repo_id, tag) is None:
        expires_at = now + expires_after
    await queries.insert_tag(session, repo_id, tag, manifest_id, expires_at=expires_at)
    return TagPointed(True, old, expired, expires_at, found_expired)


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
