"""Request context: who is calling (the one authentication entry) and the Runtime."""

from __future__ import annotations

from starlette.requests import Request

from cargohold.auth.access import ANONYMOUS, Principal
from cargohold.services.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime  # from the lifespan state (see app.make_asgi)
    return runtime


async def principal_of(request: Request) -> Principal:
    """Identify the caller. Until identity lands, everyone is anonymous."""
    return ANONYMOUS
