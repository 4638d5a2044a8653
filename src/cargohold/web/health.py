"""Health endpoints, outside every authentication (probes and load balancers call them):

- GET /health/instance: this process is up and its event loop answers; touches nothing.
- GET /health/endtoend: every configured dependency answers (services/health.py): 200,
  or 503 naming the failed ones. Each service gets `ok` and `ms`, a failure only the
  word "timeout" or "error": the details (hosts, ports, messages) go to the server log.
  Results are reused for a second, so the endpoint cannot be used to hammer the database."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cargohold.services.health import CachedChecks, dependency_checks
from cargohold.web.context import runtime_of

NO_STORE = {"Cache-Control": "no-store"}


async def instance(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


class EndToEnd:
    def __init__(self) -> None:
        self._checks: CachedChecks | None = None  # built on the first call, per process

    async def endpoint(self, request: Request) -> Response:
        if self._checks is None:
            runtime = runtime_of(request)
            self._checks = CachedChecks(
                dependency_checks(runtime.settings, runtime.db, runtime.locations)
            )
        results = await self._checks.results()
        services: dict[str, dict[str, Any]] = {}
        for r in results:
            services[r.name] = {"ok": r.ok, "ms": round(r.ms, 1)}
            if not r.ok:
                services[r.name]["reason"] = r.reason
        failed = [r.name for r in results if not r.ok]
        body: dict[str, Any] = {"status": "failing" if failed else "ok", "services": services}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=503 if failed else 200, headers=NO_STORE)


def health_routes() -> list[BaseRoute]:
    return [
        Route("/health/instance", instance),
        Route("/health/endtoend", EndToEnd().endpoint),
    ]
