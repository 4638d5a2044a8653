"""Composition root: settings in, a wired Runtime and an ASGI app out."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cargohold import __version__
from cargohold.db.session import Database
from cargohold.jobs.schedule import Periodic, Scheduler
from cargohold.services.gc import Collector
from cargohold.services.runtime import Runtime
from cargohold.services.tags import TagService
from cargohold.settings import Settings, load_settings
from cargohold.storage.registry import build_driver
from cargohold.web.api.app import make_api
from cargohold.web.context import runtime_of
from cargohold.web.health import health_routes
from cargohold.web.metrics import instrument, metrics_routes
from cargohold.web.oauth import ROUTES as OAUTH_ROUTES
from cargohold.web.oidc import OidcSignIn
from cargohold.web.registry.routes import router

CONFIG_ENV = "CARGOHOLD_CONFIG_FILE"


def build_runtime(settings: Settings) -> Runtime:
    db = Database(
        settings.database.url,
        pool_size=settings.database.pool_size,
        echo=settings.database.echo,
        synchronous=settings.database.sqlite_synchronous,
    )
    return Runtime.build(settings, db, build_driver(settings))


def _scheduler(runtime: Runtime, *, gc: bool | None = None) -> Scheduler:
    """The periodic jobs of a server process (or of `cargohold worker`); garbage collection
    when `gc` (by default: the setting gc.enabled)."""
    reg = runtime.settings.registry
    max_age = timedelta(seconds=reg.upload_max_age_seconds)
    tasks = [
        Periodic(
            "purge-stale-uploads",
            reg.upload_purge_interval_seconds,
            lambda: runtime.uploads.purge_stale(max_age),
        )
    ]
    tasks.append(Periodic("audit-flush", 0.1, runtime.audit.flush))
    expiry = TagService(
        runtime.db,
        runtime.audit,
        time_machine_seconds=runtime.settings.tags.time_machine_seconds,
        content_changed=runtime.cache.invalidate,
    )
    tasks.append(
        Periodic("expire-tags", runtime.settings.tags.expiry_check_seconds, expiry.end_expired)
    )
    audit = runtime.settings.auth.audit
    if audit.retention_days:
        keep = timedelta(days=audit.retention_days)
        tasks.append(
            Periodic(
                "audit-retention",
                audit.retention_check_seconds,
                lambda: runtime.audit.purge(keep),
            )
        )
    tasks.append(Periodic("login-throttle-purge", 3600, runtime.throttle.purge))
    tasks.append(Periodic("web-session-purge", 3600, runtime.sessions.purge))
    if runtime.settings.auth.provider == "ldap":
        interval = runtime.settings.auth.ldap.team_sync_interval_seconds
        tasks.append(Periodic("ldap-team-sync", interval, runtime.teamsync.sync_all))
    if runtime.db.sqlite:
        tasks.append(Periodic("sqlite-checkpoint", 1.0, runtime.db.checkpoint))
    if runtime.settings.gc.enabled if gc is None else gc:
        # Every worker process tries; an flock lets one pass run at a time on the host.
        collector = make_collector(runtime)
        tasks.append(Periodic("gc", runtime.settings.gc.interval_seconds, collector.run_once))
    return Scheduler(tasks)


def make_collector(runtime: Runtime) -> Collector:
    return Collector(runtime.db, runtime.storage, runtime.cache, runtime.settings)


async def run_worker(
    settings: Settings, *, gc_only: bool = False, dry_run: bool | None = None
) -> None:
    """`cargohold worker` (every periodic job, garbage collection included, whatever
    gc.enabled says) or `cargohold gc` (`gc_only`), without serving, until SIGINT or
    SIGTERM."""
    runtime = build_runtime(settings)
    if gc_only:
        collector = make_collector(runtime)
        tasks = [Periodic("gc", settings.gc.interval_seconds, lambda: collector.run_once(dry_run))]
        if runtime.db.sqlite:
            tasks.append(Periodic("sqlite-checkpoint", 1.0, runtime.db.checkpoint))
        scheduler = Scheduler(tasks)
    else:
        scheduler = _scheduler(runtime, gc=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        await scheduler.stop()
        await runtime.close()


async def _home(request: Request) -> Response:
    return PlainTextResponse(f"cargohold {__version__}: OCI registry API at /v2/\n")


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def _jwks(request: Request) -> Response:
    return JSONResponse(await runtime_of(request).tokens.keys.jwks())


def web_routes(settings: Settings) -> list[BaseRoute]:
    """Everything outside /v2 (which the registry router serves)."""
    return [
        Route("/", _home),
        Route("/healthz", _health),
        Route("/.well-known/jwks.json", _jwks),
        *health_routes(),
        *metrics_routes(settings),
        Mount("/api/v1", make_api()),
        Mount("/oauth", routes=OAUTH_ROUTES),
        *OidcSignIn(settings).routes(),
    ]


def make_asgi(settings: Settings) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = build_runtime(settings)
        scheduler = _scheduler(runtime)
        scheduler.start()
        try:
            yield {"runtime": runtime}  # copied into every request's scope["state"]
        finally:
            await scheduler.stop()
            await runtime.close()

    web = Starlette(routes=web_routes(settings), lifespan=lifespan)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # /v2 goes straight to the registry router, which matches full paths itself
        # (repository names contain slashes); everything else, lifespan included, to Starlette.
        if scope["type"] == "http" and scope["path"].startswith("/v2"):
            await router(scope, receive, send)
        else:
            await web(scope, receive, send)

    return instrument(app) if settings.metrics.enabled else app


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates (argon2 in the thread pool, file reads) a
    heap arena of its own, which keeps its memory long after the work is done; a worker
    needs no more than two."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(-8, arenas)  # M_ARENA_MAX


def app_from_environment() -> ASGIApp:
    """Factory for the server's worker processes: settings from the file named in the
    environment (if any) plus CARGOHOLD_* variables."""
    limit_malloc_arenas()
    return make_asgi(load_settings(os.environ.get(CONFIG_ENV) or None))
