"""Helpers of the LDAP and OIDC sign-in tests: organizations and teams made through the
API by the superuser, team sync set through the API, and reads straight from the test
server's database (team membership rows with their `synced` flag, user rows, audit)."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx

from cargohold.db.sql import sql
from tests.support.identity import app_token, bearer, unique_name
from tests.support.oci import make_image, push_image
from tests.support.server import ADMIN_USER, RegistryProcess

ADMIN_SCOPES = ("org:admin", "super:user", "user:admin", "repo:admin", "repo:create")


def rows(server: RegistryProcess, text: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the server's database (SQLite or PostgreSQL)."""
    statement = sql(text)
    if server.database_url:
        import psycopg

        with psycopg.connect(server.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement.postgres.encode(), params)  # type: ignore[arg-type]
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    conn = sqlite3.connect(server.data_dir / "cargohold.db", timeout=30)
    try:
        cursor = conn.execute(statement.sqlite, params)
        found = [tuple(r) for r in cursor.fetchall()]
        conn.commit()
        return found
    finally:
        conn.close()


def user_row(server: RegistryProcess, name: str) -> dict[str, Any] | None:
    found = rows(
        server,
        """SELECT u.username, u.email, u.provider, u.external_id, u.superuser, n.kind
           FROM user_account u JOIN namespace n ON n.id = u.namespace_id
           WHERE u.username = :name""",
        name=name,
    )
    if not found:
        return None
    username, email, provider, external_id, superuser, kind = found[0]
    return {
        "username": username,
        "email": email,
        "provider": provider,
        "external_id": external_id,
        "superuser": bool(superuser),
        "namespace_kind": kind,
    }


def team_members(server: RegistryProcess, org: str, team: str) -> dict[str, bool]:
    """username -> synced, for the user members of `org/team`."""
    found = rows(
        server,
        """SELECT u.username, m.synced FROM team_member m
           JOIN team t ON t.id = m.team_id JOIN namespace n ON n.id = t.org_id
           JOIN user_account u ON u.id = m.member_id
           WHERE n.name = :org AND t.name = :team AND m.kind = 'user'""",
        org=org,
        team=team,
    )
    return {str(name): bool(synced) for name, synced in found}


def sync_group(server: RegistryProcess, org: str, team: str) -> str | None:
    found = rows(
        server,
        """SELECT t.sync_group FROM team t JOIN namespace n ON n.id = t.org_id
           WHERE n.name = :org AND t.name = :team""",
        org=org,
        team=team,
    )
    return found[0][0] if found else None


def audit(server: RegistryProcess, kind: str, namespace: str | None = None) -> list[str]:
    """The details (JSON text) of the audit entries of `kind` (in `namespace`), in order.
    Entries queued by the server reach the table within a second: callers poll."""
    if namespace is None:
        found = rows(
            server, "SELECT details FROM audit_log WHERE kind = :kind ORDER BY id", kind=kind
        )
    else:
        found = rows(
            server,
            "SELECT details FROM audit_log WHERE kind = :kind AND namespace = :ns ORDER BY id",
            kind=kind,
            ns=namespace,
        )
    return [str(r[0]) for r in found]


class Admin:
    """The test server's superuser on /api/v1 (an app token made with the CLI)."""

    def __init__(self, server: RegistryProcess) -> None:
        self.server = server
        self.token = app_token(server, ADMIN_USER, scopes=ADMIN_SCOPES, name="identity tests")

    def api(self) -> httpx.Client:
        return self.server.client(auth=None, headers=bearer(self.token))

    def org_with_team(self, team: str = "devs", role: str = "member") -> str:
        """A new organization holding `team` (role `role`); returns the organization."""
        org = unique_name("org")
        with self.api() as api:
            r = api.post("/api/v1/organization/", json={"name": org})
            assert r.status_code == 201, r.text
            r = api.put(f"/api/v1/organization/{org}/team/{team}", json={"role": role})
            assert r.status_code == 200, r.text
        return org

    def set_sync(self, org: str, team: str, **body: str) -> httpx.Response:
        with self.api() as api:
            return api.post(f"/api/v1/organization/{org}/team/{team}/syncing", json=body)

    def remove_sync(self, org: str, team: str) -> httpx.Response:
        with self.api() as api:
            return api.delete(f"/api/v1/organization/{org}/team/{team}/syncing")

    def add_member(self, org: str, team: str, user: str) -> None:
        with self.api() as api:
            r = api.put(f"/api/v1/organization/{org}/team/{team}/members/{user}")
            assert r.status_code == 200, r.text


def push(server: RegistryProcess, auth: tuple[str, str], repository: str) -> None:
    """Push a small image to `repository:latest` with HTTP Basic (asserts each step)."""
    with server.client(auth=auth) as client:
        push_image(client, repository, make_image(), "latest")


def upload_status(server: RegistryProcess, auth: tuple[str, str], repository: str) -> int:
    """The status of starting a blob upload: 202 when `auth` may push there."""
    with server.client(auth=auth) as client:
        return client.post(f"/v2/{repository}/blobs/uploads/").status_code
