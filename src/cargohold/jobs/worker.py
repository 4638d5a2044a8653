"""The job worker: claims due jobs of its kinds and runs their handlers (jobs/queue.py).

One Worker per process. It runs at most `concurrency` jobs at once; each runs beside a
renewal that extends the job's lease every third of it and cancels the handler when the
lease was lost (another worker took the job after it passed). When idle it looks for due
jobs with a cheap read at growing intervals, up to `poll_seconds`, and at once when this
process commits a job (queue.listen). Stopping (SIGTERM) claims nothing more, lets the
running jobs finish for `stop_seconds`, then cancels them and gives them back."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from cargohold.db.session import Database
from cargohold.jobs import queue

log = logging.getLogger(__name__)

# The first pause after finding nothing; it doubles up to poll_seconds.
MIN_POLL = 0.05


@dataclass(frozen=True)
class JobContext:
    """What a handler knows about the job it runs."""

    id: int
    kind: str
    attempt: int  # from 1; > 1 when an earlier attempt failed or its worker died
    max_attempts: int
    owner: str  # the worker holding the lease


# A handler: async (payload, context) -> None. It must be idempotent: a job whose worker
# died, or stalled past its lease, runs again.
Handler = Callable[[dict[str, Any], JobContext], Coroutine[Any, Any, None]]


class GiveUp(Exception):
    """Raised by a handler when trying again cannot help: the job fails at once."""


def process_owner() -> str:
    """A name for this process's leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    lease_seconds: float = 60.0
    poll_seconds: float = 2.0
    retry_base_seconds: float = 10.0
    retry_max_seconds: float = 3600.0
    stop_seconds: float = 5.0


class Worker:
    def __init__(
        self,
        db: Database,
        handlers: Mapping[str, Handler],
        *,
        owner: str,
        options: WorkerOptions = WorkerOptions(),
    ) -> None:
        self.db = db
        self.handlers = dict(handlers)
        self.owner = owner
        self.options = options
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        # Running jobs: their execution task, and the handler's task inside it.
        self._running: dict[int, asyncio.Task[None]] = {}
        self._handlers: dict[int, asyncio.Task[None]] = {}

    def start(self) -> None:
        if self.handlers and self._loop_task is None:
            queue.listen(self._wake.set)
            self._loop_task = asyncio.create_task(self._loop(), name="job-worker")

    async def stop(self) -> None:
        """Claim nothing more; let running jobs finish for stop_seconds, then cancel and
        release them."""
        self._stopping = True
        self._wake.set()
        queue.unlisten(self._wake.set)
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        running = set(self._running.values())
        if running:
            log.info(
                "waiting up to %ss for %d running jobs", self.options.stop_seconds, len(running)
            )
            _, pending = await asyncio.wait(running, timeout=self.options.stop_seconds)
            if pending:
                for handler in self._handlers.values():
                    handler.cancel()
                await asyncio.wait(pending)

    # -- claiming ------------------------------------------------------------------------

    async def _loop(self) -> None:
        idle = MIN_POLL
        while not self._stopping:
            self._wake.clear()
            free = self.options.concurrency - len(self._running)
            claimed: list[queue.Job] = []
            if free > 0:
                try:
                    if await queue.any_due(self.db, self.handlers):
                        claimed = await queue.claim(
                            self.db,
                            self.handlers,
                            self.owner,
                            self.options.lease_seconds,
                            limit=free,
                        )
                except Exception:
                    log.exception("claiming jobs failed; trying again")
            if self._stopping:  # stop() came during the claim: give them back at once
                for job in claimed:
                    with suppress(Exception):
                        await queue.release(self.db, job.id, self.owner)
                return
            for job in claimed:
                self._running[job.id] = asyncio.create_task(
                    self._execute(job), name=f"job-{job.id}"
                )
            if claimed:
                idle = MIN_POLL
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), idle)
                idle = MIN_POLL
            except TimeoutError:
                idle = min(idle * 2, self.options.poll_seconds)

    # -- running one job -----------------------------------------------------------------

    async def _execute(self, job: queue.Job) -> None:
        context = JobContext(job.id, job.kind, job.attempt, job.max_attempts, self.owner)
        work = asyncio.create_task(self.handlers[job.kind](job.payload, context))
        self._handlers[job.id] = work
        try:
            lost = await self._hold_lease(job, work)
            await self._settle(job, work, lost)
        except Exception:
            # The database failed us: the lease runs out, and another worker runs the job.
            log.exception("job %s (%s): recording its outcome failed", job.id, job.kind)
        finally:
            del self._handlers[job.id]
            del self._running[job.id]
            self._wake.set()  # a free slot

    async def _hold_lease(self, job: queue.Job, work: asyncio.Task[None]) -> bool:
        """Renew the lease until the handler ends; True when the lease was lost (the
        handler is then cancelled)."""
        every = self.options.lease_seconds / 3
        while True:
            done, _ = await asyncio.wait({work}, timeout=every)
            if done:
                return False
            try:
                ours = await queue.renew(self.db, job.id, self.owner, self.options.lease_seconds)
            except Exception:
                log.exception("job %s: renewing the lease failed; trying again", job.id)
                continue
            if not ours:
                log.warning(
                    "job %s (%s): lease lost to another worker; stopping it", job.id, job.kind
                )
                work.cancel()
                with suppress(asyncio.CancelledError):
                    await work
                return True

    async def _settle(self, job: queue.Job, work: asyncio.Task[None], lost: bool) -> None:
        if lost:
            return
        if work.cancelled():
            # Only stop() cancels a handler whose lease we hold.
            await queue.release(self.db, job.id, self.owner)
            log.info("job %s (%s): released unfinished", job.id, job.kind)
            return
        exc = work.exception()
        if exc is None:
            if not await queue.complete(self.db, job.id, self.owner):
                log.warning("job %s (%s): finished after its lease was lost", job.id, job.kind)
            return
        text = queue.error_text(exc)
        again = await queue.fail(
            self.db,
            job,
            self.owner,
            text,
            base=self.options.retry_base_seconds,
            cap=self.options.retry_max_seconds,
            final=isinstance(exc, GiveUp),
        )
        if again is None:
            log.error(
                "job %s (%s) failed for good after attempt %d: %s",
                job.id,
                job.kind,
                job.attempt,
                text,
                exc_info=exc,
            )
        else:
            log.warning(
                "job %s (%s) attempt %d failed (%s); again at %s",
                job.id,
                job.kind,
                job.attempt,
                text,
                again.isoformat(),
            )
