"""Authorization matrix of the registry protocol: every /v2 route x every principal,
asserting the exact status. A route added to the route table without a row here fails
`test_every_registry_route_is_in_the_matrix`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cargohold.web.registry.routes import ROUTES
from tests.authz.world import PRINCIPALS, World, push_image
from tests.support.oci import push_blob, sha256

# The level each principal holds on the organization's private repository.
LEVEL = {
    "anonymous": 0,
    "reader": 1,
    "writer": 2,
    "repo_admin": 3,
    "other_org": 0,
    "robot_with": 2,
    "robot_without": 0,
    "team_member": 0,
    "team_creator": 0,
    "team_admin": 3,
    "superuser": 3,
    "revoked_token": -1,
    "expired_token": -1,
}
INVALID = -1


@dataclass(frozen=True)
class Case:
    """One route: how to prepare (as the superuser), the request, the level it needs
    (None: any valid credentials or none), and the status of success."""

    route: str  # the route's pattern, to match the route table
    method: str
    request: Callable[[World, dict[str, Any]], tuple[str, dict[str, Any]]]
    needs: int | None
    ok: int
    prepare: Callable[[World], dict[str, Any]] | None = None
    anonymous_ok: bool = False  # anonymous callers get `ok` too (public information)
    login_only: bool = False  # any valid credentials suffice, anonymous is 401
    password_grant: bool = False  # the principal's credentials go in the form (POST /v2/auth)
    anonymous_status: int | None = None  # what anonymous callers get, when not 401 or `ok`


def _fresh_manifest(world: World) -> dict[str, Any]:
    with world.server.client() as c:
        tag = "t" + uuid.uuid4().hex[:8]
        digest = push_image(c, world.repo, tag, uuid.uuid4().bytes)
    return {"digest": digest, "tag": tag}


def _fresh_blob(world: World) -> dict[str, Any]:
    with world.server.client() as c:
        return {"digest": push_blob(c, world.repo, uuid.uuid4().bytes)}


def _upload(world: World, who: str) -> str:
    """An upload started by `who` when it may push, else by the superuser."""
    client = world.registry_client(who) if LEVEL[who] >= 2 else world.server.client()
    with client:
        r = client.post(f"/v2/{world.repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        return str(r.headers["Location"])


CASES: list[Case] = [
    Case("/v2/?", "GET", lambda w, p: ("/v2/", {}), None, 200, login_only=True),
    Case("/v2/?", "HEAD", lambda w, p: ("/v2/", {}), None, 200, login_only=True),
    Case(
        "/v2/auth",
        "GET",
        lambda w, p: ("/v2/auth?service=cargohold", {}),
        None,
        200,
        anonymous_ok=True,
    ),
    Case(
        "/v2/auth",
        "POST",
        lambda w, p: ("/v2/auth", {}),
        None,
        200,
        password_grant=True,
        anonymous_status=400,  # the password grant needs a user name
    ),
    Case("/v2/_catalog", "GET", lambda w, p: ("/v2/_catalog", {}), None, 200),
    Case("/tags/list", "GET", lambda w, p: (f"/v2/{w.repo}/tags/list", {}), 1, 200),
    Case("/manifests/", "GET", lambda w, p: (f"/v2/{w.repo}/manifests/v1", {}), 1, 200),
    Case("/manifests/", "HEAD", lambda w, p: (f"/v2/{w.repo}/manifests/v1", {}), 1, 200),
    Case(
        "/manifests/",
        "PUT",
        lambda w, p: (
            f"/v2/{w.repo}/manifests/{p['tag']}-again",
            {"content": p["body"], "headers": {"Content-Type": p["media_type"]}},
        ),
        2,
        201,
        prepare=lambda w: _manifest_body(w),
    ),
    Case(
        "/manifests/",
        "DELETE",
        lambda w, p: (f"/v2/{w.repo}/manifests/{p['digest']}", {}),
        2,
        202,
        prepare=_fresh_manifest,
    ),
    Case("/blobs/uploads", "POST", lambda w, p: (f"/v2/{w.repo}/blobs/uploads/", {}), 2, 202),
    Case("/blobs/uploads", "GET", lambda w, p: (p["upload"], {}), 2, 204),
    Case(
        "/blobs/uploads",
        "PATCH",
        lambda w, p: (
            p["upload"],
            {"content": b"abc", "headers": {"Content-Type": "application/octet-stream"}},
        ),
        2,
        202,
    ),
    Case(
        "/blobs/uploads",
        "PUT",
        lambda w, p: (p["upload"] + f"?digest={sha256(b'matrix-put')}", {"content": b"matrix-put"}),
        2,
        201,
    ),
    Case("/blobs/uploads", "DELETE", lambda w, p: (p["upload"], {}), 2, 204),
    Case("/blobs/", "GET", lambda w, p: (f"/v2/{w.repo}/blobs/{w.blob_digest}", {}), 1, 200),
    Case("/blobs/", "HEAD", lambda w, p: (f"/v2/{w.repo}/blobs/{w.blob_digest}", {}), 1, 200),
    Case(
        "/blobs/",
        "DELETE",
        lambda w, p: (f"/v2/{w.repo}/blobs/{p['digest']}", {}),
        2,
        202,
        prepare=_fresh_blob,
    ),
    Case(
        "/referrers/",
        "GET",
        lambda w, p: (f"/v2/{w.repo}/referrers/{w.manifest_digest}", {}),
        1,
        200,
    ),
]
UPLOAD_METHODS = {"GET", "PATCH", "PUT", "DELETE"}


def _manifest_body(world: World) -> dict[str, Any]:
    prepared = _fresh_manifest(world)
    with world.server.client() as c:
        r = c.get(f"/v2/{world.repo}/manifests/{prepared['tag']}")
    assert r.status_code == 200
    prepared.update(body=r.content, media_type=r.headers["Content-Type"])
    return prepared


def expected(case: Case, who: str) -> int:
    level = LEVEL[who]
    if level == INVALID:
        return 401
    if who == "anonymous":
        if case.anonymous_status is not None:
            return case.anonymous_status
        return case.ok if case.anonymous_ok else 401
    if case.needs is None:
        return case.ok
    return case.ok if level >= case.needs else 403


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.route}")
def test_registry_route(world: World, case: Case, who: str) -> None:
    prepared = case.prepare(world) if case.prepare else {}
    if case.route == "/blobs/uploads" and case.method in UPLOAD_METHODS:
        prepared["upload"] = _upload(world, who)
    path, kwargs = case.request(world, prepared)
    if case.password_grant:
        basic = world.principals[who].basic
        form = {
            "grant_type": "password",
            "service": "cargohold",
            "scope": f"repository:{world.repo}:pull",
        }
        if basic is not None:
            form.update(username=basic[0], password=basic[1])
        kwargs = {"data": form}
    with world.registry_client(who) as client:
        r = client.request(case.method, path, **kwargs)
    want = expected(case, who)
    assert r.status_code == want, (who, case.method, path, r.status_code, r.text)
    if want == 401 and case.route != "/v2/auth":
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    if want in (401, 403) and case.method != "HEAD" and case.route != "/v2/auth":
        codes = [e["code"] for e in json.loads(r.text)["errors"]]
        assert codes == (["UNAUTHORIZED"] if want == 401 else ["DENIED"])


def test_every_registry_route_is_in_the_matrix() -> None:
    covered = {(c.method, c.route) for c in CASES}
    missing = []
    for route in ROUTES:
        for method in route.methods:
            pattern = route.pattern.pattern
            if not any(m == method and (p == pattern or p in pattern) for m, p in covered):
                missing.append(f"{method} {pattern}")
    assert not missing, f"routes without a row in the authorization matrix: {missing}"


def test_the_matrix_covers_every_principal(world: World) -> None:
    assert set(LEVEL) == set(PRINCIPALS) == set(world.principals)
