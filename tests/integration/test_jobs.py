"""The job queue, the worker and periodic tasks in this process, on real SQLite and
PostgreSQL databases: enqueueing inside a transaction, claims that never hand one job to
two workers, leases taken over once they passed, back-off then failure, graceful stop,
purge. Several processes competing (one of them killed) are in test_job_workers.py.
Nothing here asserts how long anything took: times are passed in (`now=`) where the
rules depend on them, and waits poll for an outcome."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cargohold.db.base import utcnow
from cargohold.db.migrate import upgrade
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.jobs import queue
from cargohold.jobs.periodic import PeriodicRunner, PeriodicTask
from cargohold.jobs.worker import GiveUp, JobContext, Worker, WorkerOptions
from tests.support.postgres import temporary_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

JOB = sql(
    "SELECT state, attempts, lease_owner, last_error, finished_at, run_at FROM job WHERE id = :id"
)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        upgrade(url)
        database = Database(url)
        yield database
        await database.dispose()
    else:
        with temporary_database() as url:
            upgrade(url)
            database = Database(url)
            yield database
            await database.dispose()


async def _job(db: Database, job_id: int) -> dict[str, Any]:
    async with db.read() as s:
        row = await s.one(JOB, id=job_id)
    assert row is not None
    keys = ("state", "attempts", "lease_owner", "last_error", "finished_at", "run_at")
    out = dict(zip(keys, row, strict=True))
    out["finished_at"] = as_datetime(out["finished_at"])
    out["run_at"] = as_datetime(out["run_at"])
    return out


async def _execute(db: Database, statement: str, **params: Any) -> int:
    async def work(s: DbSession) -> int:
        return await s.run(sql(statement), **params)

    return await run_write(db, work)


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "the expected outcome did not come"
        await asyncio.sleep(0.02)


def _options(**changes: Any) -> WorkerOptions:
    base = {
        "concurrency": 4,
        "lease_seconds": 30.0,
        "poll_seconds": 0.2,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "stop_seconds": 5.0,
    }
    base.update(changes)
    return WorkerOptions(**base)


# -- enqueueing --------------------------------------------------------------------------


async def test_a_job_exists_only_if_its_transaction_commits(db: Database) -> None:
    woken: list[str] = []

    def wake() -> None:
        woken.append("woken")

    queue.listen(wake)
    try:
        with pytest.raises(RuntimeError):
            async with db.write() as s:
                assert await queue.enqueue(s, "k", {"n": 1}) is not None
                raise RuntimeError("the change fails")
        async with db.read() as s:
            assert await s.value(sql("SELECT COUNT(*) FROM job")) == 0
        assert woken == []  # nothing to wake a worker for

        async with db.write() as s:
            job_id = await queue.enqueue(s, "k", {"n": 2})
            assert woken == []  # not before the commit
        assert woken == ["woken"]
    finally:
        queue.unlisten(wake)
    assert job_id is not None
    row = await _job(db, job_id)
    assert (row["state"], row["attempts"]) == ("queued", 0)
    async with db.read() as s:
        payload = await s.value(sql("SELECT payload FROM job WHERE id = :id"), id=job_id)
    assert json.loads(payload) == {"n": 2}


async def test_a_dedup_key_names_one_piece_of_work_for_good(db: Database) -> None:
    first = await queue.submit(db, "k", dedup_key="event:1")
    assert first is not None
    assert await queue.submit(db, "k", dedup_key="event:1") is None
    [job] = await queue.claim(db, ["k"], "w", 30)
    assert await queue.complete(db, job.id, "w")
    assert await queue.submit(db, "k", dedup_key="event:1") is None  # done: still that job
    assert await queue.submit(db, "k", dedup_key="event:2") is not None


# -- claims and leases -------------------------------------------------------------------


async def test_competing_claims_hand_each_job_to_one_worker(db: Database) -> None:
    """Four workers on connections of their own (PostgreSQL: SKIP LOCKED; SQLite: one
    writer at a time) claim 40 jobs concurrently, three at a time: each job once."""
    ids = {await queue.submit(db, "k", {"i": i}) for i in range(40)}
    others = [Database(db.url) for _ in range(3)]
    claimed: dict[int, str] = {}
    duplicates: list[int] = []

    async def claimer(database: Database, owner: str) -> None:
        while True:
            jobs = await queue.claim(database, ["k"], owner, 30, limit=3)
            if not jobs:
                return
            for job in jobs:
                if job.id in claimed:
                    duplicates.append(job.id)
                claimed[job.id] = owner
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(claimer(d, f"w{i}") for i, d in enumerate([db, *others])))
    finally:
        for d in others:
            await d.dispose()
    assert duplicates == []
    assert set(claimed) == ids


async def test_only_due_jobs_of_the_workers_kinds_are_claimed(db: Database) -> None:
    now = utcnow()
    later = await queue.submit(db, "k", run_at=now + timedelta(minutes=5))
    other = await queue.submit(db, "other")
    assert later is not None and other is not None
    assert await queue.claim(db, ["k"], "w", 30, now=now) == []
    assert not await queue.any_due(db, ["k"], now=now)
    assert await queue.any_due(db, ["k"], now=now + timedelta(minutes=5))
    [job] = await queue.claim(db, ["k"], "w", 30, now=now + timedelta(minutes=5))
    assert job.id == later


async def test_an_expired_lease_is_taken_over_and_the_old_holder_changes_nothing(
    db: Database,
) -> None:
    job_id = await queue.submit(db, "k", {"x": 1})
    now = utcnow()
    [first] = await queue.claim(db, ["k"], "dead", 10, now=now)
    assert (first.id, first.attempt, first.payload) == (job_id, 1, {"x": 1})
    assert await queue.claim(db, ["k"], "other", 10, now=now + timedelta(seconds=9)) == []
    [again] = await queue.claim(db, ["k"], "other", 10, now=now + timedelta(seconds=11))
    assert (again.id, again.attempt) == (job_id, 2)
    # The first holder woke up: its lease is gone, whatever it tries.
    assert not await queue.renew(db, job_id, "dead", 10)
    assert not await queue.complete(db, job_id, "dead")
    assert await queue.fail(db, first, "dead", "late", base=1, cap=1) is None
    assert not await queue.release(db, job_id, "dead")
    assert (await _job(db, job_id))["state"] == "running"
    assert await queue.renew(db, job_id, "other", 10)
    assert await queue.complete(db, job_id, "other")
    row = await _job(db, job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("done", 2, "other")
    assert row["finished_at"] is not None


async def test_a_job_whose_worker_died_on_its_last_attempt_fails(db: Database) -> None:
    job_id = await queue.submit(db, "k", max_attempts=1)
    now = utcnow()
    await queue.claim(db, ["k"], "dead", 10, now=now)
    assert await queue.claim(db, ["k"], "other", 10, now=now + timedelta(seconds=11)) == []
    row = await _job(db, job_id)
    assert row["state"] == "failed"
    assert "lease expired" in row["last_error"]


# -- failures ----------------------------------------------------------------------------


async def test_failures_come_back_later_and_later_then_fail_with_the_last_error(
    db: Database,
) -> None:
    job_id = await queue.submit(db, "k", max_attempts=4)
    at = utcnow()
    delays: list[float] = []
    for attempt in range(1, 5):
        [job] = await queue.claim(db, ["k"], "w", 30, now=at)
        assert (job.id, job.attempt) == (job_id, attempt)
        again = await queue.fail(db, job, "w", f"boom {attempt}", base=1.0, cap=100.0, now=at)
        if attempt == 4:
            assert again is None
            break
        assert again is not None
        delay = (again - at).total_seconds()
        assert 2 ** (attempt - 2) <= delay <= 2 ** (attempt - 1)
        delays.append(delay)
        row = await _job(db, job_id)
        assert (row["state"], row["last_error"]) == ("queued", f"boom {attempt}")
        # Not due a moment before its time, due at it.
        assert await queue.claim(db, ["k"], "w", 30, now=again - timedelta(milliseconds=1)) == []
        at = again
    assert delays == sorted(delays)
    row = await _job(db, job_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("failed", 4, "boom 4")
    assert row["finished_at"] is not None


# -- the worker --------------------------------------------------------------------------


async def test_the_worker_runs_retries_and_gives_up_by_kind(db: Database) -> None:
    seen: list[tuple[str, int]] = []

    async def ok(payload: dict[str, Any], ctx: JobContext) -> None:
        seen.append(("ok", ctx.attempt))

    async def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
        seen.append(("flaky", ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError(f"not yet ({ctx.attempt})")

    async def hopeless(payload: dict[str, Any], ctx: JobContext) -> None:
        seen.append(("hopeless", ctx.attempt))
        raise GiveUp("the repository is gone")

    worker = Worker(
        db, {"ok": ok, "flaky": flaky, "hopeless": hopeless}, owner="w1", options=_options()
    )
    worker.start()
    try:
        ids = {kind: await queue.submit(db, kind) for kind in ("ok", "flaky", "hopeless")}
        unrelated = await queue.submit(db, "nobody-runs-this")

        async def settled() -> bool:
            states = [(await _job(db, i))["state"] for i in ids.values() if i is not None]
            return all(s in ("done", "failed") for s in states)

        await _until(settled)
    finally:
        await worker.stop()
    assert sorted(seen) == [("flaky", 1), ("flaky", 2), ("flaky", 3), ("hopeless", 1), ("ok", 1)]
    flaky_row = await _job(db, ids["flaky"])  # type: ignore[arg-type]
    assert (flaky_row["state"], flaky_row["attempts"]) == ("done", 3)
    assert flaky_row["last_error"] == "RuntimeError: not yet (2)"  # kept from the last failure
    hopeless_row = await _job(db, ids["hopeless"])  # type: ignore[arg-type]
    assert (hopeless_row["state"], hopeless_row["attempts"]) == ("failed", 1)
    assert hopeless_row["last_error"] == "GiveUp: the repository is gone"
    assert (await _job(db, unrelated))["state"] == "queued"  # type: ignore[arg-type]


async def test_a_job_enqueued_by_this_process_wakes_an_idle_worker(db: Database) -> None:
    """The worker sleeps up to a minute between polls here; a local commit wakes it."""
    done = asyncio.Event()

    async def handler(payload: dict[str, Any], ctx: JobContext) -> None:
        done.set()

    worker = Worker(db, {"k": handler}, owner="w", options=_options(poll_seconds=60.0))
    worker.start()
    try:
        await asyncio.sleep(0.5)  # idle long enough for the poll interval to grow
        async with db.write() as s:
            await queue.enqueue(s, "k")
        await asyncio.wait_for(done.wait(), 30)  # well before the 60 s poll
    finally:
        await worker.stop()


async def test_a_worker_that_lost_its_lease_stops_the_handler(db: Database) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(payload: dict[str, Any], ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = Worker(db, {"k": handler}, owner="w", options=_options(lease_seconds=1.0))
    worker.start()
    try:
        job_id = await queue.submit(db, "k")
        await asyncio.wait_for(started.wait(), 30)
        # Another worker took the job over (this one stalled past its lease).
        await _execute(db, "UPDATE job SET lease_owner = 'thief' WHERE id = :id", id=job_id)
        await asyncio.wait_for(cancelled.wait(), 30)
    finally:
        await worker.stop()
    row = await _job(db, job_id)  # type: ignore[arg-type]
    assert (row["state"], row["lease_owner"]) == ("running", "thief")  # left to its holder


async def test_stopping_lets_short_jobs_finish_and_releases_the_others(db: Database) -> None:
    running: set[str] = set()

    async def handler(payload: dict[str, Any], ctx: JobContext) -> None:
        running.add(payload["name"])
        await asyncio.sleep(payload["seconds"])

    worker = Worker(db, {"k": handler}, owner="w", options=_options(stop_seconds=3.0))
    worker.start()
    short = await queue.submit(db, "k", {"name": "short", "seconds": 0.2})
    long = await queue.submit(db, "k", {"name": "long", "seconds": 3600})

    async def both_running() -> bool:
        return running == {"short", "long"}

    await _until(both_running)
    await worker.stop()
    assert (await _job(db, short))["state"] == "done"  # type: ignore[arg-type]
    row = await _job(db, long)  # type: ignore[arg-type]
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 0, None)


async def test_finished_jobs_are_purged_after_the_retention(db: Database) -> None:
    old_done, old_failed, recent, waiting = [await queue.submit(db, "k") for _ in range(4)]
    for job_id, state in ((old_done, "done"), (old_failed, "failed"), (recent, "done")):
        await _execute(
            db,
            "UPDATE job SET state = :state, finished_at = :at WHERE id = :id",
            state=state,
            id=job_id,
            at=utcnow() - (timedelta(days=8) if job_id != recent else timedelta(days=1)),
        )
    assert await queue.purge(db, timedelta(days=7), batch=1) == 2
    async with db.read() as s:
        left = {r[0] for r in await s.all(sql("SELECT id FROM job"))}
    assert left == {recent, waiting}
    assert await queue.counts(db) == {("k", "done"): 1, ("k", "queued"): 1}


# -- periodic tasks ----------------------------------------------------------------------


async def test_a_periodic_task_runs_in_one_of_two_runners_at_a_time(db: Database) -> None:
    """Two runners on connections of their own (two replicas) share one task of 0.05 s
    that runs 0.1 s: its runs never overlap, and each run moves next_run_at past it."""
    active: list[str] = []
    overlaps: list[str] = []
    runs: list[str] = []

    def task(name: str) -> PeriodicTask:
        async def run() -> None:
            if active:
                overlaps.append(name)
            active.append(name)
            runs.append(name)
            await asyncio.sleep(0.1)
            active.remove(name)

        return PeriodicTask("shared", 0.05, run)

    other = Database(db.url)
    runners = [
        PeriodicRunner(d, [task(n)], owner=n, lease_seconds=5, poll_seconds=0.02)
        for d, n in ((db, "a"), (other, "b"))
    ]
    for r in runners:
        r.start()
    try:

        async def enough() -> bool:
            return len(runs) >= 8

        await _until(enough)
    finally:
        for r in runners:
            await r.stop()
        await other.dispose()
    assert overlaps == []
    async with db.read() as s:
        row = await s.one(sql("SELECT last_owner, last_run_at FROM periodic_task"))
    assert row is not None and str(row[0]).split("/")[0] in {"a", "b"}


async def test_a_periodic_task_whose_row_was_taken_over_stops(db: Database) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = PeriodicRunner(
        db, [PeriodicTask("long", 0.01, run)], owner="a", lease_seconds=1, poll_seconds=0.02
    )
    runner.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        await _execute(db, "UPDATE periodic_task SET last_owner = 'b/1' WHERE name = 'long'")
        await asyncio.wait_for(cancelled.wait(), 30)
    finally:
        await runner.stop()


async def test_a_stopped_runner_gives_a_running_task_back(db: Database) -> None:
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.sleep(3600)

    runner = PeriodicRunner(
        db,
        [PeriodicTask("long", 0.01, run)],
        owner="a",
        lease_seconds=600,
        poll_seconds=0.02,
    )
    runner.start()
    await asyncio.wait_for(started.wait(), 30)
    await runner.stop()
    async with db.read() as s:
        due = as_datetime(await s.value(sql("SELECT next_run_at FROM periodic_task")))
    assert due is not None and due <= utcnow()  # not 600 s ahead: another replica may run it
