"""Request context: the Runtime wired at start-up, and where a request came from."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from cargohold.services.audit import Origin
from cargohold.services.runtime import Runtime


def runtime_of(request: HTTPConnection) -> Runtime:
    # The lifespan state (see app.make_asgi), read from the scope: cheaper than request.state.
    runtime: Runtime = request.scope["state"]["runtime"]
    return runtime


def origin_of(request: HTTPConnection) -> Origin:
    """The client's address and user agent, for the audit log and login throttling."""
    client = request.scope.get("client")
    return Origin(client[0] if client else None, request.headers.get("user-agent"))
