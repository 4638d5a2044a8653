"""What a process runs in the background, wired from its Runtime: the job worker (job kinds
and their handlers) and the periodic tasks that run once per deployment (ARCHITECTURE.md,
"Background jobs"). `cargohold worker` runs them, and `cargohold serve` too unless
jobs.run_in_web is false. Work that each process needs for itself (the audit queue's
flush, SQLite checkpoints) stays in the in-process Scheduler (app.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import timedelta

from cargohold.jobs import queue, testing
from cargohold.jobs.periodic import PeriodicRunner, PeriodicTask
from cargohold.jobs.worker import Handler, Worker, WorkerOptions, process_owner
from cargohold.services.gc import Collector
from cargohold.services.runtime import Runtime
from cargohold.services.tags import TagService


class UnknownKinds(ValueError):
    """`--kinds` named something this configuration does not run."""


def periodic_tasks(runtime: Runtime, *, gc: bool = True) -> list[PeriodicTask]:
    """The periodic tasks of the deployment; garbage collection when `gc`."""
    settings = runtime.settings
    reg = settings.registry
    max_age = timedelta(seconds=reg.upload_max_age_seconds)
    expiry = TagService(
        runtime.db,
        runtime.audit,
        time_machine_seconds=settings.tags.time_machine_seconds,
        content_changed=runtime.cache.invalidate,
    )
    tasks = [
        PeriodicTask(
            "purge-stale-uploads",
            reg.upload_purge_interval_seconds,
            lambda: runtime.uploads.purge_stale(max_age),
        ),
        PeriodicTask("expire-tags", settings.tags.expiry_check_seconds, expiry.end_expired),
        PeriodicTask("login-throttle-purge", 3600, runtime.throttle.purge),
        PeriodicTask("web-session-purge", 3600, runtime.sessions.purge),
    ]
    audit = settings.auth.audit
    if audit.retention_days:
        keep = timedelta(days=audit.retention_days)
        tasks.append(
            PeriodicTask(
                "audit-retention", audit.retention_check_seconds, lambda: runtime.audit.purge(keep)
            )
        )
    if settings.auth.provider == "ldap":
        interval = settings.auth.ldap.team_sync_interval_seconds
        tasks.append(PeriodicTask("ldap-team-sync", interval, runtime.teamsync.sync_all))
    aborts = [
        abort
        for driver in runtime.locations.drivers.values()
        if (abort := getattr(driver, "abort_stale", None)) is not None
    ]
    if aborts:  # S3: multipart uploads of dead commits, dead leases
        # Never younger than an hour: a commit of a large blob may still be copying.
        stale = max(max_age, timedelta(hours=1))

        async def abort_stale() -> None:
            for abort in aborts:  # every S3 location
                await abort(stale)

        tasks.append(
            PeriodicTask("storage-abort-stale", reg.upload_purge_interval_seconds, abort_stale)
        )
    retention = timedelta(days=settings.jobs.retention_days)
    tasks.append(PeriodicTask("jobs-purge", 3600, lambda: queue.purge(runtime.db, retention)))
    if gc:
        # Never two passes at once across the deployment: the task's row is leased while
        # it runs (jobs/periodic.py); the collector's flock still keeps a `cargohold gc
        # --once` on the same host from overlapping it.
        collector = Collector(
            runtime.db, runtime.storage, runtime.cache, settings, locations=runtime.locations
        )
        tasks.append(PeriodicTask("gc", settings.gc.interval_seconds, collector.run_once))
    if settings.jobs.test_kinds:
        tasks.extend(testing.periodic_tasks(settings.data_dir))
    return tasks


def job_handlers(runtime: Runtime) -> dict[str, Handler]:
    """Job kinds and their handlers (idempotent, see jobs/queue.py)."""
    handlers: dict[str, Handler] = {}
    if runtime.settings.jobs.test_kinds:
        handlers.update(testing.handlers())
    return handlers


class Background:
    """The job worker and the periodic tasks of one process. `kinds` (job kinds and
    periodic task names) limits them; None runs all, garbage collection when `gc`."""

    def __init__(
        self, runtime: Runtime, kinds: Collection[str] | None = None, *, gc: bool = True
    ) -> None:
        wanted = set(kinds) if kinds is not None else None
        tasks = periodic_tasks(runtime, gc=gc or (wanted is not None and "gc" in wanted))
        handlers = job_handlers(runtime)
        if wanted is not None:
            known = {t.name for t in tasks} | set(handlers)
            unknown = wanted - known
            if unknown:
                raise UnknownKinds(
                    f"unknown job kinds or periodic tasks: {', '.join(sorted(unknown))} "
                    f"(this configuration runs: {', '.join(sorted(known))})"
                )
            tasks = [t for t in tasks if t.name in wanted]
            handlers = {k: h for k, h in handlers.items() if k in wanted}
        jobs = runtime.settings.jobs
        self.owner = process_owner()
        self.worker = Worker(
            runtime.db,
            handlers,
            owner=self.owner,
            options=WorkerOptions(
                concurrency=jobs.concurrency,
                lease_seconds=jobs.lease_seconds,
                poll_seconds=jobs.poll_seconds,
                retry_base_seconds=jobs.retry_base_seconds,
                retry_max_seconds=jobs.retry_max_seconds,
                stop_seconds=jobs.stop_seconds,
            ),
        )
        self.periodic = PeriodicRunner(
            runtime.db,
            tasks,
            owner=self.owner,
            lease_seconds=jobs.lease_seconds,
            poll_seconds=jobs.poll_seconds,
        )

    @property
    def kinds(self) -> list[str]:
        return sorted({t.name for t in self.periodic.tasks} | set(self.worker.handlers))

    def start(self) -> None:
        self.worker.start()
        self.periodic.start()

    async def stop(self) -> None:
        await asyncio.gather(self.worker.stop(), self.periodic.stop())
