"""Composition root: settings in, a wired Runtime and an ASGI app out."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cargohold import __version__
from cargohold.db.session import Database
from cargohold.jobs.background import Background
from cargohold.jobs.schedule import Periodic, Scheduler
from cargohold.services.gc import Collector
from cargohold.services.runtime import Runtime
from cargohold.settings import Settings, load_settings
from cargohold.storage.registry import build_locations
from cargohold.web.api.app import make_api
from cargohold.web.context import runtime_of
from cargohold.web.health import health_routes
from cargohold.web.metrics import instrument, metrics_routes
from cargohold.web.oauth import ROUTES as OAUTH_ROUTES
from cargohold.web.oidc import OidcSignIn
from cargohold.web.registry.routes import router

CONFIG_ENV = "CARGOHOLD_CONFIG_FILE"
log = logging.getLogger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    db = Database(
        settings.database.url,
        pool_size=settings.database.pool_size,
        echo=settings.database.echo,
        synchronous=settings.database.sqlite_synchronous,
    )
    return Runtime.build(settings, db, build_locations(settings))


def _scheduler(runtime: Runtime) -> Scheduler:
    """What each process does for itself, on its own clock. The deployment's periodic
    tasks (purges, tag expiry, garbage collection...) run once across all processes and
    replicas: jobs/background.py."""
    tasks = [Periodic("audit-flush", 0.1, runtime.audit.flush)]
    if runtime.db.sqlite:
        tasks.append(Periodic("sqlite-checkpoint", 1.0, runtime.db.checkpoint))
    return Scheduler(tasks)


def make_collector(runtime: Runtime) -> Collector:
    return Collector(
        runtime.db,
        runtime.storage,
        runtime.cache,
        runtime.settings,
        locations=runtime.locations,
    )


async def run_worker(
    settings: Settings,
    *,
    kinds: Collection[str] | None = None,
    gc_only: bool = False,
    dry_run: bool | None = None,
) -> None:
    """`cargohold worker` (the job worker and the periodic tasks, garbage collection
    included whatever gc.enabled says; `kinds` limits them) or `cargohold gc` (`gc_only`),
    without serving, until SIGINT or SIGTERM. Raises UnknownKinds."""
    runtime = build_runtime(settings)
    background: Background | None = None
    try:
        if gc_only and dry_run:
            # Passes that delete nothing, on this process's own clock: nothing to share.
            collector = make_collector(runtime)
            scheduler = Scheduler(
                [
                    Periodic("gc", settings.gc.interval_seconds, lambda: collector.run_once(True)),
                    *_scheduler(runtime).tasks,
                ]
            )
        else:
            scheduler = _scheduler(runtime)
            background = Background(runtime, {"gc"} if gc_only else kinds, gc=True)
    except BaseException:
        await runtime.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime.start()
    scheduler.start()
    if background is not None:
        background.start()
        log.info("background work %s runs: %s", background.owner, ", ".join(background.kinds))
    try:
        await stop.wait()
    finally:
        if background is not None:
            await background.stop()
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
        runtime.start()
        scheduler = _scheduler(runtime)
        scheduler.start()
        jobs = settings.jobs.run_in_web
        background = Background(runtime, gc=settings.gc.enabled) if jobs else None
        if background is not None:
            background.start()
        try:
            yield {"runtime": runtime}  # copied into every request's scope["state"]
        finally:
            if background is not None:
                await background.stop()
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

    served: ASGIApp = instrument(app) if settings.metrics.enabled else app
    if settings.server.trusted_proxies:
        # Behind a load balancer: the client's address and scheme from X-Forwarded-For and
        # X-Forwarded-Proto, believed only from these peers (throttling, audit, realm).
        from granian.utils.proxies import wrap_asgi_with_proxy_headers

        served = wrap_asgi_with_proxy_headers(served, list(settings.server.trusted_proxies))
    return served


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
