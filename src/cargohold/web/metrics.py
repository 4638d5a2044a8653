"""Prometheus metrics: a pure ASGI middleware that counts every request, and GET /metrics.

The middleware sits on the hot path (manifest GETs at ~10k requests a second), so per
request it only adds a few numbers into plain lists kept by this process, keyed by
(route template, method, status class): no lock, no label lookup, no file write. The
route template comes from the route the routers matched (`scope["route"]`, which
Starlette sets and the /v2 router sets too), never from the raw path, so repository
names and digests do not multiply the series. Once a second (a timer on each worker's
event loop) and before every scrape, the sums move into prometheus_client's metrics.

`cargohold serve` runs several worker processes: it points PROMETHEUS_MULTIPROC_DIR at a
folder of its own (web/metrics_files.py), where prometheus_client keeps each worker's
figures in a memory-mapped file, and a scrape of any worker adds them all up. Without
that variable (the app run by another server, tests in process) each process reports
its own figures.

Access (`metrics.enabled`, `metrics.token`): with a token, only requests that carry it as
a bearer token; without one, only requests from a loopback address that came through no
proxy (no Forwarded or X-Forwarded-For header), since a proxy on the same host makes
every request look local."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cargohold import __version__
from cargohold.jobs import queue
from cargohold.services.gc_figures import GcFigures, read_gc_figures
from cargohold.services.runtime import Runtime
from cargohold.settings import Settings
from cargohold.web.context import runtime_of
from cargohold.web.metrics_files import ENV, alive
from cargohold.web.registry.router import Route as RegistryRoute

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
GC_CACHE_SECONDS = 5.0
JOBS_CACHE_SECONDS = 5.0
JOB_STATES = (queue.QUEUED, queue.RUNNING, queue.DONE, queue.FAILED)
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    float("inf"),
)
N_BUCKETS = len(BUCKETS)
SUM, BYTES_IN, BYTES_OUT = N_BUCKETS, N_BUCKETS + 1, N_BUCKETS + 2
ZEROS = (0.0,) * (N_BUCKETS + 3)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # request bytes are counted for these

# What a route is, beyond its label: the counters some routes feed.
PLAIN, UPLOAD_START, UPLOAD_SESSION, REGISTRY_TOKEN, OAUTH_TOKEN = range(5)


@dataclass(frozen=True, slots=True)
class RouteInfo:
    label: str  # the route's template: /v2/{name}/manifests/{reference}
    kind: int
    surface: str  # registry, api or web: the label of auth failures


UNMATCHED = RouteInfo("unmatched", PLAIN, "web")


class _Route:
    """A route seen by this process: its labels, and its sums by method, then status."""

    __slots__ = ("info", "series")

    def __init__(self, info: RouteInfo) -> None:
        self.info = info
        self.series: dict[str, dict[int, list[float]]] = {}


def registry_template(pattern: str) -> str:
    """`/v2/(?P<name>[^?#]+?)/blobs/uploads/?` -> `/v2/{name}/blobs/uploads/`."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).replace("/?", "/")


def route_info(route: Any, scope: Scope) -> RouteInfo:
    """What labels a request that `route` served (None: no route matched)."""
    if route is None:
        return UNMATCHED
    if isinstance(route, RegistryRoute):
        label = registry_template(route.pattern.pattern)
        kind = PLAIN
        if label.endswith("/blobs/uploads/"):
            kind = UPLOAD_START
        elif label.endswith("/blobs/uploads/{upload}"):
            kind = UPLOAD_SESSION
        elif label == "/v2/auth":
            kind = REGISTRY_TOKEN
        return RouteInfo(label, kind, "registry")
    if isinstance(route, Mount):  # nothing matched inside a mounted app
        return RouteInfo(f"{route.path}/*", PLAIN, "api" if route.path == "/api/v1" else "web")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    label = str(scope.get("root_path", "")) + template
    kind = OAUTH_TOKEN if label == "/oauth/access_token" else PLAIN
    return RouteInfo(label, kind, "api" if label.startswith("/api/") else "web")


