"""The durable job queue: the `job` table (ARCHITECTURE.md, "Background jobs").

A job is enqueued inside any write transaction (`enqueue`), so it exists exactly when the
change that needs it committed. Workers claim due jobs under a lease: on PostgreSQL with
`FOR UPDATE SKIP LOCKED` (competing workers skip each other's rows instead of waiting),
on SQLite inside the BEGIN IMMEDIATE of a write transaction, which runs alone. A claim
counts an attempt. The holder renews the lease while the handler runs; a worker that dies
stops renewing, and once the lease has passed the job is due again for any worker. So a
job runs at least once, and more than once only when a worker died or stalled past its
lease: handlers must be idempotent (an effect keyed by the job, an upsert, a conditional
update). A failure puts the job back with an exponential back-off, or fails it for good
after `max_attempts` (with `last_error`). Every change after the claim is conditional on
the lease still being ours, so a worker that lost its job changes nothing.

Times are the workers' clocks (UTC): replicas must agree within a small part of a lease."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import Sql, sql

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
PURGE_BATCH = 1000
DEFAULT_MAX_ATTEMPTS = 5
ERROR_CHARS = 2000


@dataclass(frozen=True)
class Job:
    """A claimed job."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempt: int  # this claim's number, from 1
    max_attempts: int


def _in(template: str, column: str, param: str, *, postgres_suffix: str = "") -> Sql:
    """`template` with `{in}` replaced by `column IN <list parameter>`."""
    return sql(
        template.replace("{in}", f"{column} IN (SELECT value FROM json_each(:{param}))"),
        postgres=template.replace("{in}", f"{column} = ANY(:{param})") + postgres_suffix,
    )


def _list(session: DbSession, values: Collection[Any]) -> Any:
    return list(values) if session.dialect == "postgresql" else json.dumps(list(values))


INSERT = sql(
    """INSERT INTO job (kind, payload, state, run_at, attempts, max_attempts, dedup_key,
                        created_at)
       VALUES (:kind, :payload, 'queued', :run_at, 0, :max_attempts, :dedup_key, :now)
       ON CONFLICT DO NOTHING RETURNING id"""
)
_DUE = """((state = 'queued' AND run_at <= :now)
           OR (state = 'running' AND lease_until < :now))"""
ANY_DUE = _in(f"SELECT 1 FROM job WHERE {{in}} AND {_DUE} LIMIT 1", "kind", "kinds")
# Locked and skipped by competing claims on PostgreSQL; SQLite's writer runs alone.
CANDIDATES = _in(
    f"""SELECT id, state, attempts, max_attempts FROM job WHERE {{in}} AND {_DUE}
        ORDER BY run_at, id LIMIT :limit""",
    "kind",
    "kinds",
    postgres_suffix=" FOR UPDATE SKIP LOCKED",
)
TAKE = _in(
    """UPDATE job SET state = 'running', attempts = attempts + 1, lease_owner = :owner,
              lease_until = :until
       WHERE {in} RETURNING id, kind, payload, attempts, max_attempts""",
    "id",
    "ids",
)
# A job whose worker died on its last attempt: no attempt left to run it again.
EXHAUSTED = _in(
    """UPDATE job SET state = 'failed', finished_at = :now, lease_until = NULL,
              last_error = :error
       WHERE {in}""",
    "id",
    "ids",
)
_OURS = "id = :id AND lease_owner = :owner AND state = 'running'"
RENEW = sql(f"UPDATE job SET lease_until = :until WHERE {_OURS}")
COMPLETE = sql(
    f"UPDATE job SET state = 'done', finished_at = :now, lease_until = NULL WHERE {_OURS}"
)
RETRY = sql(
    f"""UPDATE job SET state = 'queued', run_at = :run_at, lease_until = NULL,
               last_error = :error
        WHERE {_OURS}"""
)
FAIL = sql(
    f"""UPDATE job SET state = 'failed', finished_at = :now, lease_until = NULL,
               last_error = :error
        WHERE {_OURS}"""
)
# Given back unfinished (the worker stops): due at once, the attempt not counted.
RELEASE = sql(
    f"""UPDATE job SET state = 'queued', run_at = :now, lease_owner = NULL, lease_until = NULL,
               attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
        WHERE {_OURS}"""
)
PURGE = sql(
    """DELETE FROM job WHERE id IN (SELECT id FROM job
       WHERE state IN ('done', 'failed') AND finished_at < :cutoff LIMIT :batch)"""
)
COUNTS = sql("SELECT kind, state, COUNT(*) FROM job GROUP BY kind, state")


# -- wake-ups inside this process --------------------------------------------------------

_listeners: set[Callable[[], None]] = set()


def listen(callback: Callable[[], None]) -> None:
    """Call `callback` whenever this process commits an enqueued job (a worker's wake-up:
    other processes find the job by polling)."""
    _listeners.add(callback)


def unlisten(callback: Callable[[], None]) -> None:
    _listeners.discard(callback)


def _wake() -> None:
    for callback in list(_listeners):
        callback()


# -- enqueueing --------------------------------------------------------------------------


