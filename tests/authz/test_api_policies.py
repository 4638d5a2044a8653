"""Every REST API route authorizes through exactly one policy of web/api/deps.py: the
static half of the authorization matrix (test_api_matrix.py is the dynamic half)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute

from cargohold.web.api import deps
from cargohold.web.api.app import make_api

POLICIES = (deps.Anyone, deps.SignedIn, deps.RepoAccess)  # Superuser, OrgAccess: SignedIn


@dataclass(frozen=True)
class ApiRoute:
    methods: frozenset[str]
    path: str
    dependant: Any


def api_routes() -> list[ApiRoute]:
    """Every route of the API, with routers included by FastAPI flattened."""
    out = []
    for route in make_api().routes:
        if isinstance(route, APIRoute):
            out.append(ApiRoute(frozenset(route.methods or ()), route.path, route.dependant))
        elif hasattr(route, "effective_route_contexts"):  # an included router
            for ctx in route.effective_route_contexts():
                out.append(ApiRoute(frozenset(ctx.methods or ()), ctx.path, ctx.dependant))
    return out


def test_every_api_route_declares_exactly_one_policy() -> None:
    problems = []
    for route in api_routes():
        policies = [d.call for d in route.dependant.dependencies if isinstance(d.call, POLICIES)]
        if len(policies) != 1:
            problems.append(f"{sorted(route.methods)} {route.path}: {len(policies)} policies")
    assert not problems, problems


def test_the_api_has_routes() -> None:
    # Guards the test above against passing on an empty app.
    assert len(api_routes()) > 20
