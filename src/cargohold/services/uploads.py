"""Blob upload sessions: start, append (streamed or chunked), finish, cancel, purge.

The database row holds the authoritative size of an upload. Bytes past it (a PATCH
cut off by a disconnect or a crash) are discarded when the upload is next written,
so a client that asks for the status and resumes from there always gets a blob
that is exactly what it sent. A blob becomes visible under its digest only after its
bytes are complete, verified and durably moved into place.

An upload belongs to its repository and to the principal who started it (`owner`:
"user:<id>", "robot:<id>" or "anonymous"): anyone else, superusers included, gets
BlobUploadUnknown for it, exactly as for an id that does not exist."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.domain.digests import Digest, Hasher, new_hasher
from cargohold.domain.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    QuotaExceeded,
    RangeInvalid,
    SizeInvalid,
)
from cargohold.domain.names import RepositoryName
from cargohold.services.audit import Origin
from cargohold.services.blobs import BlobInfo, link_blob
from cargohold.services.gc import BlobClaim, claim_blob, claim_holds
from cargohold.services.repositories import RepositoryCreator
from cargohold.services.usage import Quotas
from cargohold.storage import layout
from cargohold.storage.driver import ObjectNotFound, StorageDriver, UploadWriter
from cargohold.storage.locations import StorageLocations

log = logging.getLogger(__name__)

# How long a finished upload answers its finishing PUT again (a retried request).
FINISHED_KEPT = timedelta(minutes=15)

WRITE_BUFFER = 1 << 20
MAX_CACHED_HASHERS = 10_000
ANONYMOUS_OWNER = "anonymous"
# Publishing again after a collector took the blob in between (only when publishing took
# longer than the grace period).
PUBLISH_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class UploadState:
    id: str
    repository: str
    size: int


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """A parsed `Content-Range: <start>-<end>` of a chunked PATCH (end inclusive)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class UploadService:
    def __init__(
        self,
        db: Database,
        storage: StorageDriver,
        creator: RepositoryCreator,
        *,
        max_blob_bytes: int,
        quotas: Quotas | None = None,
        deletion_lease_seconds: float = 60.0,
        exclusive: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
        locations: StorageLocations | None = None,
    ) -> None:
        self.db = db
        # `storage` holds the uploads in progress and a new blob's first copy (the
        # primary location); with several locations, publishing also copies the blob to
        # the other `write_to` locations (ARCHITECTURE.md, "Storage locations").
        self.locations = locations or StorageLocations.single(storage)
        # Keeps other processes out of an upload's bytes: the storage driver's lock, or
        # a Redis lock across replicas (shared/locks.py).
        self.exclusive = exclusive or storage.exclusive
        # How long a collector's deletion of a blob may take before a publish of the same
        # bytes takes the blob back (settings gc.deletion_lease_seconds).
        self.deletion_lease_seconds = deletion_lease_seconds
        self.creator = creator
        self.storage = storage
        self.max_blob_bytes = max_blob_bytes
        self.quotas = quotas or Quotas(db, creator.audit)
        # The running sha256 of each upload this process wrote last, keyed by id, with the
        # size it covers. Another process (or a restart) rebuilds it from the bytes.
        self._hashers: dict[str, tuple[int, Hasher]] = {}
        # Per-upload locks, dropped when nobody holds or waits for them: a client sending
        # requests for made-up upload ids must not grow this table.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- lookups -----------------------------------------------------------------------

    async def _size(self, session: DbSession, repository: str, upload_id: str, owner: str) -> int:
        """The recorded size of an upload of `repository` started by `owner`; raises
        BlobUploadUnknown (the same for another principal's upload as for no upload)."""
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise BlobUploadUnknown(detail={"upload": upload_id[:64]}) from None
        size = await queries.upload_size(session, upload_id, repository, owner)
        if size is None:
            raise BlobUploadUnknown(detail={"upload": upload_id})
        return size

    async def _already_finished(
        self, repository: RepositoryName, upload_id: str, digest: Digest, owner: str
    ) -> BlobInfo | None:
        """The blob of an upload that this very PUT finished before: a load balancer sends
        a PUT (an idempotent method) again to another replica when the first one died
        before answering, perhaps after it had published the blob. Answering the same 201
        again keeps the client's push going; another digest is an unknown upload."""
        try:
            uuid.UUID(upload_id)
        except ValueError:
            return None  # status() refuses it
        async with self.db.read() as session:
            finished = await queries.finished_upload(session, upload_id, repository.value, owner)
            if finished is None:
                return None
            row = None
            if finished == str(digest):
                row = await queries.linked_blob(session, repository.value, finished)
        if row is None:
            raise BlobUploadUnknown(detail={"upload": upload_id})
        return BlobInfo(digest, int(row[1]))

    async def status(
        self, repository: RepositoryName, upload_id: str, *, owner: str = ANONYMOUS_OWNER
    ) -> UploadState:
        async with self.db.read() as session:
            size = await self._size(session, repository.value, upload_id, owner)
        return UploadState(upload_id, repository.value, size)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(
        self,
        repository: RepositoryName,
        *,
        owner: str = ANONYMOUS_OWNER,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> UploadState:
        """A new upload of `repository` that only `owner` may continue. The first upload
        into a repository creates it (with its default permissions)."""
        upload_id = str(uuid.uuid4())

        async def work(session: DbSession) -> None:
            repo_id = await self.creator.ensure(session, principal, repository, origin)
            await queries.insert_upload(session, upload_id, repo_id, owner)

        await run_write(self.db, work)
        return UploadState(upload_id, repository.value, 0)

    async def append(
        self,
        repository: RepositoryName,
        upload_id: str,
        body: AsyncIterator[bytes],
        *,
        chunk: ChunkRange | None = None,
        content_length: int | None = None,
        record: bool = True,
        owner: str = ANONYMOUS_OWNER,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> UploadState:
        """Write more bytes. `record=False` (the last bytes of a finishing PUT) leaves the
        recorded size alone: publishing deletes the session anyway, and until then the
        unrecorded bytes count for nothing, as after a cut-off PATCH. A namespace at its
        hard limit gets no more bytes (QuotaExceeded; the upload stays as it was)."""
        # One writer at a time per upload in this process; the conditional UPDATE below
        # catches a second writer in another process.
        await self.status(repository, upload_id, owner=owner)  # unknown: never a lock
        async with self._upload_lock(upload_id):
            return await self._append_locked(
                repository,
                upload_id,
                body,
                chunk=chunk,
                content_length=content_length,
                record=record,
                owner=owner,
                principal=principal,
                origin=origin,
            )

    async def _append_locked(
        self,
        repository: RepositoryName,
        upload_id: str,
        body: AsyncIterator[bytes],
        *,
        chunk: ChunkRange | None,
        content_length: int | None,
        record: bool,
        owner: str,
        principal: Principal,
        origin: Origin,
        digest: Digest | None = None,
    ) -> UploadState:
        async with self.db.read() as session:
            start = await self._size(session, repository.value, upload_id, owner)
        if chunk is not None:
            if chunk.start != start:
                raise RangeInvalid(
                    f"chunk starts at {chunk.start}, upload is at {start}", size=start
                )
            if content_length is not None and content_length != chunk.length:
                # In order, but the body is not the range it claims: a size error (400),
                # not a position error (416) that would send the client to resume in a loop.
                raise SizeInvalid("Content-Length does not match the Content-Range")
        expected = chunk.length if chunk is not None else content_length
        if expected is not None and start + expected > self.max_blob_bytes:
            raise SizeInvalid(f"blob larger than {self.max_blob_bytes} bytes")
        if expected != 0:
            # No bytes for a namespace at its hard limit (finishing, with the digest and
            # the final size when known: exactly what the link would refuse).
            final = start + expected if not record and expected is not None else None
            await self.quotas.admit(
                repository.namespace,
                digest=None if digest is None else str(digest),
                size=final,
                repository=repository.value,
                principal=principal,
                origin=origin,
            )

        key = layout.upload_key(upload_id)
        if start:
            await self._exact_size(repository, upload_id, key, start, owner)
        hasher = await self._hasher(upload_id, key, start)
        self._hashers.pop(upload_id, None)  # invalid until this append is recorded
        writer = await self.storage.writer(key, offset=start)
        written = 0
        try:
            pieces: list[bytes] = []
            buffered = 0
            async for data in body:
                written += len(data)
                if start + written > self.max_blob_bytes:
                    raise SizeInvalid(f"blob larger than {self.max_blob_bytes} bytes")
                if expected is not None and written > expected:
                    raise SizeInvalid("body longer than declared")
                pieces.append(data)
                buffered += len(data)
                if buffered >= WRITE_BUFFER:  # one copy per MiB, not one per piece
                    await self._write(writer, hasher, b"".join(pieces))
                    pieces.clear()
                    buffered = 0
            if pieces:
                await self._write(writer, hasher, b"".join(pieces))
        finally:
            await writer.close()
        if expected is not None and written != expected:
            if chunk is not None:
                raise RangeInvalid("chunk shorter than its Content-Range", size=start)
            raise SizeInvalid("body shorter than Content-Length")

        new_size = start + written

        async def work(session: DbSession) -> bool:
            return await queries.grow_upload(session, upload_id, start, new_size)

        if record and not await run_write(self.db, work):
            raise BlobUploadInvalid("upload was changed concurrently; ask for its status")
        self._hashers[upload_id] = (new_size, hasher)
        if len(self._hashers) > MAX_CACHED_HASHERS:  # uploads finished by other workers
            del self._hashers[next(iter(self._hashers))]
        return UploadState(upload_id, repository.value, new_size)

    @staticmethod
    async def _write(writer: UploadWriter, hasher: Hasher, data: bytes) -> None:
        # Hashing and writing both release the GIL: run them side by side.
        await asyncio.gather(asyncio.to_thread(hasher.update, data), writer.write(data))

    async def _hasher(
        self, upload_id: str, key: str, size: int, algorithm: str = "sha256"
    ) -> Hasher:
        cached = self._hashers.get(upload_id)
        if algorithm == "sha256" and cached is not None and cached[0] == size:
            return cached[1].copy()
        hasher = new_hasher(algorithm)
        if size:
            try:
                async for data in self.storage.read(key, 0, size):
                    await asyncio.to_thread(hasher.update, data)
            except ObjectNotFound:
                raise BlobUploadUnknown(detail={"upload": upload_id}) from None
        return hasher

    async def finish(
        self,
        repository: RepositoryName,
        upload_id: str,
        digest: Digest,
        body: AsyncIterator[bytes],
        *,
        chunk: ChunkRange | None = None,
        content_length: int | None = None,
        owner: str = ANONYMOUS_OWNER,
        principal: Principal = ANONYMOUS,
        origin: Origin = Origin(),
    ) -> BlobInfo:
        """Append the final bytes (if any), verify the digest, and publish the blob, all
        under the upload's lock, so no other request can touch the bytes in between.
        `principal` is who a quota warning or refusal is recorded for."""
        try:
            await self.status(repository, upload_id, owner=owner)  # unknown: never a lock
        except BlobUploadUnknown:
            done = await self._already_finished(repository, upload_id, digest, owner)
            if done is not None:
                return done
            raise
        async with self._upload_lock(upload_id):
            try:
                if chunk is not None or content_length:
                    state = await self._append_locked(
                        repository,
                        upload_id,
                        body,
                        chunk=chunk,
                        content_length=content_length,
                        record=False,
                        owner=owner,
                        principal=principal,
                        origin=origin,
                        digest=digest,
                    )
                else:
                    async for data in body:  # a body without Content-Length (chunked)
                        if data:
                            state = await self._append_locked(
                                repository,
                                upload_id,
                                _prepend(data, body),
                                chunk=None,
                                content_length=None,
                                record=False,
                                owner=owner,
                                principal=principal,
                                origin=origin,
                                digest=digest,
                            )
                            break
                    else:
                        state = await self.status(repository, upload_id, owner=owner)
            except BlobUploadUnknown:
                # The same PUT may have waited for the lock while its first sending (timed
                # out at a balancer, not dead) finished the upload.
                done = await self._already_finished(repository, upload_id, digest, owner)
                if done is not None:
                    return done
                raise
            except QuotaExceeded:
                await self._spend(upload_id)  # as a refusal at publishing: the upload is spent
                raise
            key = layout.upload_key(upload_id)
            if state.size:
                await self._exact_size(repository, upload_id, key, state.size, owner)
            hasher = await self._hasher(upload_id, key, state.size, digest.algorithm)
            if hasher.hexdigest() != digest.hex:
                await self._cancel_locked(repository, upload_id, owner)
                raise DigestInvalid(detail={"digest": str(digest)})
            return await self._publish(
                repository, upload_id, key, digest, state.size, principal, origin
            )

    async def _exact_size(
        self, repository: RepositoryName, upload_id: str, key: str, size: int, owner: str
    ) -> None:
        """Make the upload object hold exactly the recorded `size` bytes before hashing."""
        try:
            stored = (await self.storage.stat(key)).size
        except ObjectNotFound:
            stored = 0
        if stored < size:
            # Recorded bytes are gone: a crash after the object was published under its
            # digest but before that was recorded. They cannot be verified any more.
            await self._cancel_locked(repository, upload_id, owner)
            raise BlobUploadInvalid("the upload's bytes are lost; start the upload again")
        if stored > size:
            # Bytes past the recorded size (a PATCH cut off by a disconnect) must not be
            # published with the blob: cut the object back to exactly that size.
            await (await self.storage.writer(key, offset=size)).close()

    async def _publish(
        self,
        repository: RepositoryName,
        upload_id: str,
        key: str,
        digest: Digest,
        size: int,
        principal: Principal,
        origin: Origin,
    ) -> BlobInfo:
        async def refused(session: DbSession) -> None:
            # Over quota: no link. The bytes are in place already; their blob row lets
            # the collector find and delete them (it never lists storage), and the upload
            # is spent.
            await queries.insert_blob(session, str(digest), size)
            await queries.delete_upload(session, upload_id)

        try:
            # Refused before the bytes move to the blob's key (and before the claim makes a
            # blob row): nothing is left for the collector. The link checks again below.
            await self.quotas.admit(
                repository.namespace,
                digest=str(digest),
                size=size,
                repository=repository.value,
                principal=principal,
                origin=origin,
            )
        except QuotaExceeded:
            await self._spend(upload_id)
            raise
        blob_key = layout.blob_key(digest)
        for attempt in range(PUBLISH_ATTEMPTS):
            # Claim the digest before touching storage (ARCHITECTURE.md, garbage
            # collection): a collector deleting these bytes finishes first, or sees the
            # fresh touch and leaves them.
            locations = self.locations
            claim = await claim_blob(
                self.db,
                str(digest),
                size,
                lease_seconds=self.deletion_lease_seconds,
                locations=locations.write_to if locations.several else (),
                default_location=locations.default,
            )
            try:
                existing = await self.storage.stat(blob_key)
            except ObjectNotFound:
                existing = None
            # Deduplicated (the same bytes are stored already): the upload's own bytes stay
            # until the link commits, in case a collector took those away meanwhile.
            if existing is None or existing.size != size:
                if size == 0:
                    # No byte was ever written, so there may be no upload object to move.
                    await self.storage.put_bytes(blob_key, b"")
                else:
                    try:
                        await self.storage.commit(key, blob_key)
                    except ObjectNotFound:
                        if attempt:  # ours went to the blob's key, and a collector took it
                            raise BlobUploadInvalid(
                                "the blob was garbage-collected while it was published; "
                                "upload it again"
                            ) from None
                        raise BlobUploadUnknown(detail={"upload": upload_id}) from None
            if locations.secondaries:
                await asyncio.gather(
                    *(
                        self._replicate(name, upload_id, blob_key, size)
                        for name in locations.secondaries
                    )
                )

            async def work(session: DbSession, claim: BlobClaim = claim) -> bool:
                if not await claim_holds(session, claim):
                    return False  # a collector took the blob: publish again
                await link_blob(
                    session,
                    repository,
                    claim.id,
                    size,
                    self.quotas,
                    principal=principal,
                    origin=origin,
                )
                await queries.finish_upload(session, upload_id, str(digest))
                return True

            try:
                linked = await run_write(self.db, work)
            except QuotaExceeded:
                await run_write(self.db, refused)
                self._forget(upload_id)
                await self.storage.delete(key)
                raise
            if linked:
                break
        else:
            raise BlobUploadInvalid("the blob is being garbage-collected; upload it again")
        await self.storage.delete(key)  # what is left of the upload's bytes, if anything
        self._forget(upload_id)
        return BlobInfo(digest, size)

    async def _replicate(self, location: str, upload_id: str, blob_key: str, size: int) -> None:
        """Copy a published blob from the primary location into `location` (whose
        placement row the claim recorded already), unless it holds the bytes: through the
        upload's key there, then committed (renamed, or copied server-side) into place."""
        target = self.locations.drivers[location]
        try:
            if (await target.stat(blob_key)).size == size:
                return
        except ObjectNotFound:
            pass
        if size == 0:
            await target.put_bytes(blob_key, b"")
            return
        staging = layout.upload_key(upload_id)
        writer = await target.writer(staging, offset=0)
        try:
            async for data in self.storage.read(blob_key):
                await writer.write(data)
        finally:
            await writer.close()
        await target.commit(staging, blob_key)

    @asynccontextmanager
    async def _upload_lock(self, upload_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(upload_id, (asyncio.Lock(), 0))
        self._locks[upload_id] = (lock, users + 1)
        try:
            # The asyncio lock orders this process's requests; the storage lock keeps other
            # worker processes out of the same upload's bytes.
            async with lock, self.exclusive(layout.upload_key(upload_id)):
                yield
        finally:
            lock, users = self._locks[upload_id]
            if users == 1:
                del self._locks[upload_id]
            else:
                self._locks[upload_id] = (lock, users - 1)

    def _forget(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)

    async def _spend(self, upload_id: str) -> None:
        """End an upload refused for the quota: its row and its bytes go."""

        async def work(session: DbSession) -> None:
            await queries.delete_upload(session, upload_id)

        await run_write(self.db, work)
        self._forget(upload_id)
        await self.storage.delete(layout.upload_key(upload_id))

    async def cancel(
        self, repository: RepositoryName, upload_id: str, *, owner: str = ANONYMOUS_OWNER
    ) -> None:
        await self.status(repository, upload_id, owner=owner)  # unknown: never a lock
        async with self._upload_lock(upload_id):
            await self._cancel_locked(repository, upload_id, owner)

    async def _cancel_locked(self, repository: RepositoryName, upload_id: str, owner: str) -> None:
        async def work(session: DbSession) -> None:
            await self._size(session, repository.value, upload_id, owner)
            await queries.delete_upload(session, upload_id)

        await run_write(self.db, work)
        self._forget(upload_id)
        await self.storage.delete(layout.upload_key(upload_id))

    async def purge_stale(self, max_age: timedelta) -> int:
        """Remove uploads untouched for `max_age`, and upload bytes no row refers to."""
        cutoff = utcnow() - max_age

        async def work(session: DbSession) -> list[str]:
            ids = await queries.stale_upload_ids(session, cutoff)
            for upload_id in ids:
                await queries.delete_upload(session, upload_id)
            return ids

        stale = await run_write(self.db, work)

        async def finished(session: DbSession) -> int:
            return await queries.purge_finished_uploads(session, utcnow() - FINISHED_KEPT)

        await run_write(self.db, finished)
        for upload_id in stale:
            self._forget(upload_id)
            await self.storage.delete(layout.upload_key(upload_id))
        async with self.db.read() as session:
            live = await queries.upload_ids(session)
        for upload_id in [u for u in self._hashers if u not in live]:
            self._forget(upload_id)
        orphans = 0
        # Every location: a publish copies through the upload's key in the others.
        for driver in self.locations.drivers.values():
            async for info in driver.walk(layout.UPLOADS):
                name = info.key.rsplit("/", 1)[-1]
                if name not in live and info.modified_at < cutoff:
                    await driver.delete(info.key)
                    orphans += 1
        if stale or orphans:
            log.info("purged %d stale uploads and %d orphaned upload files", len(stale), orphans)
        return len(stale) + orphans


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for data in rest:
        yield data
