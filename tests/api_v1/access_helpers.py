"""Helpers for the robot, repository and permission API tests: accounts with API tokens,
organizations and teams made through the API, and registry pushes and pulls over Basic
or through the Docker token flow."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from cargohold.auth.roles import API_SCOPES
from tests.support.identity import Account, app_token, bearer, create_user, unique_name
from tests.support.oci import Image, make_image, push_blob
from tests.support.server import RegistryProcess

ALL_SCOPES = API_SCOPES  # every API scope there is
CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')

_admin_tokens: dict[str, str] = {}


@dataclass(frozen=True)
class Person:
    """A user with Basic credentials for /v2 and a bearer token for /api/v1."""

    account: Account
    token: str

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def auth(self) -> tuple[str, str]:
        return self.account.auth


def admin_token(server: RegistryProcess) -> str:
    """The superuser's API token (one per server, made once)."""
    if server.url not in _admin_tokens:
        _admin_tokens[server.url] = app_token(server, "admin", scopes=ALL_SCOPES, name="api admin")
    return _admin_tokens[server.url]


def person(
    server: RegistryProcess, prefix: str = "u", scopes: tuple[str, ...] = ALL_SCOPES
) -> Person:
    account = create_user(server, unique_name(prefix))
    return Person(account, app_token(server, account.name, scopes=scopes))


def api(server: RegistryProcess, token: str | None = None) -> httpx.Client:
    """An /api/v1 client: bearer `token`, or anonymous."""
    headers = bearer(token) if token else {}
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=60.0)


def admin_api(server: RegistryProcess) -> httpx.Client:
    return api(server, admin_token(server))


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, (resp.request.method, resp.request.url, resp.text)
    return resp.json() if resp.content else None


def api_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The API's error shape with `status`."""
    assert resp.status_code == status, (resp.request.method, resp.request.url, resp.text)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert isinstance(body["error_message"], str) and body["error_message"]
    return body


def new_org(server: RegistryProcess, prefix: str = "org") -> str:
    name = unique_name(prefix)
    with admin_api(server) as c:
        ok(c.post("/organization/", json={"name": name, "email": f"{name}@example.org"}), 201)
    return name


def add_team(server: RegistryProcess, org: str, team: str, role: str, *members: str) -> None:
    """Create team `team` (role member|creator|admin) in `org` with `members` (users or
    robots), as the superuser."""
    with admin_api(server) as c:
        ok(c.put(f"/organization/{org}/team/{team}", json={"role": role}))
        for member in members:
            ok(c.put(f"/organization/{org}/team/{team}/members/{member}"))


def new_repo(server: RegistryProcess, namespace: str, name: str | None = None, **body: Any) -> str:
    """Create `namespace/name` through the API as the superuser; its full name."""
    name = name or unique_name("r")
    with admin_api(server) as c:
        ok(c.post("/repository", json={"namespace": namespace, "repository": name, **body}), 201)
    return f"{namespace}/{name}"


def grant(server: RegistryProcess, repo: str, who: str, role: str, *, team: bool = False) -> None:
    kind = "team" if team else "user"
    with admin_api(server) as c:
        ok(c.put(f"/repository/{repo}/permissions/{kind}/{who}", json={"role": role}))


# -- the registry ---------------------------------------------------------------------------


def v2(server: RegistryProcess, auth: tuple[str, str] | None) -> httpx.Client:
    """A /v2 client with Basic `auth` (None: anonymous)."""
    return server.client(auth=auth)


def bearer_registry(server: RegistryProcess, token: str) -> httpx.Client:
    return server.client(auth=None, headers=bearer(token))


def try_push(client: httpx.Client, repo: str, tag: str = "v1") -> tuple[int, Image | None]:
    """Push a small image; (201, image) or (the first failing status, None)."""
    image = make_image()
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    if start.status_code != 202:
        return start.status_code, None
    client.delete(start.headers["Location"])
    push_blob(client, repo, image.config)
    for layer in image.layers:
        push_blob(client, repo, layer)
    r = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    return r.status_code, (image if r.status_code == 201 else None)


def pull_status(client: httpx.Client, repo: str, reference: str = "v1") -> int:
    return client.get(
        f"/v2/{repo}/manifests/{reference}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).status_code


def token_for(
    server: RegistryProcess, auth: tuple[str, str] | None, repo: str, actions: str = "pull"
) -> tuple[str, list[dict[str, Any]]]:
    """The Docker token flow as a client runs it: read the challenge of a 401 from /v2/,
    then ask its realm for the scope (with Basic `auth`, or none). (token, access claims)."""
    with server.client(auth=None) as anonymous:
        challenge = anonymous.get("/v2/")
    assert challenge.status_code == 401, challenge.text
    params = dict(CHALLENGE_PARAM.findall(challenge.headers["WWW-Authenticate"]))
    with httpx.Client(auth=auth, timeout=60.0) as c:
        r = c.get(
            params["realm"],
            params={"service": params["service"], "scope": f"repository:{repo}:{actions}"},
        )
    body = ok(r)
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    access: list[dict[str, Any]] = claims.get("access", [])
    return str(body["token"]), access


def granted(access: list[dict[str, Any]], repo: str) -> set[str]:
    for entry in access:
        if entry.get("type") == "repository" and entry.get("name") == repo:
            return set(entry.get("actions", []))
    return set()
