"""A small router for /v2: repository names contain slashes, so routes are regular
expressions matched in order. Every route names the action it needs, and the router
authorizes it before the handler runs: no handler can forget to."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cargohold.auth.access import ANONYMOUS, Action, Principal
from cargohold.domain.errors import RegistryError, Unauthorized
from cargohold.domain.names import RepositoryName, check_creatable, parse_repository
from cargohold.services.runtime import Runtime
from cargohold.web.context import origin_of, runtime_of
from cargohold.web.registry.auth import authenticate, challenge
from cargohold.web.registry.drain import TrackedReceive, drain
from cargohold.web.registry.errors import error_response, to_response

log = logging.getLogger(__name__)

API_VERSION_RAW = (b"docker-distribution-api-version", b"registry/2.0")


@dataclass
class Call:
    """What a handler gets: the request, its matched parts, and the wired services."""

    request: Request
    runtime: Runtime
    principal: Principal
    params: dict[str, str]
    repository: RepositoryName | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> RepositoryName:
        assert self.repository is not None
        return self.repository


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    action: Action | None  # None: no authorization needed (the API version check)
    handler: Handler
    marker: str  # a literal every matching path contains: a cheap test before the regex


def route(
    methods: str, pattern: str, action: Action | None, handler: Handler, marker: str = ""
) -> Route:
    return Route(frozenset(methods.split(",")), re.compile(pattern), action, handler, marker)


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        path_matched = False
        for r in self.routes:
            if r.marker not in path:
                continue
            m = r.pattern.fullmatch(path)
            if m is None:
                continue
            path_matched = True
            if method in r.methods:
                return r, m.groupdict(), True
        return None, {}, path_matched

    def allowed_methods(self, path: str) -> str:
        """The methods some route serves at `path`, for the Allow header of a 405."""
        methods = {m for r in self.routes if r.pattern.fullmatch(path) for m in r.methods}
        return ", ".join(sorted(methods))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracked = TrackedReceive(receive)
        request = Request(scope, tracked)
        response = await self.dispatch(request)
        if response.status_code >= 400:
            await drain(request, tracked)  # behind a proxy, the answer must reach the client
        await response(scope, tracked, send)

    async def dispatch(self, request: Request) -> Response:
        path: str = request.scope["path"]
        r, params, path_matched = self.match(request.method, path)
        # The route, not the raw path, labels this request's metrics (web/metrics.py).
        request.scope["route"] = r
        if r is None:
            if path_matched:
                allow = {"Allow": self.allowed_methods(path)}
                return error_response(405, "UNSUPPORTED", "method not allowed", headers=allow)
            return error_response(404, "NOT_FOUND", "no such endpoint")
        runtime = runtime_of(request)
        name = params.get("name")
        authenticated = False
        try:
            # The token endpoint (no Action) checks its own credentials.
            principal = ANONYMOUS if r.action is None else await authenticate(request, runtime)
            call = Call(request, runtime, principal, params)
            authenticated = True
            if name is not None:
                call.repository = parse_repository(name)
                if r.action is Action.PUSH:
                    check_creatable(call.repository)  # the API's reserved words
            if r.action is not None:
                await runtime.access.check(
                    call.principal, r.action, call.repository, origin_of(request)
                )
            response = await r.handler(call)
        except Unauthorized as exc:
            response = to_response(exc)
            # RFC 6750: credentials that do not verify are an invalid token; valid ones
            # that do not reach far enough, an insufficient scope.
            error = ""
            if request.headers.get("authorization"):
                error = "insufficient_scope" if authenticated else "invalid_token"
            response.headers["WWW-Authenticate"] = challenge(
                request, runtime, r.action, name, error
            )
            return response
        except RegistryError as exc:
            return to_response(exc)
        except ClientDisconnect:
            # The client is gone; nothing it sent was recorded. This answer is never read.
            return error_response(400, "BLOB_UPLOAD_INVALID", "client disconnected")
        except Exception:
            log.exception("unhandled error on %s %s", request.method, path)
            return error_response(500, "UNKNOWN", "internal error; see the server log")
        response.raw_headers.append(API_VERSION_RAW)
        return response
