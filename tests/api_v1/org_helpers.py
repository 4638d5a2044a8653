"""Helpers of the organization, team and default-permission tests: accounts made in one
batch (one process for several users and their app tokens), robots and reads straight
from the test server's database, and small /v2 push/pull calls with HTTP Basic."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from cargohold.auth import secrets
from cargohold.db.sql import sql
from tests.support.identity import bearer, unique_name
from tests.support.oci import make_image, push_image
from tests.support.server import REPO_ROOT, RegistryProcess

# Every API scope but super:user: these tokens act with the whole right of their user.
SCOPES = ("repo:read", "repo:write", "repo:admin", "repo:create", "user:read", "user:admin",
          "org:admin")  # fmt: skip

_BATCH = r"""
import asyncio, json, sys
from cargohold.app import build_runtime
from cargohold.settings import load_settings
from cargohold.db.migrate import upgrade

async def main(spec):
    settings = load_settings()
    upgrade(settings.database.url)
    runtime = build_runtime(settings)
    out = []
    try:
        for name, password in spec["users"]:
            user = await runtime.users.create(name, password)
            token, _ = await runtime.credentials.issue(
                "app", user.id, title="org tests", scopes=spec["scopes"]
            )
            out.append(token)
    finally:
        await runtime.close()
    return out

print(json.dumps(asyncio.run(main(json.loads(sys.stdin.read())))))
"""


@dataclass(frozen=True)
class Person:
    """A user with a password (HTTP Basic on /v2) and an app token (bearer on /api/v1)."""

    name: str
    password: str
    token: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def people(server: RegistryProcess, count: int) -> list[Person]:
    """`count` new users with app tokens carrying every non-superuser API scope."""
    users = [(unique_name("p"), f"pw-{uuid.uuid4().hex}") for _ in range(count)]
    proc = subprocess.run(
        [sys.executable, "-c", _BATCH],
        cwd=REPO_ROOT,
        env=server.environment(),
        input=json.dumps({"users": users, "scopes": list(SCOPES)}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0:
        raise AssertionError(f"creating users failed:\n{proc.stdout}\n{proc.stderr}")
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    return [Person(n, p, t) for (n, p), t in zip(users, tokens, strict=True)]


def api(server: RegistryProcess, who: Person | None) -> httpx.Client:
    """An /api/v1 client acting as `who` (None: anonymous)."""
    headers = who.headers if who is not None else {}
    return server.client(auth=None, headers=headers)


def registry(server: RegistryProcess, auth: tuple[str, str] | None) -> httpx.Client:
    """A /v2 client with HTTP Basic credentials (None: anonymous)."""
    return server.client(auth=auth)


# -- the server's database, read (and robots written) directly -----------------------


def _run(server: RegistryProcess, text: str, params: dict[str, Any], fetch: bool) -> list[Any]:
    statement = sql(text)
    if server.database_url:
        import psycopg

        with psycopg.connect(server.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement.postgres.encode(), params)
            return list(cursor.fetchall()) if fetch else []
    lite = sqlite3.connect(server.data_dir / "cargohold.db", timeout=30)
    try:
        found = lite.execute(statement.sqlite, params)
        result = found.fetchall() if fetch else []
        lite.commit()
        return result
    finally:
        lite.close()


def rows(server: RegistryProcess, text: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in _run(server, text, params, True)]


def org_id(server: RegistryProcess, name: str) -> int:
    found = rows(server, "SELECT id FROM namespace WHERE name = :name", name=name)
    assert found, name
    return int(found[0][0])


def add_robot(server: RegistryProcess, namespace: str, shortname: str | None = None) -> str:
    """A robot `<namespace>+<shortname>` written straight into the database; its name."""
    return new_robot(server, namespace, shortname)[0]


def new_robot(
    server: RegistryProcess, namespace: str, shortname: str | None = None
) -> tuple[str, str]:
    """A robot written straight into the database: (its name, its token)."""
    shortname = shortname or f"bot{uuid.uuid4().hex[:8]}"
    token = secrets.new_secret()
    now = datetime.now(UTC)
    stamp: Any = now if server.database_url else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    _run(
        server,
        """INSERT INTO robot (namespace_id, shortname, description, token_hash, created_at)
           VALUES (:ns, :short, '', :hash, :now)""",
        {
            "ns": org_id(server, namespace),
            "short": shortname,
            "hash": secrets.digest(token),
            "now": stamp,
        },
        False,
    )
    return f"{namespace}+{shortname}", token


def repo_grants(server: RegistryProcess, repository: str) -> set[tuple[str, int, str]]:
    """(kind, grantee id, role) of every permission row of `repository`."""
    found = rows(
        server,
        """SELECT p.kind, p.grantee_id, p.role FROM repository_permission p
           JOIN repository r ON r.id = p.repository_id WHERE r.name = :name""",
        name=repository,
    )
    return {(str(k), int(g), str(r)) for k, g, r in found}


def user_id(server: RegistryProcess, name: str) -> int:
    found = rows(server, "SELECT id FROM user_account WHERE username = :name", name=name)
    return int(found[0][0])


def team_id(server: RegistryProcess, org: str, team: str) -> int:
    found = rows(
        server,
        """SELECT t.id FROM team t JOIN namespace n ON n.id = t.org_id
           WHERE n.name = :org AND t.name = :team""",
        org=org,
        team=team,
    )
    return int(found[0][0])


def robot_id(server: RegistryProcess, full_name: str) -> int:
    namespace, _, short = full_name.partition("+")
    found = rows(
        server,
        """SELECT r.id FROM robot r JOIN namespace n ON n.id = r.namespace_id
           WHERE n.name = :ns AND r.shortname = :short""",
        ns=namespace,
        short=short,
    )
    return int(found[0][0])


# -- the API, as an organization administrator would use it ---------------------------


def new_org(server: RegistryProcess, owner: Person, name: str | None = None) -> str:
    name = name or unique_name("org")
    with api(server, owner) as c:
        r = c.post("/api/v1/organization/", json={"name": name})
    assert r.status_code == 201, r.text
    return name


def put_team(server: RegistryProcess, admin: Person, org: str, team: str, role: str) -> None:
    with api(server, admin) as c:
        r = c.put(f"/api/v1/organization/{org}/team/{team}", json={"role": role})
    assert r.status_code == 200, r.text


def add_member(server: RegistryProcess, admin: Person, org: str, team: str, member: str) -> None:
    with api(server, admin) as c:
        r = c.put(f"/api/v1/organization/{org}/team/{team}/members/{member}")
    assert r.status_code == 200, r.text


# -- /v2 --------------------------------------------------------------------------------


def push(server: RegistryProcess, auth: tuple[str, str] | None, repository: str) -> int:
    """Push a small image tagged `latest`: the manifest PUT's status, or the status of
    the first step that was refused."""
    with registry(server, auth) as c:
        first = c.post(f"/v2/{repository}/blobs/uploads/")
        if first.status_code != 202:
            return first.status_code
        c.delete(first.headers["Location"])
        return push_image(c, repository, make_image(), "latest").status_code


def pull(server: RegistryProcess, auth: tuple[str, str] | None, repository: str) -> int:
    with registry(server, auth) as c:
        return c.get(
            f"/v2/{repository}/manifests/latest",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).status_code
