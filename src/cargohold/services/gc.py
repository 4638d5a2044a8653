"""Continuous garbage collection, from the database's references (ARCHITECTURE.md,
"Garbage collection").

One pass (`Collector.run_once`) walks the tables in order: repositories deleted by users
(purged in dependency order), manifests nothing keeps, blob links no manifest of their
repository references, blobs nothing links or references, and namespaces deleted while
their repositories were still being purged. Each step works in bounded transactions of
`gc.batch_size` rows, takes the row lock (PostgreSQL) and re-checks the rule in a new
statement before deleting, so a push that commits a reference at the same moment either
wins (the re-check sees it) or finds the object gone and is refused cleanly. Blob bytes
go in three steps under a lease (`deleting_since`) so that an upload publishing the same
digest never loses its bytes; the push side of that protocol is `claim_blob`,
`claim_holds` and `blob_linkable` below. Storage is never listed.

The periodic pass is a periodic task (jobs/periodic.py), so one runs at a time across all
processes and replicas; an flock on <data_dir>/run/gc.lock also keeps a `cargohold gc
--once` from overlapping a pass on the same host. Two collectors at once anyway (a manual
pass on another host) are safe by the row locks, only wasteful."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, Row, run_write
from cargohold.db.sql import Sql, sql
from cargohold.db.usage import QuotaPolicy
from cargohold.db.values import as_bool, as_datetime
from cargohold.domain.digests import parse_digest
from cargohold.domain.errors import BlobUploadInvalid
from cargohold.services import placements
from cargohold.services.cache import MetadataCache
from cargohold.settings import Settings
from cargohold.storage import layout
from cargohold.storage.driver import StorageDriver
from cargohold.storage.locations import StorageLocations

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rows one scan statement looks at: bounds the time any single GC statement takes (SQLite
# statements run on the event loop that also serves requests).
SCAN_ROWS = 1000
# Transactions of `batch_size` deletions per phase and pass; candidates beyond that are
# counted as the backlog and handled by the next pass.
BATCHES_PER_PHASE = 50
# Attempts of a collector transaction that loses a race (a deadlock, a foreign key).
ATTEMPTS = 5
# Storage deletes in flight at once.
DELETE_CONCURRENCY = 16
# gc_run rows older than this are dropped.
RUN_RETENTION = timedelta(days=30)
# A deleted repository is renamed to `<namespace>/.deleted-<id>`, a deleted namespace to
# `.deleted-<id>`: names no client can use (a component cannot start with '.').
DELETED_MARK = ".deleted-"


def _ids_in(template: str, column: str, *, postgres_suffix: str = "") -> Sql:
    """`template` with `{ids}` replaced by `column IN <list parameter :ids>`."""
    return sql(
        template.replace("{ids}", f"{column} IN (SELECT value FROM json_each(:ids))"),
        postgres=template.replace("{ids}", f"{column} = ANY(:ids)") + postgres_suffix,
    )


def _ids(session: DbSession, values: Sequence[int]) -> Any:
    return list(values) if session.dialect == "postgresql" else json.dumps(list(values))


def _for_update(statement: str) -> Sql:
    """A SELECT that locks its rows on PostgreSQL; SQLite's writers run one at a time."""
    return sql(statement, postgres=statement + " FOR UPDATE")


# -- manifests ---------------------------------------------------------------------------

# A tag row keeps its manifest while live (not ended, expired or not: the expiry job ends
# it) or while it ended inside its namespace's time-machine window.
_RECENT_SQLITE = (
    "julianday(t.ended_at) > julianday(:now) - COALESCE(n.time_machine_seconds, :window) / 86400.0"
)
_RECENT_POSTGRES = (
    "t.ended_at > :now - make_interval(secs => COALESCE(n.time_machine_seconds, :window))"
)
# What keeps a manifest (of a live repository): its youth (grace), a tag, an index that
# lists it, a subject it refers to that is still there.
_KEPT = """(m.created_at >= :cutoff
   OR EXISTS (SELECT 1 FROM tag t WHERE t.manifest_id = m.id
              AND (t.ended_at IS NULL OR {recent}))
   OR EXISTS (SELECT 1 FROM manifest_child c WHERE c.child_id = m.id)
   OR (m.subject_digest IS NOT NULL AND EXISTS (SELECT 1 FROM manifest s
       WHERE s.repository_id = m.repository_id AND s.digest = m.subject_digest)))"""


def _manifest_sql(template: str) -> Sql:
    return sql(
        template.replace("{kept}", _KEPT.replace("{recent}", _RECENT_SQLITE)),
        postgres=template.replace("{kept}", _KEPT.replace("{recent}", _RECENT_POSTGRES)),
    )