async def enqueue(
    session: DbSession,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    dedup_key: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> int | None:
    """Add a job in the caller's write transaction: it exists if and only if that
    transaction commits. The job's id, or None when a job with `dedup_key` exists already
    (in any state: a key names one piece of work for good). `payload` is a JSON object."""
    now = utcnow()
    job_id = await session.value(
        INSERT,
        kind=kind,
        payload=json.dumps(payload or {}, separators=(",", ":")),
        run_at=run_at or now,
        max_attempts=max_attempts,
        dedup_key=dedup_key,
        now=now,
    )
    if job_id is not None:
        session.after_commit(_wake)
    return None if job_id is None else int(job_id)


async def submit(
    db: Database, kind: str, payload: dict[str, Any] | None = None, **options: Any
) -> int | None:
    """`enqueue` in a transaction of its own."""

    async def work(session: DbSession) -> int | None:
        return await enqueue(session, kind, payload, **options)

    return await run_write(db, work)


# -- the worker's side -------------------------------------------------------------------


async def any_due(db: Database, kinds: Collection[str], now: datetime | None = None) -> bool:
    """Whether a job of `kinds` is due: a cheap read before a claim takes the writer."""
    async with db.read() as session:
        row = await session.one(ANY_DUE, kinds=_list(session, kinds), now=now or utcnow())
    return row is not None


async def claim(
    db: Database,
    kinds: Collection[str],
    owner: str,
    lease: float,
    *,
    limit: int = 1,
    now: datetime | None = None,
) -> list[Job]:
    """Take up to `limit` due jobs of `kinds` (queued and due, or running with a lease
    that passed) for `owner`, leased for `lease` seconds; oldest first."""
    at = now or utcnow()

    async def work(session: DbSession) -> list[Job]:
        rows = await session.all(CANDIDATES, kinds=_list(session, kinds), now=at, limit=limit)
        exhausted = [r[0] for r in rows if r[1] == RUNNING and int(r[2]) >= int(r[3])]
        if exhausted:
            error = "lease expired: the worker running the last attempt stopped or died"
            await session.run(EXHAUSTED, ids=_list(session, exhausted), now=at, error=error)
            log.warning("jobs %s failed: %s", exhausted, error)
        ids = [r[0] for r in rows if r[0] not in exhausted]
        if not ids:
            return []
        again = [r[0] for r in rows if r[1] == RUNNING and r[0] in ids]
        if again:
            log.warning("jobs %s: lease passed (worker died or stalled); running again", again)
        until = at + timedelta(seconds=lease)
        taken = await session.all(TAKE, ids=_list(session, ids), owner=owner, until=until)
        return [
            Job(int(r[0]), str(r[1]), json.loads(r[2]), int(r[3]), int(r[4]))
            for r in sorted(taken, key=lambda r: ids.index(r[0]))
        ]

    return await run_write(db, work)


async def _ours(db: Database, statement: Sql, job_id: int, owner: str, **params: Any) -> bool:
    async def work(session: DbSession) -> int:
        return await session.run(statement, id=job_id, owner=owner, **params)

    return await run_write(db, work) == 1


async def renew(db: Database, job_id: int, owner: str, lease: float) -> bool:
    """Extend the lease; False when the job is no longer ours (the lease passed and
    another worker took it): the caller stops working on it."""
    until = utcnow() + timedelta(seconds=lease)
    return await _ours(db, RENEW, job_id, owner, until=until)


async def complete(db: Database, job_id: int, owner: str, *, now: datetime | None = None) -> bool:
    """Mark the job done; False when it was no longer ours."""
    return await _ours(db, COMPLETE, job_id, owner, now=now or utcnow())


def retry_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before the next attempt after attempt number `attempt` failed: base x
    2^(attempt-1), at most `cap`, of which a random half is dropped (jitter, so that
    jobs failing together do not come back together). Below the cap, never shorter than
    the previous attempt's longest delay: the delays grow."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


async def fail(
    db: Database,
    job: Job,
    owner: str,
    error: str,
    *,
    base: float,
    cap: float,
    final: bool = False,
    now: datetime | None = None,
) -> datetime | None:
    """Record a failed attempt: back in the queue after `retry_delay`, or failed for good
    after the last attempt (or at once with `final`). When it runs again, or None when
    it failed for good (or was no longer ours)."""
    at = now or utcnow()
    error = error[:ERROR_CHARS]
    if final or job.attempt >= job.max_attempts:
        await _ours(db, FAIL, job.id, owner, now=at, error=error)
        return None
    run_at = at + timedelta(seconds=retry_delay(job.attempt, base, cap))
    if not await _ours(db, RETRY, job.id, owner, run_at=run_at, error=error):
        return None
    return run_at


async def release(db: Database, job_id: int, owner: str) -> bool:
    """Give an unfinished job back (this worker stops): due at once for another worker,
    this attempt not counted."""
    return await _ours(db, RELEASE, job_id, owner, now=utcnow())


async def purge(db: Database, older_than: timedelta, *, batch: int = PURGE_BATCH) -> int:
    """Delete done and failed jobs that finished more than `older_than` ago, `batch` per
    transaction; how many."""
    cutoff = utcnow() - older_than
    total = 0
    while True:

        async def work(session: DbSession) -> int:
            return await session.run(PURGE, cutoff=cutoff, batch=batch)

        deleted = await run_write(db, work)
        total += deleted
        if deleted < batch:
            return total


async def counts(db: Database) -> dict[tuple[str, str], int]:
    """Jobs by (kind, state): the queue depth for metrics and operators."""
    async with db.read() as session:
        rows = await session.all(COUNTS)
    return {(str(kind), str(state)): int(n) for kind, state, n in rows}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
