"""The S3 driver: objects in a bucket of any S3-compatible service (AWS S3, Ceph RGW, MinIO,
SeaweedFS), through boto3.

botocore is blocking, so every call runs on this driver's own thread pool, as large as its
connection pool (`max_pool_connections`): a request never waits in a thread for a connection,
and the event loop never waits on the network. (aiobotocore would avoid the threads, but it
pins botocore to narrow ranges and brings aiohttp; a thread hop per 1 MiB is cheap next to
the network.) Throttling (SlowDown, 503) is retried by botocore with back-off (`retry_mode`,
`max_attempts`).

**Uploads in progress.** S3 objects are immutable and the parts of an unfinished multipart
upload cannot be read back, yet the upload service needs to append, to cut bytes past the
recorded size, and to read an upload back to rebuild its digest when another replica took
the previous PATCH. So an upload is stored as *pieces*: each piece is an ordinary object
named `<key>~<offset as 16 hex digits>` (`~` never occurs in a key, see `check_key`), and
the object's bytes are the pieces from offset 0 without gaps. Everything is in the bucket;
no replica keeps state in memory between requests.

- A writer buffers what it is given and stores a piece each `multipart_part_bytes`, while
  the next piece fills (at most one PUT in flight, so about two parts of memory per upload,
  never the whole layer, nothing on local disk); `close` stores what is left.
- `writer(key, offset)` deletes the pieces at or past `offset` and rewrites the one piece
  that straddles it (at most one part read back), so a cut-off PATCH leaves nothing behind.
- `read` and `stat` stream across the pieces (one ranged GET per piece).
- `commit` assembles the blob server-side: one piece is a CopyObject; several are a
  multipart upload whose parts are UploadPartCopy of the pieces. Pieces below S3's 5 MiB
  part minimum (small PATCH chunks) are merged in memory into parts of at least that size
  (`plan_parts`), which also keeps every blob within 10,000 parts. Then the pieces go.
  Small pieces are not merged when written: rewriting a growing piece on every small
  PATCH would upload each byte many times over, where merging them once costs one read.

An object written whole (`put_bytes`) is one plain object under its key; when both a plain
object and pieces exist (a crash between two steps), the plain object is the content.

**Locks.** `exclusive(key)` holds a lease object `<prefix>~locks/<key>` created with a
conditional PUT (`If-None-Match: *`) and renewed every third of `lease_seconds` with
`If-Match` on its ETag. A waiter that sees the same ETag for `lease_seconds` of its own clock
(the holder died) takes the lease over with `If-Match` on that ETag, so exactly one waiter
wins and no clocks need to agree. The first use checks that the service really refuses a
second `If-None-Match: *` PUT and fails loudly if it does not (`upload_locks: local` then
keeps the lock within the process: one replica only).

**Stale work.** `abort_stale(older_than)` aborts multipart uploads of a commit that died
half-way and deletes leases left by dead processes. Pieces of abandoned uploads are what
`walk("uploads")` lists as the upload's key, so the upload service's purge removes them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cargohold.storage.driver import ObjectInfo, ObjectNotFound, StorageError, check_key

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

    from cargohold.settings import S3StorageSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 1 << 20  # reads handed to the caller
MIN_PART = 5 << 20  # S3's smallest part but the last
MAX_COPY = 5 << 30  # the largest CopyObject / UploadPartCopy source
MAX_PARTS = 10_000
PIECE = "~"  # <key>~<offset>: never part of a key (check_key)
LOCKS = "~locks"
COPY_CONCURRENCY = 8  # UploadPartCopy calls at once during a commit
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
_PRECONDITION = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_DENIED = frozenset({"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken"})


class S3Error(StorageError):
    """S3 refused a request or could not be reached; the message says which and why."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def precondition_failed(self) -> bool:
        return self.status in (409, 412) or self.code in _PRECONDITION


@dataclass(frozen=True, slots=True)
class Piece:
    """One stored piece of an object in progress: bytes [offset, offset + size)."""

    offset: int
    size: int
    name: str  # the S3 key
    modified_at: datetime

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class _Listed:
    name: str
    size: int
    modified_at: datetime
    etag: str


