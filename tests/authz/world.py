"""The cast of the authorization matrix: one organization with a private repository,
and a principal for every role the matrix checks, set up through the REST API as an
administrator would."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from cargohold.auth.roles import API_SCOPES
from tests.support.identity import Account, bearer, unique_name
from tests.support.oci import OCI_EMPTY, OCI_MANIFEST, descriptor, push_blob, sha256
from tests.support.server import RegistryProcess

ALL_SCOPES = API_SCOPES  # every API scope there is

# Every principal the matrix knows, in the order tables list them.
PRINCIPALS = (
    "anonymous",
    "reader",
    "writer",
    "repo_admin",
    "other_org",
    "robot_with",
    "robot_without",
    "team_member",
    "team_creator",
    "team_admin",
    "superuser",
    "revoked_token",
    "expired_token",
)


@dataclass
class Principal:
    name: str
    basic: tuple[str, str] | None  # /v2 credentials (None: anonymous)
    api_token: str | None = None  # bearer on /api/v1 (None: anonymous)


@dataclass
class World:
    server: RegistryProcess
    org: str
    other_org: str
    repo: str  # private, in org
    admin_token: str
    principals: dict[str, Principal] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    robots: dict[str, str] = field(default_factory=dict)  # short -> full name
    manifest_digest: str = ""
    blob_digest: str = ""

    def admin(self) -> httpx.Client:
        return self.server.client(auth=None, headers=bearer(self.admin_token))

    def registry_client(self, who: str) -> httpx.Client:
        p = self.principals[who]
        return self.server.client(auth=p.basic)

    def api_client(self, who: str) -> httpx.Client:
        p = self.principals[who]
        headers = bearer(p.api_token) if p.api_token else {}
        return self.server.client(auth=None, headers=headers)


def api(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    r = client.request(method, f"/api/v1{path}", json=body)
    assert r.status_code < 300, (method, path, r.status_code, r.text)
    return r.json() if r.content else None


def push_image(client: httpx.Client, repo: str, tag: str, payload: bytes) -> str:
    """An image with one layer; returns the manifest digest."""
    push_blob(client, repo, b"{}")
    layer = push_blob(client, repo, payload)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [{"mediaType": OCI_EMPTY, "digest": layer, "size": len(payload)}],
        }
    ).encode()
    r = client.put(
        f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text
    return sha256(manifest)


def app_token(
    server: RegistryProcess,
    user: str,
    *,
    scopes: tuple[str, ...],
    name: str,
    expires: str | None = None,
    password: str | None = None,
) -> str:
    """An app token made the way a user makes one: sign in, then POST /user/apptoken."""
    password = password or _passwords[user]
    with server.client(auth=None) as c:
        r = c.post("/api/v1/signin", json={"username": user, "password": password})
        assert r.status_code == 200, r.text
        if user != "admin":  # only superusers may hold super:user
            scopes = tuple(s for s in scopes if s != "super:user")
        body: dict[str, Any] = {"title": name, "scopes": list(scopes)}
        if expires:
            body["expiration"] = expires
        r = c.post(
            "/api/v1/user/apptoken",
            json=body,
            headers={"X-CSRF-Token": r.json()["csrf_token"]},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"]["token_code"])


_passwords: dict[str, str] = {}


def create_user(server: RegistryProcess, admin_token: str, name: str) -> Account:
    password = f"pw-{name}-secret"
    with server.client(auth=None, headers=bearer(admin_token)) as c:
        api(c, "POST", "/superuser/users/", {"username": name, "password": password})
    _passwords[name] = password
    return Account(name, password)


def build_world(server: RegistryProcess) -> World:
    _passwords["admin"] = server.admin_auth[1]
    admin_token = app_token(server, "admin", scopes=ALL_SCOPES, name="matrix admin")
    org, other = unique_name("mxorg"), unique_name("mxother")
    world = World(server, org, other, f"{org}/app", admin_token)
    names = ("reader", "writer", "repo_admin", "other_org", "team_member", "team_creator")
    for role in (*names, "team_admin"):
        world.accounts[role] = create_user(
            server, admin_token, unique_name(role.replace("_", "")[:6])
        )
    with world.admin() as c:
        api(c, "POST", "/organization/", {"name": org, "email": f"{org}@example.org"})
        api(c, "POST", "/organization/", {"name": other, "email": f"{other}@example.org"})
        for team, role, member in (
            ("members", "member", "team_member"),
            ("creators", "creator", "team_creator"),
            ("admins", "admin", "team_admin"),
        ):
            api(c, "PUT", f"/organization/{org}/team/{team}", {"role": role})
            api(
                c,
                "PUT",
                f"/organization/{org}/team/{team}/members/{world.accounts[member].name}",
            )
        api(c, "PUT", f"/organization/{other}/team/owners2", {"role": "admin"})
        api(
            c,
            "PUT",
            f"/organization/{other}/team/owners2/members/{world.accounts['other_org'].name}",
        )
        for short in ("withperm", "noperm"):
            robot = api(c, "PUT", f"/organization/{org}/robots/{short}", {"description": short})
            world.robots[short] = robot["name"]
            world.principals["robot_with" if short == "withperm" else "robot_without"] = Principal(
                robot["name"], (robot["name"], robot["token"])
            )
    with server.client() as c:  # the superuser's Basic credentials
        world.manifest_digest = push_image(c, world.repo, "v1", b"matrix layer")
        world.blob_digest = sha256(b"matrix layer")
    with world.admin() as c:
        for who, role in (("reader", "read"), ("writer", "write"), ("repo_admin", "admin")):
            name = world.accounts[who].name
            api(c, "PUT", f"/repository/{world.repo}/permissions/user/{name}", {"role": role})
        api(
            c,
            "PUT",
            f"/repository/{world.repo}/permissions/user/{world.robots['withperm']}",
            {"role": "write"},
        )
    for who, account in world.accounts.items():
        token = app_token(server, account.name, scopes=ALL_SCOPES, name=f"matrix {who}")
        world.principals[who] = Principal(account.name, account.auth, token)
    world.principals["anonymous"] = Principal("anonymous", None)
    world.principals["superuser"] = Principal("admin", server.admin_auth, admin_token)
    writer = world.accounts["writer"].name
    revoked = app_token(server, writer, scopes=ALL_SCOPES, name="matrix revoked")
    with world.server.client(auth=None, headers=bearer(revoked)) as c:
        tokens = api(c, "GET", "/user/apptoken")
    token_id = next(t for t in tokens["tokens"] if t["title"] == "matrix revoked")["uuid"]
    with world.server.client(auth=None, headers=bearer(revoked)) as c:
        api(c, "DELETE", f"/user/apptoken/{token_id}")
    world.principals["revoked_token"] = Principal("revoked", ("$app", revoked), revoked)
    expired = app_token(server, writer, scopes=ALL_SCOPES, name="matrix expired", expires="1s")
    world.principals["expired_token"] = Principal("expired", ("$app", expired), expired)
    time.sleep(1.2)
    assert set(world.principals) == set(PRINCIPALS)
    return world