def _content_length(headers: Iterable[tuple[bytes, bytes]] | None) -> int:
    for name, value in headers or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _multiprocess() -> bool:
    """prometheus_client picked its memory-mapped storage (the variable was set before it
    was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False)) and ENV in os.environ


class Recorder:
    """This process's figures: plain sums on the hot path, moved into prometheus_client's
    metrics by `flush`. Everything runs on the event loop's thread."""

    def __init__(self) -> None:
        self.multiprocess = _multiprocess()
        # In no registry: a scrape builds its own (in multi-process mode from the files).
        reg = None
        labels = ("route", "method", "status")
        self.duration = Histogram(
            "cargohold_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            labels,
            buckets=BUCKETS,
            registry=reg,
        )
        self.bytes_in = Counter(
            "cargohold_http_request_bytes", "Request body bytes received.", labels, registry=reg
        )
        self.bytes_out = Counter(
            "cargohold_http_response_bytes", "Response body bytes sent.", labels, registry=reg
        )
        self.in_flight = Gauge(
            "cargohold_http_requests_in_flight",
            "Requests being served (sampled every second and at each scrape).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.uploads = Counter(
            "cargohold_uploads",
            "Blob uploads by outcome: started, finished, failed.",
            ("outcome",),
            registry=reg,
        )
        self.upload_bytes = Counter(
            "cargohold_upload_bytes", "Bytes received by blob uploads.", registry=reg
        )
        self.tokens = Counter(
            "cargohold_tokens_issued",
            "Tokens issued: registry (/v2/auth) and oauth (/oauth/access_token).",
            ("kind",),
            registry=reg,
        )
        self.auth_failures = Counter(
            "cargohold_auth_failures",
            "401 answers to requests that carried credentials, by surface.",
            ("surface",),
            registry=reg,
        )
        self.cache_lookups = Counter(
            "cargohold_metadata_cache_lookups",
            "In-memory metadata cache lookups by cache and result (hit, miss).",
            ("cache", "result"),
            registry=reg,
        )
        self.pool = Gauge(
            "cargohold_db_pool_connections",
            "PostgreSQL connection pools: connections checked out, and the pools' size.",
            ("pool", "state"),
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.metrics: tuple[Collector, ...] = (
            self.duration,
            self.bytes_in,
            self.bytes_out,
            self.in_flight,
            self.uploads,
            self.upload_bytes,
            self.tokens,
            self.auth_failures,
            self.cache_lookups,
            self.pool,
        )
        # The hot path's sums by (route label, method, status class), moved by flush().
        self.sums: dict[tuple[str, str, int], list[float]] = {}
        self.routes: dict[int, _Route] = {}
        self.requests_in_flight = 0
        self.upload_counts = {"started": 0, "finished": 0, "failed": 0}
        self.upload_byte_count = 0
        self.token_counts = {"registry": 0, "oauth": 0}
        self.auth_failure_counts = {"registry": 0, "api": 0, "web": 0}
        self.runtime: Runtime | None = None
        self._cache_seen: dict[tuple[str, str], int] = {}
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._gc: tuple[float, GcFigures] | None = None
        self._jobs: tuple[float, dict[tuple[str, str], int]] | None = None

    # -- the hot path ----------------------------------------------------------------------

    def record(self, scope: Scope, status: int, elapsed: float, received: int, sent: int) -> None:
        route = self.routes.get(id(scope.get("route")))
        if route is None:
            route = self._learn(scope)
        method = scope["method"]
        try:
            sums = route.series[method][status]
        except KeyError:
            sums = self._series(route, method, status)
        sums[bisect_left(BUCKETS, elapsed)] += 1
        sums[SUM] += elapsed
        sums[BYTES_IN] += received
        sums[BYTES_OUT] += sent
        info = route.info
        if info.kind:
            self._special(info.kind, method, status, received)
        if status == 401 and (info.kind == REGISTRY_TOKEN or _carried_credentials(scope)):
            self.auth_failure_counts[info.surface] += 1

    def _learn(self, scope: Scope) -> _Route:
        route = scope.get("route")
        learned = self.routes[id(route)] = _Route(route_info(route, scope))
        return learned

    def _series(self, route: _Route, method: str, status: int) -> list[float]:
        """The sums of (route, method, status class), shared by every status of the class;
        remembered under the request's own method only when it is a known one, so odd
        methods cannot grow the table."""
        known = method in METHODS
        status_class = status // 100 if 0 < status < 600 else 0
        key = (route.info.label, method if known else "OTHER", status_class)
        sums = self.sums.get(key)
        if sums is None:
            sums = self.sums[key] = [0.0] * (N_BUCKETS + 3)
        if known:
            route.series.setdefault(method, {})[status] = sums
        return sums

    def _special(self, kind: int, method: str, status: int, received: int) -> None:
        counts = self.upload_counts
        if kind == UPLOAD_START and method == "POST":
            self.upload_byte_count += received
            if status == 202:  # a session
                counts["started"] += 1
            elif status == 201 and received:  # a monolithic upload (201 without: a mount)
                counts["started"] += 1
                counts["finished"] += 1
            elif status >= 400 and status != 401:
                counts["failed"] += 1
        elif kind == UPLOAD_SESSION and method in ("PATCH", "PUT"):
            self.upload_byte_count += received
            if status == 201 and method == "PUT":
                counts["finished"] += 1
            elif status >= 400 and status != 401:
                counts["failed"] += 1
        elif kind == REGISTRY_TOKEN and status == 200:
            self.token_counts["registry"] += 1
        elif kind == OAUTH_TOKEN and status == 200:
            self.token_counts["oauth"] += 1

    # -- moving the sums into prometheus_client --------------------------------------------

    def flush(self) -> None:
        for key, sums in self.sums.items():
            if not any(sums):
                continue
            children = self._children.get(key)
            if children is None:
                label, method, status_class = key
                names = (label, method, STATUS_CLASSES[status_class])
                children = self._children[key] = (
                    self.duration.labels(*names),
                    self.bytes_in.labels(*names),
                    self.bytes_out.labels(*names),
                )
            histogram, bytes_in, bytes_out = children
            # Histogram.observe takes one value at a time; its per-bucket values (not
            # cumulative: the exposition adds them up) take the sums of a second at once.
            for i in range(N_BUCKETS):
                if sums[i]:
                    histogram._buckets[i].inc(sums[i])
            histogram._sum.inc(sums[SUM])
            if sums[BYTES_IN]:
                bytes_in.inc(sums[BYTES_IN])
            if sums[BYTES_OUT]:
                bytes_out.inc(sums[BYTES_OUT])
            sums[:] = ZEROS  # in place: the routes' tables hold these lists
        self.in_flight.set(self.requests_in_flight)
        self._move(self.upload_counts, self.uploads)
        if self.upload_byte_count:
            self.upload_bytes.inc(self.upload_byte_count)
            self.upload_byte_count = 0
        self._move(self.token_counts, self.tokens)
        self._move(self.auth_failure_counts, self.auth_failures)
        if self.runtime is not None:
            self._runtime_figures(self.runtime)

    @staticmethod
    def _move(counts: dict[str, int], counter: Counter) -> None:
        for name, n in counts.items():
            if n:
                counter.labels(name).inc(n)
                counts[name] = 0

    def _runtime_figures(self, runtime: Runtime) -> None:
        cache = runtime.cache
        for result, table in (("hit", cache.hits), ("miss", cache.misses)):
            for name, total in table.items():
                seen = self._cache_seen.get((name, result), 0)
                if total != seen:
                    self.cache_lookups.labels(name, result).inc(max(total - seen, 0))
                    self._cache_seen[(name, result)] = total
        for pool, (checked_out, size) in runtime.db.pool_use().items():
            self.pool.labels(pool, "checked_out").set(checked_out)
            self.pool.labels(pool, "size").set(size)

    # -- the worker's lifetime -------------------------------------------------------------

    def started(self, runtime: Runtime | None) -> None:
        self.runtime = runtime
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)

    def _tick(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("moving the metrics failed")
        self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)

    def stopped(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.requests_in_flight = 0
        try:
            self.flush()
        except Exception:
            log.exception("moving the metrics failed")

    # -- the scrape ------------------------------------------------------------------------

    async def gc_figures(self, runtime: Runtime) -> GcFigures | None:
        cached = self._gc
        if cached is not None and time.monotonic() - cached[0] < GC_CACHE_SECONDS:
            return cached[1]
        try:
            figures = await read_gc_figures(runtime.db)
        except Exception:
            log.exception("reading gc_run for the metrics failed")
            return None
        self._gc = (time.monotonic(), figures)
        return figures

    async def job_counts(self, runtime: Runtime) -> dict[tuple[str, str], int] | None:
        """The job table by (kind, state), read at most every JOBS_CACHE_SECONDS."""
        cached = self._jobs
        if cached is not None and time.monotonic() - cached[0] < JOBS_CACHE_SECONDS:
            return cached[1]
        try:
            counts = await queue.counts(runtime.db)
        except Exception:
            log.exception("reading the job queue for the metrics failed")
            return None
        self._jobs = (time.monotonic(), counts)
        return counts

    def exposition(
        self, gc: GcFigures | None, jobs: dict[tuple[str, str], int] | None = None
    ) -> bytes:
        """The text format; reads every worker's files in multi-process mode (call it in a
        thread)."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess:
            path = os.environ[ENV]
            _forget_dead_workers(path)
            multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        else:
            for metric in self.metrics:
                registry.register(metric)
        registry.register(_Figures(gc, jobs))
        return generate_latest(registry)


def _carried_credentials(scope: Scope) -> bool:
    return any(name in (b"authorization", b"cookie") for name, _ in scope["headers"])


def _forget_dead_workers(path: str) -> None:
    """A worker that died (or was replaced) leaves its gauges behind: drop them. Its
    counters stay, as they should: what it counted happened."""
    for entry in Path(path).glob("gauge_live*_*.db"):
        pid = entry.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)  # type: ignore[no-untyped-call]


class _Figures(Collector):
    """What is read at scrape time rather than counted: the garbage collector's figures
    and the job queue (from the database, the same for every worker) and the version."""

    def __init__(
        self, gc: GcFigures | None, jobs: dict[tuple[str, str], int] | None = None
    ) -> None:
        self.gc = gc
        self.jobs = jobs

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily(
            "cargohold_build_info", "The running version.", labels=("version",)
        )
        info.add_metric((__version__,), 1)
        yield info
        if self.jobs is not None:
            yield _job_family(self.jobs)
        gc = self.gc
        if gc is None:
            return
        deleted = GaugeMetricFamily(
            "cargohold_gc_last_pass_deleted",
            "Objects deleted by the last finished garbage collection pass, by kind.",
            labels=("kind",),
        )
        for kind, n in gc.deleted.items():
            deleted.add_metric((kind,), n)
        yield deleted
        yield GaugeMetricFamily(
            "cargohold_gc_backlog",
            "Collectable objects the last pass left for the next ones.",
            value=gc.backlog,
        )
        yield GaugeMetricFamily(
            "cargohold_gc_last_pass_failed",
            "1 when the last pass ended with an error.",
            value=int(gc.failed),
        )
        if gc.finished_at is not None:
            yield GaugeMetricFamily(
                "cargohold_gc_last_pass_timestamp_seconds",
                "When the last pass finished (UNIX time).",
                value=gc.finished_at,
            )
        yield GaugeMetricFamily(
            "cargohold_gc_freed_bytes",
            "Bytes freed by the passes gc_run still records (not a counter: old passes "
            "leave the table).",
            value=gc.freed_bytes,
        )


def _job_family(counts: dict[tuple[str, str], int]) -> GaugeMetricFamily:
    """Every state of each kind the table holds, 0 included, so a drained queue reads 0
    rather than vanishing."""
    family = GaugeMetricFamily(
        "cargohold_jobs",
        "Jobs in the durable queue by kind and state (queued: the queue depth).",
        labels=("kind", "state"),
    )
    for kind in sorted({k for k, _ in counts}):
        others = sorted({s for k, s in counts if k == kind} - set(JOB_STATES))
        for state in (*JOB_STATES, *others):
            family.add_metric((kind, state), counts.get((kind, state), 0))
    return family


_RECORDER: Recorder | None = None


def recorder() -> Recorder:
    """This process's recorder (prometheus_client's metrics are per process too)."""
    global _RECORDER
    if _RECORDER is None:
        _RECORDER = Recorder()
    return _RECORDER


class _CountingReceive:
    __slots__ = ("receive", "received")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.received = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        body = message.get("body")
        if body:
            self.received += len(body)
        return message


def instrument(app: ASGIApp, rec: Recorder | None = None) -> ASGIApp:
    """`app` with every HTTP request timed and counted (a pure ASGI middleware, written
    as a closure: cheaper to call than an object). It starts the flush timer when the
    application has started (lifespan) and flushes a last time when it stops."""
    rec = rec or recorder()

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        async def watching_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                state = scope.get("state") or {}
                rec.started(state.get("runtime"))
            elif message["type"] == "lifespan.shutdown.complete":
                rec.stopped()
            await send(message)

        await app(scope, receive, watching_send)

    async def metered(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(scope, receive, send)
            else:
                await app(scope, receive, send)
            return
        status = 0
        sent = 0
        start_headers: Any = None

        def counting_send(message: Message) -> Awaitable[None]:
            # Not a coroutine: it hands back the server's awaitable, one frame less.
            nonlocal status, sent, start_headers
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    sent += len(body)
            elif kind == "http.response.start":
                status = message["status"]
                start_headers = message.get("headers")
            elif kind == "http.response.pathsend":
                sent += _content_length(start_headers)
            return send(message)

        # Request bytes are counted where requests carry them (not on GET and HEAD).
        counted = _CountingReceive(receive) if scope["method"] in WITH_BODY else None
        rec.requests_in_flight += 1
        start = perf_counter()
        try:
            await app(scope, counted or receive, counting_send)
        except BaseException:
            if status == 0:
                status = 500
            raise
        finally:
            rec.requests_in_flight -= 1
            received = counted.received if counted else 0
            rec.record(scope, status, perf_counter() - start, received, sent)

    return metered


# -- GET /metrics ------------------------------------------------------------------------

FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def _loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def access_denied(
    client_host: str | None, headers: Iterable[tuple[bytes, bytes]], token: str
) -> int | None:
    """None when the scrape may go on, else the status to refuse it with: 401 when a token
    is configured and the request does not carry it, 403 when no token is configured and
    the request did not come from loopback directly."""
    headers = list(headers)
    if token:
        expected = b"bearer " + token.encode()
        for name, value in headers:
            if name == b"authorization" and hmac.compare_digest(
                value[:7].lower() + value[7:].strip(), expected
            ):
                return None
        return 401
    if not _loopback(client_host):
        return 403
    if any(name in FORWARDED for name, _ in headers):
        return 403
    return None


class MetricsEndpoint:
    def __init__(self, settings: Settings) -> None:
        self.token = settings.metrics.token.get_secret_value()

    async def endpoint(self, request: Request) -> Response:
        client = request.scope.get("client")
        denied = access_denied(client[0] if client else None, request.scope["headers"], self.token)
        if denied == 401:
            return PlainTextResponse(
                "a bearer token is required\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        if denied is not None:
            return PlainTextResponse(
                "metrics are served to loopback only (set metrics.token)\n", status_code=403
            )
        rec = recorder()
        rec.flush()  # this worker's latest figures; the others' are at most a second old
        runtime = runtime_of(request)
        gc = await rec.gc_figures(runtime)
        jobs = await rec.job_counts(runtime)
        body = await anyio.to_thread.run_sync(rec.exposition, gc, jobs)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def metrics_routes(settings: Settings) -> list[BaseRoute]:
    """GET /metrics, when metrics.enabled."""
    if not settings.metrics.enabled:
        return []
    return [Route("/metrics", MetricsEndpoint(settings).endpoint)]
