"""Manifests and tags: push, pull, delete.

A manifest is accepted only if every blob it names is linked into the repository (with
the size its descriptor claims) and, for an index, every child manifest is in the
repository too. Its bytes are stored exactly as pushed."""

from __future__ import annotations

from dataclasses import dataclass

from cargohold.db import queries
from cargohold.db.session import Database, DbSession, run_write
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
from cargohold.services.cache import MetadataCache
from cargohold.services.records import ManifestRecord


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
    def __init__(self, db: Database, cache: MetadataCache, *, max_manifest_bytes: int) -> None:
        self.db = db
        self.cache = cache
        self.max_manifest_bytes = max_manifest_bytes

    # -- pull ----------------------------------------------------------------------------

    async def get(self, repository: RepositoryName, reference: Reference) -> ManifestRecord:
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
            repo_id = known_repo_id or await queries.ensure_repository(
                session, repository.value, repository.namespace
            )
            manifest_id = await self._store(session, repo_id, record, parsed)
            moved = reference.tag is not None and await _point_tag(
                session, repo_id, reference.tag, manifest_id
            )
            return repo_id, moved

        repo_id, moved = await run_write(self.db, work)
        if moved:
            self.cache.invalidate()  # a tag moved away from what caches may hold
        self.cache.remember_repository(repository.value, repo_id)
        return record

    async def _store(
        self, session: DbSession, repo_id: int, record: ManifestRecord, parsed: ParsedManifest
    ) -> int:
        existing = await queries.manifest_id(session, repo_id, record.digest)
        if existing is not None:
            return existing
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
        return manifest_id

    # -- delete --------------------------------------------------------------------------

    async def delete(self, repository: RepositoryName, reference: Reference) -> None:
        """Delete a tag, or a manifest with every tag pointing at it."""

        async def work(session: DbSession) -> None:
            repo_id = await queries.repository_id(session, repository.value)
            if repo_id is None:
                raise NameUnknown(detail={"name": repository.value})
            if reference.tag is not None:
                if not await queries.end_tag_by_name(session, repo_id, reference.tag):
                    raise ManifestUnknown(detail={"tag": reference.tag})
                return
            manifest_id = await queries.manifest_id(session, repo_id, str(reference.digest))
            if manifest_id is None:
                raise ManifestUnknown(detail={"digest": str(reference.digest)})
            if await queries.manifest_is_child(session, manifest_id):
                raise Referenced("manifest is referenced by an index; delete the index first")
            await queries.delete_manifest(session, manifest_id)

        await run_write(self.db, work)
        self.cache.invalidate()


async def _point_tag(session: DbSession, repo_id: int, tag: str, manifest_id: int) -> bool:
    """Point `tag` at the manifest; True when the tag moved away from another manifest."""
    current = await queries.live_tag(session, repo_id, tag)
    if current is not None:
        if current[1] == manifest_id:
            return False
        await queries.end_tag(session, current[0])
    await queries.insert_tag(session, repo_id, tag, manifest_id)
    return current is not None


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
