"""The routes outside /v2 and /api/v1 (the two matrices cover those): each has a row
here with what an anonymous caller and the superuser get, and a route without a row
fails `test_every_other_route_is_covered`."""

from __future__ import annotations

import pytest
from starlette.routing import Mount, Route

from cargohold.app import web_routes
from cargohold.settings import load_settings
from tests.support.server import RegistryProcess

# (method, path) -> (status for anonymous, status for the superuser's Basic credentials).
# The superuser's Basic credentials mean nothing outside /v2, so both see the same.
ROWS: dict[tuple[str, str], tuple[int, int]] = {
    ("GET", "/"): (200, 200),
    ("GET", "/healthz"): (200, 200),
    ("GET", "/.well-known/jwks.json"): (200, 200),
    # Probes: outside every authentication (tests/integration/test_health_metrics.py).
    ("GET", "/health/instance"): (200, 200),
    ("GET", "/health/endtoend"): (200, 200),
    # Loopback and no metrics.token: allowed; the token and proxy rules are tested in
    # tests/integration/test_health_metrics.py.
    ("GET", "/metrics"): (200, 200),
    # Without client_id, redirect_uri and state the OAuth routes refuse the request
    # itself before looking at who asks (tests/api_v1/test_applications.py covers the
    # grant with sessions and client credentials).
    ("GET", "/oauth/authorize"): (400, 400),
    ("POST", "/oauth/authorize"): (400, 400),
    ("POST", "/oauth/access_token"): (400, 400),
    # The test server's provider is the database: OIDC sign-in does not exist there.
    ("GET", "/oauth2/oidc/login"): (404, 404),
    ("GET", "/oauth2/oidc/callback"): (404, 404),
}


def other_routes() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    settings = load_settings()
    for route in web_routes(settings):
        if isinstance(route, Mount):
            if route.path == "/api/v1":
                continue  # tests/authz/test_api_matrix.py
            for inner in route.routes:
                assert isinstance(inner, Route)
                for method in inner.methods or ():
                    if method != "HEAD":
                        found.add((method, route.path + inner.path))
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, route.path))
    return found


def test_every_other_route_is_covered() -> None:
    routes = other_routes()
    assert routes, "no routes found"
    assert routes == set(ROWS), (sorted(routes - set(ROWS)), sorted(set(ROWS) - routes))


@pytest.mark.parametrize("row", sorted(ROWS), ids=lambda r: f"{r[0]} {r[1]}")
def test_other_route(registry: RegistryProcess, row: tuple[str, str]) -> None:
    method, path = row
    anonymous, superuser = ROWS[row]
    with registry.client(auth=None, follow_redirects=False) as c:
        assert c.request(method, path).status_code == anonymous
    with registry.client(follow_redirects=False) as c:
        assert c.request(method, path).status_code == superuser