def plan_parts(pieces: Sequence[Piece]) -> list[list[Piece]]:
    """Group contiguous pieces into multipart parts. A part of one piece is copied
    server-side; a part of several is read and uploaded. Every part but the last holds at
    least `target` bytes (5 MiB, more for blobs that would otherwise need more than 10,000
    parts), so the plan is always a valid multipart upload."""
    total = sum(p.size for p in pieces)
    target = max(MIN_PART, -(-total // (MAX_PARTS - 1)))
    parts: list[list[Piece]] = []
    pending: list[Piece] = []
    pending_size = 0
    for piece in pieces:
        if piece.size > MAX_COPY:
            raise S3Error(f"piece {piece.name} is larger than a part may be")
        if not pending and piece.size >= target:
            parts.append([piece])
            continue
        pending.append(piece)
        pending_size += piece.size
        if pending_size >= target:
            parts.append(pending)
            pending, pending_size = [], 0
    if pending:
        parts.append(pending)
    return parts


def contiguous(pieces: Sequence[Piece]) -> list[Piece]:
    """The pieces (sorted by offset) that make up the object: from 0, without a gap."""
    run: list[Piece] = []
    at = 0
    for piece in pieces:
        if piece.size == 0:
            continue
        if piece.offset != at:
            break
        run.append(piece)
        at = piece.end
    return run


def _piece_offset(suffix: str) -> int | None:
    if len(suffix) != 16:
        return None
    try:
        return int(suffix, 16)
    except ValueError:
        return None


class S3Writer:
    """Appends to an object in progress by storing pieces (see the module docstring)."""

    def __init__(self, driver: S3Driver, key: str, name: str, offset: int) -> None:
        self._driver = driver
        self._key = key
        self._name = name
        self._size = offset
        self._next = offset  # where the buffered bytes start
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._inflight: asyncio.Task[str] | None = None

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._size += len(data)
        if self._buffered >= self._driver.part_bytes:
            await self._flush()

    async def _flush(self) -> None:
        await self._wait()  # one piece in flight at a time: memory stays at about two parts
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        offset, self._next = self._next, self._next + len(data)
        self._inflight = asyncio.ensure_future(
            self._driver._put(self._driver._piece_name(self._name, offset), data, self._key)
        )

    async def _wait(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await task

    async def close(self) -> None:
        try:
            if self._chunks:
                await self._flush()
        finally:
            await self._wait()


class S3Driver:
    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str = "",
        region: str = "us-east-1",
        prefix: str = "",
        access_key: str = "",
        secret_key: str = "",
        addressing: Literal["auto", "path", "virtual"] = "auto",
        redirect: bool = False,
        presign_seconds: int = 1200,
        part_bytes: int = 16 << 20,
        max_pool_connections: int = 32,
        retry_mode: Literal["standard", "adaptive"] = "standard",
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        upload_locks: Literal["lease", "local"] = "lease",
        lease_seconds: float = 30.0,
    ) -> None:
        if part_bytes < MIN_PART:
            raise ValueError("multipart part size below 5 MiB")
        self.bucket = bucket
        self.root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.redirect = redirect
        self.presign_seconds = presign_seconds
        self.part_bytes = part_bytes
        self.upload_locks = upload_locks
        self.lease_seconds = lease_seconds
        self._where = f"{endpoint_url or 'AWS S3'} bucket {bucket}"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing},
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
            # Checksums only where S3 demands them (DeleteObjects): S3-compatible services
            # differ in the newer trailing checksums, and every blob's digest is verified.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="cargohold",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region,
        )
        self._s3: S3Client = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        self._pool = ThreadPoolExecutor(max_workers=max_pool_connections, thread_name_prefix="s3")
        self._conditional_checked = False
        self._conditional_delete = True

    @classmethod
    def from_settings(cls, s: S3StorageSettings) -> S3Driver:
        return cls(
            bucket=s.bucket,
            endpoint_url=s.endpoint_url,
            region=s.region,
            prefix=s.prefix,
            access_key=s.access_key,
            secret_key=s.secret_key.get_secret_value(),
            addressing=s.addressing,
            redirect=s.redirect,
            presign_seconds=s.presign_seconds,
            part_bytes=s.multipart_part_bytes,
            max_pool_connections=s.max_pool_connections,
            retry_mode=s.retry_mode,
            max_attempts=s.max_attempts,
            connect_timeout=s.connect_timeout_seconds,
            read_timeout=s.read_timeout_seconds,
            upload_locks=s.upload_locks,
            lease_seconds=s.lease_seconds,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._s3.close()

    # -- plumbing ----------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.root + check_key(key)

    @staticmethod
    def _piece_name(name: str, offset: int) -> str:
        return f"{name}{PIECE}{offset:016x}"

    async def _run(self, call: Callable[[], T], what: str, key: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, call)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, what, key) from exc

    def _error(self, exc: Exception, what: str, key: str) -> StorageError:
        if not isinstance(exc, ClientError):
            return S3Error(f"S3 {what} {key}: cannot reach {self._where}: {exc}")
        error: dict[str, Any] = dict(exc.response.get("Error") or {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(error.get("Message", "")) or code or str(status)
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code in ("", "404")):
            return ObjectNotFound(key)
        if code in _DENIED or status == 403:
            return S3Error(
                f"S3 refused {what} {key} at {self._where}: {code or status} {message} "
                "(check storage.s3.access_key, secret_key and the bucket's policy)",
                code=code,
                status=status,
            )
        if code == "NoSuchBucket":
            return S3Error(f"{self._where} does not exist", code=code, status=status)
        return S3Error(
            f"S3 {what} {key} at {self._where} failed: {code} {message}",
            code=code,
            status=status,
        )

    async def _list(self, prefix: str) -> AsyncIterator[_Listed]:
        token = ""
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._run(
                functools.partial(self._s3.list_objects_v2, **kwargs), "list", prefix
            )
            for item in page.get("Contents", []):
                yield _Listed(
                    item["Key"],
                    item["Size"],
                    item["LastModified"].astimezone(UTC),
                    item.get("ETag", ""),
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def _head(self, name: str, key: str) -> _Listed | None:
        try:
            head = await self._run(
                lambda: self._s3.head_object(Bucket=self.bucket, Key=name), "stat", key
            )
        except ObjectNotFound:
            return None
        return _Listed(
            name, head["ContentLength"], head["LastModified"].astimezone(UTC), head["ETag"]
        )

    async def _pieces(self, name: str) -> list[Piece]:
        found = []
        async for obj in self._list(name + PIECE):
            offset = _piece_offset(obj.name[len(name) + 1 :])
            if offset is not None:
                found.append(Piece(offset, obj.size, obj.name, obj.modified_at))
        found.sort(key=lambda p: p.offset)
        return found

    async def _put(self, name: str, data: bytes, key: str) -> str:
        answer = await self._run(
            lambda: self._s3.put_object(Bucket=self.bucket, Key=name, Body=data), "put", key
        )
        return answer["ETag"]

    async def _get(self, name: str, start: int, end: int | None, key: str) -> StreamingBody | None:
        """The body of bytes [start, end) of one object, or None when that range is empty."""
        if end is not None and end <= start:
            return None
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await self._run(functools.partial(self._s3.get_object, **kwargs), "get", key)
        except S3Error as exc:
            if exc.status == 416:  # starts at or past the end: nothing to read
                return None
            raise
        body: StreamingBody = answer["Body"]
        return body

    async def _drain(self, body: StreamingBody | None, key: str) -> AsyncIterator[bytes]:
        if body is None:
            return
        try:
            while True:
                data = await self._run(functools.partial(body.read, CHUNK), "read", key)
                if not data:
                    return
                yield data
        finally:
            body.close()

    async def _delete_names(self, names: Sequence[str], key: str) -> None:
        for i in range(0, len(names), DELETE_BATCH):
            call = functools.partial(
                self._s3.delete_objects,
                Bucket=self.bucket,
                Delete={
                    "Objects": [{"Key": n} for n in names[i : i + DELETE_BATCH]],
                    "Quiet": True,
                },
            )
            answer = await self._run(call, "delete", key)
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise S3Error(
                    f"S3 delete {first.get('Key')} at {self._where} failed: "
                    f"{first.get('Code')} {first.get('Message')}",
                    code=str(first.get("Code", "")),
                )

    # -- the StorageDriver protocol ----------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return None

    async def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        plain = await self._head(name, key)
        if plain is not None:
            return ObjectInfo(key, plain.size, plain.modified_at)
        run = contiguous(await self._pieces(name))
        if not run:
            raise ObjectNotFound(key)
        return ObjectInfo(key, run[-1].end, max(p.modified_at for p in run))

    async def get_bytes(self, key: str) -> bytes:
        return b"".join([data async for data in self.read(key)])

    async def put_bytes(self, key: str, data: bytes) -> None:
        name = self._name(key)
        await self._put(name, data, key)
        stale = await self._pieces(name)  # the plain object wins; the pieces are old content
        if stale:
            await self._delete_names([p.name for p in stale], key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        name = self._name(key)
        end = None if length is None else offset + length
        if length == 0:
            await self.stat(key)  # missing is still an error
            return
        try:
            body = await self._get(name, offset, end, key)
        except ObjectNotFound:
            pass
        else:
            async for data in self._drain(body, key):
                yield data
            return
        run = contiguous(await self._pieces(name))
        if not run:
            raise ObjectNotFound(key)
        for piece in run:
            lo = max(offset, piece.offset)
            hi = piece.end if end is None else min(end, piece.end)
            if lo >= hi:
                continue
            body = await self._get(piece.name, lo - piece.offset, hi - piece.offset, key)
            async for data in self._drain(body, key):
                yield data

    async def writer(self, key: str, *, offset: int = 0) -> S3Writer:
        name = self._name(key)
        pieces = await self._pieces(name)
        plain = await self._head(name, key)
        if plain is not None:
            # Written whole once (put_bytes): keep its first `offset` bytes as piece 0.
            if offset:
                keep = b"".join(
                    [d async for d in self._drain(await self._get(name, 0, offset, key), key)]
                )
                if len(keep) < offset:
                    raise S3Error(f"{key} holds {len(keep)} bytes, cannot write at {offset}")
                await self._put(self._piece_name(name, 0), keep, key)
            stale = [p.name for p in pieces if not (offset and p.offset == 0)]
            await self._delete_names([*stale, name], key)
            return S3Writer(self, key, name, offset)
        run = contiguous(pieces)
        held = run[-1].end if run else 0
        if held < offset:
            raise S3Error(f"{key} holds {held} bytes, cannot write at {offset}")
        for piece in run:
            if piece.offset < offset < piece.end:  # cut the piece that straddles `offset`
                body = await self._get(piece.name, 0, offset - piece.offset, key)
                keep = b"".join([d async for d in self._drain(body, key)])
                await self._put(piece.name, keep, key)
        beyond = [p.name for p in pieces if p.offset >= offset]
        if beyond:
            await self._delete_names(beyond, key)
        return S3Writer(self, key, name, offset)

    async def commit(self, src: str, dst: str) -> None:
        source, target = self._name(src), self._name(dst)
        plain = await self._head(source, src)
        if plain is not None:
            if plain.size > MAX_COPY:
                raise S3Error(f"{src} is too large for one copy")
            await self._copy(source, target, dst)
        else:
            run = contiguous(await self._pieces(source))
            if not run:
                raise ObjectNotFound(src)
            if len(run) == 1:
                await self._copy(run[0].name, target, dst)
            else:
                await self._assemble(run, target, dst)
        await self.delete(src)

    async def _copy(self, source: str, target: str, key: str) -> None:
        await self._run(
            lambda: self._s3.copy_object(
                Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}
            ),
            "copy",
            key,
        )

    async def _assemble(self, run: Sequence[Piece], target: str, key: str) -> None:
        """One multipart upload from the pieces: UploadPartCopy where a piece is a part by
        itself, merged in memory (one part at a time) where pieces are too small."""
        created = await self._run(
            lambda: self._s3.create_multipart_upload(Bucket=self.bucket, Key=target),
            "create multipart",
            key,
        )
        upload_id = created["UploadId"]
        plan = plan_parts(run)
        etags = [""] * len(plan)
        copying = asyncio.Semaphore(COPY_CONCURRENCY)
        merging = asyncio.Lock()

        async def part(number: int, pieces: list[Piece]) -> None:
            if len(pieces) == 1:
                async with copying:
                    answer = await self._run(
                        lambda: self._s3.upload_part_copy(
                            Bucket=self.bucket,
                            Key=target,
                            UploadId=upload_id,
                            PartNumber=number,
                            CopySource={"Bucket": self.bucket, "Key": pieces[0].name},
                        ),
                        "copy part",
                        key,
                    )
                etags[number - 1] = answer["CopyPartResult"]["ETag"]
                return
            async with merging:
                buffer = io.BytesIO()  # grows in place: one copy of the part in memory
                for piece in pieces:
                    async for data in self._drain(await self._get(piece.name, 0, None, key), key):
                        buffer.write(data)
                buffer.seek(0)
                uploaded = await self._run(
                    lambda: self._s3.upload_part(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=buffer,
                    ),
                    "upload part",
                    key,
                )
                buffer.close()
            etags[number - 1] = uploaded["ETag"]

        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for number, pieces in enumerate(plan, 1):
                        group.create_task(part(number, pieces))
            except BaseExceptionGroup as failed:
                raise _first_error(failed) from None
            await self._run(
                lambda: self._s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]
                    },
                ),
                "complete multipart",
                key,
            )
        except BaseException:
            with contextlib.suppress(StorageError):
                await self._run(
                    lambda: self._s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=target, UploadId=upload_id
                    ),
                    "abort multipart",
                    key,
                )
            raise

    async def delete(self, key: str) -> None:
        name = self._name(key)
        names = [name]
        async for obj in self._list(name):
            rest = obj.name[len(name) :]
            if rest and rest[0] in (PIECE, "/"):
                names.append(obj.name)
        await self._delete_names(names, key)

    async def walk(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        base = self._name(prefix) + "/"
        group: tuple[str, int, datetime] | None = None  # an object in pieces, being summed
        async for obj in self._list(base):
            rel = obj.name[len(self.root) :]
            key, sep, suffix = rel.partition(PIECE)
            if sep and _piece_offset(suffix) is None:
                continue  # not ours
            if group is not None and (not sep or group[0] != key):
                yield ObjectInfo(*group)
                group = None
            if not sep:
                yield ObjectInfo(key, obj.size, obj.modified_at)
            elif group is None:
                group = (key, obj.size, obj.modified_at)
            else:
                group = (key, group[1] + obj.size, max(group[2], obj.modified_at))
        if group is not None:
            yield ObjectInfo(*group)

    # -- redirects ---------------------------------------------------------------------

    async def presigned_url(self, key: str, expires_seconds: int) -> str:
        """A URL that GETs the object without credentials until it expires (SigV4 query)."""
        name = self._name(key)
        return await self._run(
            lambda: self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": name},
                ExpiresIn=expires_seconds,
            ),
            "presign",
            key,
        )

    async def redirect_url(self, key: str) -> str | None:
        if not self.redirect:
            return None
        return await self.presigned_url(key, self.presign_seconds)

    # -- locks -------------------------------------------------------------------------

    @asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        check_key(key)
        if self.upload_locks == "local":
            yield  # the caller's own lock orders this process's tasks
            return
        await self._check_conditional_writes()
        lease = _Lease(self, f"{self.root}{LOCKS}/{key}", key)
        await lease.acquire()
        try:
            yield
        finally:
            await lease.release()

    async def _put_if(
        self, name: str, body: bytes, key: str, *, if_match: str | None = None
    ) -> str:
        """A conditional PUT: create only (`If-None-Match: *`) or replace only `if_match`."""
        if if_match is None:
            call = functools.partial(
                self._s3.put_object, Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*"
            )
        else:
            call = functools.partial(
                self._s3.put_object, Bucket=self.bucket, Key=name, Body=body, IfMatch=if_match
            )
        answer = await self._run(call, "lock", key)
        return answer["ETag"]

    async def _check_conditional_writes(self) -> None:
        if self._conditional_checked:
            return
        probe = f"{self.root}{LOCKS}/probe-{uuid.uuid4().hex}"
        try:
            await self._put_if(probe, b"1", "lock probe")
            try:
                await self._put_if(probe, b"2", "lock probe")
            except S3Error as exc:
                if not exc.precondition_failed:
                    raise
            else:
                raise S3Error(
                    f"{self._where} ignores If-None-Match on PUT, so it cannot hold upload "
                    "locks across replicas: set storage.s3.upload_locks to local (one replica)"
                )
        finally:
            with contextlib.suppress(StorageError):
                await self._delete_names([probe], "lock probe")
        self._conditional_checked = True

    # -- background work ---------------------------------------------------------------

    async def abort_stale(self, older_than: timedelta) -> int:
        """Abort multipart uploads started more than `older_than` ago (commits that died
        half-way) and delete leases not renewed for that long; returns how many."""
        cutoff = datetime.now(UTC) - older_than
        done = 0
        markers: dict[str, Any] = {}
        while True:
            page = await self._run(
                functools.partial(
                    self._s3.list_multipart_uploads, Bucket=self.bucket, Prefix=self.root, **markers
                ),
                "list multipart",
                self.root or "/",
            )
            for upload in page.get("Uploads", []):
                if upload["Initiated"].astimezone(UTC) < cutoff:
                    call = functools.partial(
                        self._s3.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    try:
                        await self._run(call, "abort multipart", upload["Key"])
                    except (ObjectNotFound, S3Error) as exc:
                        # Finished or aborted meanwhile (another replica runs this too).
                        if isinstance(exc, S3Error) and exc.code != "NoSuchUpload":
                            raise
                        continue
                    done += 1
            if not page.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }
        stale = [o.name async for o in self._list(f"{self.root}{LOCKS}/") if o.modified_at < cutoff]
        if stale:
            await self._delete_names(stale, "leases")
        done += len(stale)
        if done:
            log.info("aborted %d stale multipart uploads and leases in %s", done, self._where)
        return done


