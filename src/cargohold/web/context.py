"""Request context: the Runtime wired at start-up."""

from __future__ import annotations

from starlette.requests import Request

from cargohold.services.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    # The lifespan state (see app.make_asgi), read from the scope: cheaper than request.state.
    runtime: Runtime = request.scope["state"]["runtime"]
    return runtime
