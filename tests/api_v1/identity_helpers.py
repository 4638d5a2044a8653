"""Helpers of the user, token, application and superuser tests: browser sessions through
POST /api/v1/signin, and users made by the superuser through the API (one request each,
where the `cargohold user create` CLI of tests/support/identity.py costs seconds)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.audit import query
from tests.support.identity import Account, unique_name
from tests.support.server import RegistryProcess

SESSION_COOKIE = "cargohold_session"


def anonymous(server: RegistryProcess, **kwargs: Any) -> httpx.Client:
    """A client with no credentials at all."""
    return server.client(auth=None, **kwargs)


def sign_in(server: RegistryProcess, account: tuple[str, str]) -> httpx.Client:
    """A client holding a session cookie of `account`, sending its CSRF token on every
    request (as the UI will)."""
    with anonymous(server) as client:
        body = {"username": account[0], "password": account[1]}
        answer = client.post("/api/v1/signin", json=body)
    assert answer.status_code == 200, answer.text
    return anonymous(
        server,
        cookies={SESSION_COOKIE: answer.cookies[SESSION_COOKIE]},
        headers={"X-CSRF-Token": answer.json()["csrf_token"]},
    )


def admin(server: RegistryProcess) -> httpx.Client:
    """A session of the superuser every test server starts with."""
    return sign_in(server, server.admin_auth)


def new_user(
    server: RegistryProcess, su: httpx.Client, *, email: str | None = None, name: str = ""
) -> Account:
    """A new database user made by the superuser `su` through the API."""
    name = name or unique_name()
    password = f"pw-{uuid.uuid4().hex}"
    body: dict[str, Any] = {"username": name, "password": password}
    if email:
        body["email"] = email
    answer = su.post("/api/v1/superuser/users/", json=body)
    assert answer.status_code == 201, answer.text
    return Account(name, password)


def new_token(
    client: httpx.Client, scopes: list[str], *, title: str = "t", expiration: str | None = None
) -> dict[str, Any]:
    """POST /api/v1/user/apptoken as `client`; the answer's `token` object."""
    body: dict[str, Any] = {"title": title, "scopes": scopes}
    if expiration:
        body["expiration"] = expiration
    answer = client.post("/api/v1/user/apptoken", json=body)
    assert answer.status_code == 201, answer.text
    token: dict[str, Any] = answer.json()["token"]
    return token


def bearer_client(server: RegistryProcess, token: str) -> httpx.Client:
    return anonymous(server, headers={"Authorization": f"Bearer {token}"})


def v2_status(server: RegistryProcess, auth: tuple[str, str]) -> int:
    """GET /v2/ with HTTP Basic: 200 when the credentials are good, 401 otherwise."""
    with server.client(auth=auth) as c:
        return c.get("/v2/").status_code


def token_endpoint_status(server: RegistryProcess, auth: tuple[str, str]) -> int:
    """The Docker token endpoint with HTTP Basic (as `docker login` does)."""
    with server.client(auth=auth) as c:
        return c.get("/v2/auth", params={"service": "cargohold"}).status_code


def assert_api_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    """`status` with the API's error body."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["error_message"], body
    return body


def column(server: RegistryProcess, text: str, **params: Any) -> list[Any]:
    """The first column of a query on the server's database."""
    return [row[0] for row in query(server, text, **params)]


def make_org(server: RegistryProcess, name: str, admins: list[str], members: list[str]) -> None:
    """An organization with an admin team and a member team, written straight into the
    database (this suite does not depend on the organization API)."""
    from tests.support.audit import execute

    now = "2024-01-01 00:00:00.000000"
    execute(
        server,
        "INSERT INTO namespace (name, kind, created_at) VALUES (:name, 'org', :now)",
        [{"name": name, "now": now}],
    )
    org = column(server, "SELECT id FROM namespace WHERE name = :name", name=name)[0]
    for team, role, people in (("owners", "admin", admins), ("readers", "member", members)):
        execute(
            server,
            """INSERT INTO team (org_id, name, role, description, created_at)
               VALUES (:org, :team, :role, '', :now)""",
            [{"org": org, "team": team, "role": role, "now": now}],
        )
        team_id = column(
            server, "SELECT id FROM team WHERE org_id = :org AND name = :team", org=org, team=team
        )[0]
        ids = [
            column(server, "SELECT id FROM user_account WHERE username = :n", n=p)[0]
            for p in people
        ]
        if ids:
            execute(
                server,
                """INSERT INTO team_member (team_id, kind, member_id, synced)
                   VALUES (:team, 'user', :member, :no)""",
                [{"team": team_id, "member": i, "no": False} for i in ids],
            )
