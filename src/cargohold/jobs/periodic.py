"""Periodic tasks that run once across all replicas (ARCHITECTURE.md, "Background jobs").

Each task has a `periodic_task` row whose `next_run_at` says when it is due. Every process
that runs the task reads the rows (one small SELECT per tick) and, when its task is due,
tries to take it with a conditional update:

    UPDATE periodic_task SET next_run_at = :now + lease, last_owner = :token, ...
    WHERE name = :name AND next_run_at <= :now

One replica's update changes the row; the others change nothing (PostgreSQL: a concurrent
update waits for the row lock, then re-checks its WHERE against the new row; SQLite: one
writer at a time). That replica runs the task itself, in its process. While the task
runs, it keeps `next_run_at` a lease ahead (renewed every third of the lease, conditional
on `last_owner` still being its token), so no other replica starts it meanwhile: a task
never runs twice at once, which the garbage collector relies on. When the task ends,
`next_run_at` becomes the end plus the interval: the interval is the pause between runs.
A replica that dies mid-run stops renewing; a lease later the row is due again and another
replica runs the task. A replica whose renewal finds the row taken (it stalled past the
lease) cancels its run. A stopping replica cancels its running tasks (idempotent, and
made to survive a crash: a cut is harmless) and gives their rows back, due at once.

Why run the task directly rather than enqueue a job per firing: tag expiry runs every
second, and a job row per firing would cost two more write transactions and a row to
purge each time; a failed run needs no retry of its own (the next period is one); and the
row's lease serializes the runs without a second mechanism."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import count

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import Sql, sql
from cargohold.db.values import as_datetime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodicTask:
    name: str  # the row's name, also what `cargohold worker --kinds` selects
    interval: float  # seconds between the end of one run and the start of the next
    run: Callable[[], Awaitable[object]]  # idempotent


ROWS = sql("SELECT name, next_run_at FROM periodic_task")
# The first run comes one interval after the task first appears.
ENSURE = sql(
    "INSERT INTO periodic_task (name, next_run_at) VALUES (:name, :first) ON CONFLICT DO NOTHING"
)
# A shortened interval takes effect at once (a running task's lease is never shortened).
CAP = sql("UPDATE periodic_task SET next_run_at = :cap WHERE name = :name AND next_run_at > :cap")
TAKE = sql(
    """UPDATE periodic_task SET next_run_at = :until, last_run_at = :now, last_owner = :token
       WHERE name = :name AND next_run_at <= :now"""
)
# Renew the lease, set the next run, or give the row back: only while it is still ours.
SET_NEXT = sql(
    "UPDATE periodic_task SET next_run_at = :next WHERE name = :name AND last_owner = :token"
)


class PeriodicRunner:
    def __init__(
        self,
        db: Database,
        tasks: Sequence[PeriodicTask],
        *,
        owner: str,
        lease_seconds: float = 60.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self.db = db
        self.tasks = list(tasks)
        self.owner = owner
        self.lease = lease_seconds
        self.poll = poll_seconds
        self._seq = count(1)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._work: dict[str, asyncio.Future[object]] = {}

    def start(self) -> None:
        if self.tasks and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="periodic-tasks")

    async def stop(self) -> None:
        """Start nothing more; cancel the running tasks (they are idempotent and survive
        a crash, so a cut is harmless) and give their rows back, due at once."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        running = set(self._running.values())
        for work in self._work.values():
            work.cancel()
        if running:
            await asyncio.wait(running)

    async def _write(self, statement: Sql, **params: object) -> int:
        async def work(session: DbSession) -> int:
            return await session.run(statement, **params)

        return await run_write(self.db, work)

    async def _register(self) -> None:
        now = utcnow()

        async def work(session: DbSession) -> None:
            for task in self.tasks:
                first = now + timedelta(seconds=task.interval)
                cap = now + timedelta(seconds=max(task.interval, self.lease))
                await session.run(ENSURE, name=task.name, first=first)
                await session.run(CAP, name=task.name, cap=cap)

        await run_write(self.db, work)

    async def _due_times(self) -> dict[str, datetime]:
        async with self.db.read() as session:
            rows = await session.all(ROWS)
        out: dict[str, datetime] = {}
        for name, next_run_at in rows:
            when = as_datetime(next_run_at)
            if when is not None:
                out[str(name)] = when
        return out

    async def _loop(self) -> None:
        registered = False
        while not self._stopping:
            self._wake.clear()
            pause = self.poll
            try:
                if not registered:
                    await self._register()
                    registered = True
                due = await self._due_times()
                for task in self.tasks:
                    if task.name in self._running or self._stopping:
                        continue
                    now = utcnow()
                    when = due.get(task.name)
                    if when is None:
                        registered = False  # the row went: make it again
                    elif when <= now:
                        await self._fire(task, now)
                    else:
                        pause = min(pause, (when - now).total_seconds())
            except Exception:
                log.exception("periodic tasks: reading or taking a due task failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(pause, 0.01))

    async def _fire(self, task: PeriodicTask, now: datetime) -> None:
        token = f"{self.owner}/{next(self._seq)}"
        until = now + timedelta(seconds=self.lease)
        taken = await self._write(TAKE, name=task.name, until=until, now=now, token=token)
        if taken == 1:
            self._running[task.name] = asyncio.create_task(
                self._run(task, token), name=f"periodic-{task.name}"
            )

    async def _run(self, task: PeriodicTask, token: str) -> None:
        work = asyncio.ensure_future(task.run())
        self._work[task.name] = work
        try:
            if await self._hold(task, token, work):
                return  # another replica runs it now
            if work.cancelled():  # stopping: due again at once, for another replica
                await self._write(SET_NEXT, name=task.name, token=token, next=utcnow())
                return
            exc = work.exception()
            if exc is not None:
                log.error(
                    "periodic task %s failed; it runs again in %ss",
                    task.name,
                    task.interval,
                    exc_info=exc,
                )
            nxt = utcnow() + timedelta(seconds=task.interval)
            await self._write(SET_NEXT, name=task.name, token=token, next=nxt)
        except Exception:
            log.exception("periodic task %s: recording its run failed", task.name)
        finally:
            del self._work[task.name]
            del self._running[task.name]
            self._wake.set()

    async def _hold(self, task: PeriodicTask, token: str, work: asyncio.Future[object]) -> bool:
        """Keep the row leased until the task ends; True when the lease was lost (the
        task is then cancelled)."""
        while True:
            done, _ = await asyncio.wait({work}, timeout=self.lease / 3)
            if done:
                return False
            until = utcnow() + timedelta(seconds=self.lease)
            try:
                ours = await self._write(SET_NEXT, name=task.name, token=token, next=until)
            except Exception:
                log.exception("periodic task %s: renewing its lease failed", task.name)
                continue
            if ours != 1:
                log.warning("periodic task %s: lease lost to another replica; stopping", task.name)
                work.cancel()
                with suppress(asyncio.CancelledError):
                    await work
                return True