# SCAN_ROWS manifests after :after, each with whether it is collectable now.
SCAN_MANIFESTS = _manifest_sql(
    """SELECT m.id, CASE WHEN r.deleted_at IS NULL AND NOT {kept} THEN 1 ELSE 0 END
       FROM (SELECT id, repository_id, created_at, subject_digest FROM manifest
             WHERE id > :after ORDER BY id LIMIT :scan) m
       JOIN repository r ON r.id = m.repository_id
       JOIN namespace n ON n.id = r.namespace_id
       ORDER BY m.id"""
)
MANIFEST_COLLECTABLE = _manifest_sql(
    """SELECT m.id FROM manifest m
       JOIN repository r ON r.id = m.repository_id
       JOIN namespace n ON n.id = r.namespace_id
       WHERE m.id = :id AND r.deleted_at IS NULL AND NOT {kept}"""
)
LOCK_MANIFEST = _for_update("SELECT id FROM manifest WHERE id = :id")
DELETE_TAGS_OF_MANIFEST = sql("DELETE FROM tag WHERE manifest_id = :id")
DELETE_MANIFEST = sql("DELETE FROM manifest WHERE id = :id")

# -- blob links --------------------------------------------------------------------------

_LINK_UNUSED = """NOT EXISTS (SELECT 1 FROM manifest m
       JOIN manifest_blob mb ON mb.manifest_id = m.id
       WHERE m.repository_id = l.repository_id AND mb.blob_id = l.blob_id)"""
SCAN_LINKS = sql(
    f"""SELECT l.repository_id, l.blob_id,
         CASE WHEN r.deleted_at IS NULL AND l.created_at < :cutoff AND {_LINK_UNUSED}
         THEN 1 ELSE 0 END
       FROM (SELECT repository_id, blob_id, created_at FROM repository_blob
             WHERE (repository_id, blob_id) > (:after_repository, :after_blob)
             ORDER BY repository_id, blob_id LIMIT :scan) l
       JOIN repository r ON r.id = l.repository_id
       ORDER BY l.repository_id, l.blob_id"""
)
LOCK_LINK = _for_update(
    "SELECT 1 FROM repository_blob WHERE repository_id = :repository_id AND blob_id = :blob_id"
)
LINK_COLLECTABLE = sql(
    f"""SELECT 1 FROM repository_blob l JOIN repository r ON r.id = l.repository_id
       WHERE l.repository_id = :repository_id AND l.blob_id = :blob_id
         AND r.deleted_at IS NULL AND l.created_at < :cutoff AND {_LINK_UNUSED}"""
)
TOUCH_LINK = sql(
    "UPDATE repository_blob SET created_at = :now "
    "WHERE repository_id = :repository_id AND blob_id = :blob_id"
)

# -- blobs -------------------------------------------------------------------------------

_BLOB_COLLECTABLE = """COALESCE(b.touched_at, b.created_at) < :cutoff
   AND (b.deleting_since IS NULL OR b.deleting_since < :lease_cutoff)
   AND NOT EXISTS (SELECT 1 FROM repository_blob x WHERE x.blob_id = b.id)
   AND NOT EXISTS (SELECT 1 FROM manifest_blob x WHERE x.blob_id = b.id)
   AND NOT EXISTS (SELECT 1 FROM namespace_blob x WHERE x.blob_id = b.id)"""
SCAN_BLOBS = sql(
    f"""SELECT b.id, b.digest, b.size, CASE WHEN {_BLOB_COLLECTABLE} THEN 1 ELSE 0 END
       FROM (SELECT id, digest, size, created_at, touched_at, deleting_since FROM blob
             WHERE id > :after ORDER BY id LIMIT :scan) b
       ORDER BY b.id"""
)
LOCK_BLOBS = _ids_in(
    "SELECT id FROM blob WHERE {ids} ORDER BY id", "id", postgres_suffix=" FOR UPDATE"
)
BLOBS_COLLECTABLE = _ids_in(
    f"SELECT b.id, b.digest, b.size FROM blob b WHERE {{ids}} AND {_BLOB_COLLECTABLE}", "b.id"
)
MARK_BLOBS = _ids_in("UPDATE blob SET deleting_since = :stamp WHERE {ids}", "id")
STILL_OURS = _ids_in("SELECT id FROM blob WHERE {ids} AND deleting_since = :stamp", "id")
PLACEMENTS = _ids_in("SELECT blob_id, location FROM blob_placement WHERE {ids}", "blob_id")
DELETE_BLOBS = _ids_in(
    """DELETE FROM blob WHERE {ids} AND deleting_since = :stamp
       AND NOT EXISTS (SELECT 1 FROM repository_blob x WHERE x.blob_id = blob.id)
       AND NOT EXISTS (SELECT 1 FROM manifest_blob x WHERE x.blob_id = blob.id)
       AND NOT EXISTS (SELECT 1 FROM namespace_blob x WHERE x.blob_id = blob.id)
       RETURNING id, size""",
    "id",
)