class _Lease:
    """One holder of `exclusive(key)` (see the module docstring)."""

    def __init__(self, driver: S3Driver, name: str, key: str) -> None:
        self.driver = driver
        self.name = name
        self.key = key
        self.owner = uuid.uuid4().hex
        self.renewals = 0
        self.etag = ""
        self._renewer: asyncio.Task[None] | None = None

    def _body(self) -> bytes:
        # A new body each renewal, so the ETag changes and waiters see the holder is alive.
        self.renewals += 1
        return json.dumps(
            {"owner": self.owner, "renewal": self.renewals, "at": time.time()}
        ).encode()

    async def acquire(self) -> None:
        driver = self.driver
        delay = 0.02
        seen, seen_at = "", 0.0
        while True:
            try:
                self.etag = await driver._put_if(self.name, self._body(), self.key)
                break
            except S3Error as exc:
                if not exc.precondition_failed:
                    raise
            held = await driver._head(self.name, self.key)
            if held is None:
                continue  # released in between: try again at once
            now = time.monotonic()
            if held.etag != seen:
                seen, seen_at = held.etag, now
            elif now - seen_at >= driver.lease_seconds:
                try:  # not renewed for a whole lease: the holder is gone; one waiter wins
                    self.etag = await driver._put_if(
                        self.name, self._body(), self.key, if_match=seen
                    )
                    log.warning("took over the expired lock of %s", self.key)
                    break
                except (S3Error, ObjectNotFound) as exc:
                    if isinstance(exc, S3Error) and not exc.precondition_failed:
                        raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        self._renewer = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.driver.lease_seconds / 3)
            try:
                self.etag = await self.driver._put_if(
                    self.name, self._body(), self.key, if_match=self.etag
                )
            except ObjectNotFound:
                log.error("the lock of %s was removed while held", self.key)
                return
            except S3Error as exc:
                if exc.precondition_failed:
                    log.error("the lock of %s was taken over while held", self.key)
                    return
                log.warning("could not renew the lock of %s: %s", self.key, exc)

    async def release(self) -> None:
        if self._renewer is not None:
            renewer, self._renewer = self._renewer, None
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        driver = self.driver
        conditional = driver._conditional_delete
        try:
            if conditional:  # only if still ours: a lease taken over is the new holder's
                call = functools.partial(
                    driver._s3.delete_object, Bucket=driver.bucket, Key=self.name, IfMatch=self.etag
                )
            else:
                call = functools.partial(
                    driver._s3.delete_object, Bucket=driver.bucket, Key=self.name
                )
            await driver._run(call, "unlock", self.key)
        except ObjectNotFound:
            pass
        except S3Error as exc:
            if exc.precondition_failed:
                return
            if conditional and exc.status in (400, 501):
                # A service without conditional deletes: delete as the holder, from now on.
                log.warning("%s refuses conditional deletes (%s)", driver._where, exc.code)
                driver._conditional_delete = False
                await self.release()
                return
            log.warning("could not release the lock of %s: %s", self.key, exc)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first StorageError in a task group's failure, else the first failure."""
    leaves: list[BaseException] = []

    def collect(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                collect(e)
            else:
                leaves.append(e)

    collect(group)
    for e in leaves:
        if isinstance(e, StorageError):
            return e
    return leaves[0]
