"""Request context: who is calling (the one authentication entry) and the Runtime."""

from __future__ import annotations

from starlette.requests import Request

from cargohold.auth.access import ANONYMOUS, Principal
from cargohold.services.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    # The lifespan state (see app.make_asgi), read from the scope: cheaper than request.state.
    runtime: Runtime = request.scope["state"]["runtime"]
    return runtime


async def principal_of(request: Request) -> Principal:
    """Identify the caller. Until identity lands, everyone is anonymous."""
    return ANONYMOUS