# The push side.
BLOB_FOR_CLAIM = _for_update(
    "SELECT id, deleting_since, created_at FROM blob WHERE digest = :digest"
)
INSERT_TOUCHED_BLOB = sql(
    "INSERT INTO blob (digest, size, created_at, touched_at) VALUES (:digest, :size, :now, :now) "
    "ON CONFLICT DO NOTHING"
)
TOUCH_BLOB = sql("UPDATE blob SET touched_at = :now, deleting_since = NULL WHERE id = :id")
_LINKABLE = "SELECT id FROM blob WHERE id = :id AND deleting_since IS NULL"
BLOB_LINKABLE = sql(_LINKABLE, postgres=_LINKABLE + " FOR SHARE")
_HOLDS = _LINKABLE + " AND created_at = :created_at"
CLAIM_HOLDS = sql(_HOLDS, postgres=_HOLDS + " FOR SHARE")

# -- deleted repositories and namespaces -------------------------------------------------

DELETED_REPOSITORIES = sql(
    "SELECT id FROM repository WHERE deleted_at IS NOT NULL ORDER BY id LIMIT :limit"
)
COUNT_DELETED_REPOSITORIES = sql("SELECT COUNT(*) FROM repository WHERE deleted_at IS NOT NULL")
REPOSITORY_CONTENT = sql(
    """SELECT (SELECT COUNT(*) FROM tag WHERE repository_id = :id),
              (SELECT COUNT(*) FROM manifest WHERE repository_id = :id),
              (SELECT COUNT(*) FROM repository_blob WHERE repository_id = :id)"""
)
REPOSITORY_TAGS = sql("SELECT id FROM tag WHERE repository_id = :id ORDER BY id LIMIT :limit")
DELETE_TAGS = _ids_in("DELETE FROM tag WHERE {ids}", "id")
# Indexes before their children: only manifests no other manifest lists.
REPOSITORY_LEAVES = sql(
    """SELECT m.id FROM manifest m WHERE m.repository_id = :id
       AND NOT EXISTS (SELECT 1 FROM manifest_child c WHERE c.child_id = m.id)
       ORDER BY m.id LIMIT :limit"""
)
REPOSITORY_LINKS = sql(
    "SELECT blob_id FROM repository_blob WHERE repository_id = :id ORDER BY blob_id LIMIT :limit"
)
LOCK_REPOSITORY = _for_update("SELECT id FROM repository WHERE id = :id")
DELETE_REPOSITORY = sql("DELETE FROM repository WHERE id = :id AND deleted_at IS NOT NULL")
DELETED_NAMESPACES = sql(
    f"""SELECT n.id FROM namespace n WHERE n.name LIKE '{DELETED_MARK}%'
       AND NOT EXISTS (SELECT 1 FROM repository r WHERE r.namespace_id = n.id)
       ORDER BY n.id LIMIT :limit"""
)
LOCK_NAMESPACE = _for_update("SELECT id FROM namespace WHERE id = :id")
DELETE_NAMESPACE = sql(
    f"""DELETE FROM namespace WHERE id = :id AND name LIKE '{DELETED_MARK}%'
       AND NOT EXISTS (SELECT 1 FROM repository r WHERE r.namespace_id = namespace.id)"""
)

# -- gc_run ------------------------------------------------------------------------------

_RUN_COLUMNS = (
    "started_at, finished_at, dry_run, tags_deleted, manifests_deleted, links_deleted, "
    "blobs_deleted, bytes_freed, repositories_purged, backlog, error"
)
INSERT_RUN = sql(
    f"""INSERT INTO gc_run ({_RUN_COLUMNS})
       VALUES (:started_at, :finished_at, :dry_run, :tags_deleted, :manifests_deleted,
               :links_deleted, :blobs_deleted, :bytes_freed, :repositories_purged, :backlog,
               :error)"""
)
LAST_RUN = sql(
    """SELECT id, dry_run, tags_deleted + manifests_deleted + links_deleted + blobs_deleted
              + repositories_purged + backlog, error
       FROM gc_run ORDER BY id DESC LIMIT 1"""
)
EXTEND_RUN = sql("UPDATE gc_run SET finished_at = :finished_at WHERE id = :id")
PRUNE_RUNS = sql("DELETE FROM gc_run WHERE started_at < :cutoff")
RECENT_RUNS = sql(f"SELECT id, {_RUN_COLUMNS} FROM gc_run ORDER BY id DESC LIMIT :limit")
TOTALS = sql(
    """SELECT COUNT(*), MIN(started_at), COALESCE(SUM(tags_deleted), 0),
              COALESCE(SUM(manifests_deleted), 0), COALESCE(SUM(links_deleted), 0),
              COALESCE(SUM(blobs_deleted), 0), COALESCE(SUM(bytes_freed), 0),
              COALESCE(SUM(repositories_purged), 0)
       FROM gc_run WHERE dry_run = :no"""
)
LAST_ERROR = sql(
    "SELECT id, finished_at, error FROM gc_run WHERE error IS NOT NULL ORDER BY id DESC LIMIT 1"
)


@dataclass
class GcRun:
    """What one pass did (a dry run: what it would have done)."""

    started_at: datetime
    dry_run: bool = False
    finished_at: datetime | None = None
    tags_deleted: int = 0
    manifests_deleted: int = 0
    links_deleted: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    repositories_purged: int = 0
    backlog: int = 0  # candidates left for the next pass
    error: str | None = None
    id: int | None = None

    @property
    def idle(self) -> bool:
        return self.error is None and not (
            self.tags_deleted
            or self.manifests_deleted
            or self.links_deleted
            or self.blobs_deleted
            or self.repositories_purged
            or self.backlog
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("started_at", "finished_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


@dataclass
class _Phase:
    """Deletions left in this phase of the pass; beyond them candidates count as backlog."""

    left: int

    def take(self, count: int) -> None:
        self.left -= count


class Collector:
    def __init__(
        self,
        db: Database,
        storage: StorageDriver,
        cache: MetadataCache,
        settings: Settings,
        *,
        lock_path: Path | None = None,
        locations: StorageLocations | None = None,
    ) -> None:
        self.db = db
        self.storage = storage
        # Blob bytes go from every location that holds them (one: `storage`).
        self.locations = locations or StorageLocations.single(storage)
        self.cache = cache
        gc = settings.gc
        self.batch_size = gc.batch_size
        self.grace = timedelta(seconds=gc.grace_seconds)
        self.lease = timedelta(seconds=gc.deletion_lease_seconds)
        self.dry_run = gc.dry_run
        self.window = settings.tags.time_machine_seconds
        self.quota = QuotaPolicy(
            settings.quota.default_bytes, settings.quota.default_warning_percent
        )
        self.lock_path = lock_path or Path(settings.data_dir) / "run" / "gc.lock"
        # The time rules are judged by (grace, window); tests move it forward. Leases
        # always use the real time, which the push side compares them with.
        self.clock: Callable[[], datetime] = utcnow
        self.pace = gc.pace

    # -- a pass --------------------------------------------------------------------------

    async def run_once(self, dry_run: bool | None = None, *, wait: bool = False) -> GcRun | None:
        """One pass, recorded in gc_run. None when another process runs one now (with
        `wait`, wait for it to finish instead)."""
        dry = self.dry_run if dry_run is None else dry_run
        async with self._exclusive(wait) as held:
            if not held:
                return None
            run = GcRun(started_at=utcnow(), dry_run=dry)
            changed = False
            try:
                changed = await self._pass(run)
            except Exception as exc:  # recorded for the metrics; the next pass tries again
                log.exception("garbage collection pass failed")
                run.error = f"{type(exc).__name__}: {exc}"[:2000]
            finally:
                if changed:
                    self.cache.invalidate()
            run.finished_at = utcnow()
            await self._record(run)
            if not run.idle:
                log.info("gc pass: %s", {k: v for k, v in run.as_json().items() if v})
            return run

    async def _pass(self, run: GcRun) -> bool:
        """The phases in dependency order; whether anything cached may be stale now."""
        now = self.clock()
        await self._repositories(run)
        await self._manifests(run, now)
        await self._links(run, now)
        await self._blobs(run, now)
        await self._namespaces(run)
        return bool(
            not run.dry_run and (run.tags_deleted or run.manifests_deleted or run.links_deleted)
        )

    @asynccontextmanager
    async def _exclusive(self, wait: bool) -> AsyncIterator[bool]:
        """One collector per host at a time: an flock on the lock file."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                if wait:
                    await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    async def _paced(self, work: Awaitable[T]) -> T:
        """Run `work`, then rest `pace` (gc.pace) times as long as it took: in a server
        process the collector shares the event loop (and SQLite's one writer) with
        requests, and takes about 1 / (1 + pace) of the time when it has much to do."""
        start = time.monotonic()
        result = await work
        if self.pace:
            await asyncio.sleep((time.monotonic() - start) * self.pace)
        return result

    async def _rows(self, statement: Sql, **params: Any) -> list[Row]:
        async with self.db.read() as session:
            return await session.all(statement, **params)

    def _phase(self) -> _Phase:
        return _Phase(self.batch_size * BATCHES_PER_PHASE)

    # -- deleted repositories ------------------------------------------------------------

    async def _repositories(self, run: GcRun) -> None:
        """Purge repositories deleted through the API: tags, manifests (indexes first),
        links, then the row."""
        async with self.db.read() as session:
            ids = [row[0] for row in await session.all(DELETED_REPOSITORIES, limit=1000)]
            total = int(await session.value(COUNT_DELETED_REPOSITORIES))
        run.backlog += total - len(ids)
        if run.dry_run:
            for repo_id in ids:
                async with self.db.read() as session:
                    row = await session.one(REPOSITORY_CONTENT, id=repo_id)
                assert row is not None
                run.tags_deleted += int(row[0])
                run.manifests_deleted += int(row[1])
                run.links_deleted += int(row[2])
                run.repositories_purged += 1
            return
        batches = 0
        for index, repo_id in enumerate(ids):
            while True:
                if batches >= BATCHES_PER_PHASE:
                    run.backlog += len(ids) - index
                    return
                batches += 1
                kind, count = await self._paced(self._purge(repo_id))
                if kind == "tags":
                    run.tags_deleted += count
                elif kind == "manifests":
                    run.manifests_deleted += count
                elif kind == "links":
                    run.links_deleted += count
                else:
                    run.repositories_purged += count
                    break
            self.cache.invalidate()

    async def _purge(self, repo_id: int) -> tuple[str, int]:
        async def work(session: DbSession) -> tuple[str, int]:
            return await self._purge_step(session, repo_id)

        kind, count = await run_write(self.db, work, attempts=ATTEMPTS)
        if kind == "links":
            async with self.db.read() as session:
                rows = await session.all(REPOSITORY_LINKS, id=repo_id, limit=self.batch_size)
            for (blob_id,) in rows:
                count += await self._unlink(repo_id, int(blob_id), None)
        return kind, count

    async def _purge_step(self, session: DbSession, repo_id: int) -> tuple[str, int]:
        """One bounded step of purging a deleted repository: (what it deleted, how many)."""
        limit = self.batch_size
        tags = [row[0] for row in await session.all(REPOSITORY_TAGS, id=repo_id, limit=limit)]
        if tags:
            await session.run(DELETE_TAGS, ids=_ids(session, tags))
            return "tags", len(tags)
        leaves = [row[0] for row in await session.all(REPOSITORY_LEAVES, id=repo_id, limit=limit)]
        if leaves:
            for manifest_id in leaves:
                await session.run(DELETE_TAGS_OF_MANIFEST, id=manifest_id)
                await session.run(DELETE_MANIFEST, id=manifest_id)
            return "manifests", len(leaves)
        if await session.one(REPOSITORY_LINKS, id=repo_id, limit=1):
            return "links", 0  # unlinked one per transaction, by _purge
        # Empty now. The lock makes a late writer (a push that still knew the repository's
        # id) finish first; whatever it added is purged by the next step instead.
        await session.one(LOCK_REPOSITORY, id=repo_id)
        content = await session.one(REPOSITORY_CONTENT, id=repo_id)
        if content is not None and any(int(c) for c in content):
            return "tags", 0
        return "repository", await session.run(DELETE_REPOSITORY, id=repo_id)

    async def _namespaces(self, run: GcRun) -> None:
        """Namespaces deleted while repositories of theirs were still being purged."""
        if run.dry_run:
            return
        async with self.db.read() as session:
            ids = [row[0] for row in await session.all(DELETED_NAMESPACES, limit=self.batch_size)]
        for namespace_id in ids:

            async def work(session: DbSession, namespace_id: int = namespace_id) -> int:
                await session.one(LOCK_NAMESPACE, id=namespace_id)
                return await session.run(DELETE_NAMESPACE, id=namespace_id)

            if await run_write(self.db, work, attempts=ATTEMPTS):
                log.info("gc: deleted namespace %d", namespace_id)

    # -- manifests -----------------------------------------------------------------------

    async def _scan_manifests(self, now: datetime) -> AsyncIterator[int]:
        after = 0
        while True:
            rows = await self._paced(
                self._rows(
                    SCAN_MANIFESTS,
                    after=after,
                    scan=SCAN_ROWS,
                    now=now,
                    cutoff=now - self.grace,
                    window=self.window,
                )
            )
            for manifest_id, collectable in rows:
                if collectable:
                    yield int(manifest_id)
            if len(rows) < SCAN_ROWS:
                return
            after = rows[-1][0]

    async def _manifests(self, run: GcRun, now: datetime) -> None:
        phase = self._phase()
        batch: list[int] = []
        async for manifest_id in self._scan_manifests(now):
            if run.dry_run:
                run.manifests_deleted += 1
            elif phase.left <= len(batch):
                run.backlog += 1
            else:
                batch.append(manifest_id)
                if len(batch) >= self.batch_size:
                    await self._paced(self._delete_manifests(run, phase, batch, now))
                    batch = []
        if batch:
            await self._paced(self._delete_manifests(run, phase, batch, now))

    async def _delete_manifests(
        self, run: GcRun, phase: _Phase, batch: list[int], now: datetime
    ) -> None:
        async def work(session: DbSession) -> tuple[int, int]:
            deleted = tags = 0
            for manifest_id in batch:
                # Locked, then judged again by a new statement: on PostgreSQL a push that
                # tags it or lists it in an index either committed (and keeps it) or waits
                # and then fails on the foreign key (and is retried against the new state).
                if await session.one(LOCK_MANIFEST, id=manifest_id) is None:
                    continue
                still = await session.one(
                    MANIFEST_COLLECTABLE,
                    id=manifest_id,
                    now=now,
                    cutoff=now - self.grace,
                    window=self.window,
                )
                if still is None:
                    continue
                tags += await session.run(DELETE_TAGS_OF_MANIFEST, id=manifest_id)
                await session.run(DELETE_MANIFEST, id=manifest_id)
                deleted += 1
            return deleted, tags

        deleted, tags = await run_write(self.db, work, attempts=ATTEMPTS)
        phase.take(len(batch))
        run.manifests_deleted += deleted
        run.tags_deleted += tags

    # -- blob links ----------------------------------------------------------------------

    async def _scan_links(self, now: datetime) -> AsyncIterator[tuple[int, int]]:
        after = (0, 0)
        while True:
            rows = await self._paced(
                self._rows(
                    SCAN_LINKS,
                    after_repository=after[0],
                    after_blob=after[1],
                    scan=SCAN_ROWS,
                    cutoff=now - self.grace,
                )
            )
            for repository_id, blob_id, collectable in rows:
                if collectable:
                    yield int(repository_id), int(blob_id)
            if len(rows) < SCAN_ROWS:
                return
            after = (rows[-1][0], rows[-1][1])

    async def _links(self, run: GcRun, now: datetime) -> None:
        phase = self._phase()
        batch: list[tuple[int, int]] = []
        async for link in self._scan_links(now):
            if run.dry_run:
                run.links_deleted += 1
            elif phase.left <= len(batch):
                run.backlog += 1
            else:
                batch.append(link)
                if len(batch) >= self.batch_size:
                    await self._paced(self._delete_links(run, phase, batch, now))
                    batch = []
        if batch:
            await self._paced(self._delete_links(run, phase, batch, now))

    async def _delete_links(
        self, run: GcRun, phase: _Phase, batch: list[tuple[int, int]], now: datetime
    ) -> None:
        for repository_id, blob_id in batch:
            run.links_deleted += await self._unlink(repository_id, blob_id, now - self.grace)
        phase.take(len(batch))

    async def _unlink(self, repository_id: int, blob_id: int, cutoff: datetime | None) -> int:
        """Remove one link (1) if still collectable (a link older than `cutoff` that no
        manifest of its repository references; any link of a deleted repository when
        `cutoff` is None), else 0. One link per transaction: its row locks come in the
        order a push takes them (the link, the repository's and then the namespace's
        usage rows), so the collector cannot deadlock with pushes on PostgreSQL."""
        link = {"repository_id": repository_id, "blob_id": blob_id}

        async def work(session: DbSession) -> int:
            # A manifest push holds the links it checks FOR SHARE until it commits: this
            # lock waits for it, and the new statement then sees its references.
            if await session.one(LOCK_LINK, **link) is None:
                return 0
            if cutoff is not None and not await session.one(
                LINK_COLLECTABLE, cutoff=cutoff, **link
            ):
                return 0
            await queries.unlink_blob(session, repository_id, blob_id, quota=self.quota)
            return 1

        return await run_write(self.db, work, attempts=ATTEMPTS)

    # -- blobs ---------------------------------------------------------------------------

    async def _scan_blobs(self, now: datetime) -> AsyncIterator[tuple[int, str, int]]:
        after = 0
        while True:
            rows = await self._paced(
                self._rows(
                    SCAN_BLOBS,
                    after=after,
                    scan=SCAN_ROWS,
                    cutoff=now - self.grace,
                    lease_cutoff=now - self.lease,
                )
            )
            for blob_id, digest, size, collectable in rows:
                if collectable:
                    yield int(blob_id), str(digest), int(size)
            if len(rows) < SCAN_ROWS:
                return
            after = rows[-1][0]

    async def _blobs(self, run: GcRun, now: datetime) -> None:
        phase = self._phase()
        batch: list[int] = []
        async for blob_id, _digest, size in self._scan_blobs(now):
            if run.dry_run:
                run.blobs_deleted += 1
                run.bytes_freed += size
            elif phase.left <= len(batch):
                run.backlog += 1
            else:
                batch.append(blob_id)
                if len(batch) >= self.batch_size:
                    await self._paced(self._delete_blobs(run, phase, batch, now))
                    batch = []
        if batch:
            await self._paced(self._delete_blobs(run, phase, batch, now))

    async def _delete_blobs(
        self, run: GcRun, phase: _Phase, batch: list[int], now: datetime
    ) -> None:
        phase.take(len(batch))
        stamp, marked = await self.mark_blobs(batch, now)
        if not marked:
            return
        gone = await self.delete_blob_bytes(stamp, marked)
        deleted = await self.drop_blob_rows(stamp, gone)
        run.blobs_deleted += len(deleted)
        run.bytes_freed += sum(deleted.values())

    async def mark_blobs(
        self, blob_ids: Sequence[int], now: datetime
    ) -> tuple[datetime, list[tuple[int, str, int]]]:
        """Step 1: take the deletion lease on those of `blob_ids` still collectable, under
        their row locks. (the lease's time stamp, [(id, digest, size)] marked)"""
        stamp = utcnow()

        async def work(session: DbSession) -> list[tuple[int, str, int]]:
            ids = _ids(session, sorted(blob_ids))
            await session.all(LOCK_BLOBS, ids=ids)
            rows = await session.all(
                BLOBS_COLLECTABLE,
                ids=ids,
                cutoff=now - self.grace,
                lease_cutoff=now - self.lease,
            )
            if rows:
                await session.run(MARK_BLOBS, ids=_ids(session, [r[0] for r in rows]), stamp=stamp)
            return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

        return stamp, await run_write(self.db, work, attempts=ATTEMPTS)

    async def delete_blob_bytes(
        self, stamp: datetime, marked: Sequence[tuple[int, str, int]]
    ) -> list[tuple[int, str, int]]:
        """Step 2: delete the bytes of the blobs whose lease is still ours, while it has
        at least half its time left (a publish takes a blob back only after the whole
        lease). The blobs whose bytes went."""
        async with self.db.read() as session:
            rows = await session.all(
                STILL_OURS, ids=_ids(session, [m[0] for m in marked]), stamp=stamp
            )
            placed: dict[int, list[str]] = {}
            if self.locations.several and rows:
                ids = _ids(session, [int(r[0]) for r in rows])
                for blob_id, location in await session.all(PLACEMENTS, ids=ids):
                    placed.setdefault(int(blob_id), []).append(str(location))
        ours = {int(r[0]) for r in rows}
        deadline = stamp + self.lease / 2
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)
        gone: list[tuple[int, str, int]] = []

        async def delete(blob: tuple[int, str, int]) -> None:
            async with limit:
                if utcnow() >= deadline:
                    log.warning("gc: lease of blob %s ran short; it stays for now", blob[1])
                    return
                where = placed.get(blob[0], [])  # none: the default location
                unknown = sorted(set(where) - set(self.locations.drivers))
                if unknown:  # its row stays, so these bytes are not forgotten
                    log.warning(
                        "gc: blob %s is in storage locations no longer configured (%s); it stays",
                        blob[1],
                        ", ".join(unknown),
                    )
                    return
                key = layout.blob_key(parse_digest(blob[1]))
                for _name, driver in self.locations.holders(where):
                    await driver.delete(key)
                gone.append(blob)

        await asyncio.gather(*(delete(m) for m in marked if m[0] in ours))
        return gone

    async def drop_blob_rows(
        self, stamp: datetime, gone: Sequence[tuple[int, str, int]]
    ) -> dict[int, int]:
        """Step 3: delete the rows of the blobs whose bytes went, if still under our lease.
        {id: size} of the rows deleted."""
        if not gone:
            return {}

        async def work(session: DbSession) -> list[Row]:
            return await session.all(
                DELETE_BLOBS, ids=_ids(session, [g[0] for g in gone]), stamp=stamp
            )

        rows = await run_write(self.db, work, attempts=ATTEMPTS)
        deleted = {int(r[0]): int(r[1]) for r in rows}
        for blob_id, digest, _ in gone:
            if blob_id not in deleted:  # never expected: nothing links a leased blob
                log.error("gc: the bytes of blob %s went but its row stays", digest)
        return deleted

    # -- the record ----------------------------------------------------------------------

    async def _record(self, run: GcRun) -> None:
        """Insert the run; an idle pass after an idle pass only extends that row, so a
        quiet registry does not fill the table."""
        values = run.as_json()
        values.pop("id")
        values["started_at"], values["finished_at"] = run.started_at, run.finished_at

        async def work(session: DbSession) -> None:
            last = await session.one(LAST_RUN)
            if (
                run.idle
                and last is not None
                and as_bool(last[1]) == run.dry_run
                and int(last[2]) == 0
                and last[3] is None
            ):
                run.id = int(last[0])
                await session.run(EXTEND_RUN, id=run.id, finished_at=run.finished_at)
            else:
                await session.run(INSERT_RUN, **values)
            await session.run(PRUNE_RUNS, cutoff=utcnow() - RUN_RETENTION)

        try:
            await run_write(self.db, work)
        except Exception:
            log.exception("could not record the garbage collection pass")


# -- the push side of the protocol -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobClaim:
    """A publish's hold on a digest's row: its id and the created_at that identifies
    this generation of the row (SQLite may hand a deleted row's id out again)."""

    id: int
    created_at: Any


async def claim_blob(
    db: Database,
    digest: str,
    size: int,
    *,
    lease_seconds: float,
    locations: Sequence[str] = (),
    default_location: str = "default",
) -> BlobClaim:
    """Before a publish touches storage: create the blob's row, or mark it touched now so
    the collector leaves it alone. While a collector holds the deletion lease, wait
    (short back-off) until it finished (the row is gone: start afresh) or the lease
    passed (the collector is presumed dead: take the blob back). With several storage
    locations, `locations` (where the bytes are about to be written) are recorded in the
    same transaction (services/placements.py): the rows come before the bytes."""
    delay = 0.02
    lease = timedelta(seconds=lease_seconds)

    async def work(session: DbSession) -> BlobClaim | None:
        now = utcnow()
        row = await session.one(BLOB_FOR_CLAIM, digest=digest)
        existed = row is not None
        if row is None:
            await session.run(INSERT_TOUCHED_BLOB, digest=digest, size=size, now=now)
            row = await session.one(BLOB_FOR_CLAIM, digest=digest)
            assert row is not None
        else:
            deleting_since = as_datetime(row[1])
            if deleting_since is not None and deleting_since > now - lease:
                return None
            await session.run(TOUCH_BLOB, id=row[0], now=now)
        await placements.record(
            session, int(row[0]), locations, default=default_location, existed=existed
        )
        return BlobClaim(int(row[0]), row[2])

    # A lease stamped in the future (a collector on a host whose clock runs ahead) must not
    # hold a publish for ever: past twice the lease, refuse cleanly (the client retries).
    give_up = asyncio.get_running_loop().time() + 2 * lease_seconds + 1
    while True:
        claim = await run_write(db, work)
        if claim is not None:
            return claim
        if asyncio.get_running_loop().time() > give_up:
            raise BlobUploadInvalid("the blob is being garbage-collected; try again")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def claim_holds(session: DbSession, claim: BlobClaim) -> bool:
    """In the publish's linking transaction: the claimed row is still there and no
    collector took the lease since (only possible if publishing took longer than the
    grace period). Holds the row FOR SHARE on PostgreSQL until the link commits."""
    row = await session.one(CLAIM_HOLDS, id=claim.id, created_at=claim.created_at)
    return row is not None


async def blob_linkable(session: DbSession, blob_id: int) -> bool:
    """Whether a blob may get a new link (a mount): not being deleted. Holds the row FOR
    SHARE on PostgreSQL until the caller commits, so a collector cannot mark it meanwhile."""
    return await session.one(BLOB_LINKABLE, id=blob_id) is not None


async def refresh_link(
    session: DbSession,
    repository_id: int,
    blob_id: int,
    relink: Callable[[], Awaitable[object]],
) -> None:
    """After linking: make the link's age count from now (the collector removes
    unreferenced links older than the grace period), and link again with `relink` (the
    caller's own link, quota checked) if a collector removed the link between the
    insert and this update."""
    touched = await session.run(
        TOUCH_LINK, repository_id=repository_id, blob_id=blob_id, now=utcnow()
    )
    if not touched:
        await relink()


# -- metrics -----------------------------------------------------------------------------


def _run_from_row(row: Row) -> GcRun:
    return GcRun(
        id=int(row[0]),
        started_at=as_datetime(row[1]) or utcnow(),
        finished_at=as_datetime(row[2]),
        dry_run=as_bool(row[3]),
        tags_deleted=int(row[4]),
        manifests_deleted=int(row[5]),
        links_deleted=int(row[6]),
        blobs_deleted=int(row[7]),
        bytes_freed=int(row[8]),
        repositories_purged=int(row[9]),
        backlog=int(row[10]),
        error=row[11],
    )


async def report(db: Database, limit: int = 20) -> dict[str, Any]:
    """Recent passes, totals over the kept history (dry runs excluded), the backlog the
    last pass left, and the last error."""
    async with db.read() as session:
        runs = [_run_from_row(r) for r in await session.all(RECENT_RUNS, limit=limit)]
        totals = await session.one(TOTALS, no=False)
        error = await session.one(LAST_ERROR)
    assert totals is not None
    since = as_datetime(totals[1])
    last = runs[0] if runs else None
    return {
        "last_run": last.as_json() if last else None,
        "backlog": last.backlog if last else 0,
        "totals": {
            "runs": int(totals[0]),
            "since": since.isoformat() if since else None,
            "tags_deleted": int(totals[2]),
            "manifests_deleted": int(totals[3]),
            "links_deleted": int(totals[4]),
            "blobs_deleted": int(totals[5]),
            "bytes_freed": int(totals[6]),
            "repositories_purged": int(totals[7]),
        },
        "last_error": None
        if error is None
        else {
            "run": int(error[0]),
            "at": (as_datetime(error[1]) or utcnow()).isoformat(),
            "error": error[2],
        },
        "runs": [r.as_json() for r in runs],
    }
