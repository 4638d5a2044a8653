"""Accounts and grants for the audit tests, made fast.

Users and app tokens go through cargohold's own services in this process, against the
test server's database (the `cargohold` CLI does the same, at a few seconds per call);
organizations, teams, robots and grants are rows written by SQL, so these tests do not
depend on the APIs that manage them. Everything is new when it is first used, so no
cache of the server holds an answer about it."""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass

from cargohold.app import build_runtime
from cargohold.auth.secrets import digest
from cargohold.db.base import utcnow
from cargohold.settings import load_settings
from tests.support.audit import database_url, execute, query
from tests.support.identity import unique_name
from tests.support.server import RegistryProcess

# Every API scope: tests narrow what a token may do by the user's rights, not its scopes.
ALL_SCOPES = ("repo:admin", "repo:create", "user:admin", "org:admin", "super:user")


@dataclass(frozen=True)
class Member:
    name: str
    id: int
    password: str
    token: str  # an app token with `scopes`

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def users(
    server: RegistryProcess,
    count: int,
    *,
    scopes: tuple[str, ...] = ALL_SCOPES,
    superuser: bool = False,
) -> list[Member]:
    """`count` new users, each with an app token carrying `scopes`."""

    async def make() -> list[Member]:
        settings = load_settings(
            None, data_dir=str(server.data_dir), database={"url": database_url(server)}
        )
        runtime = build_runtime(settings)
        made = []
        try:
            for _ in range(count):
                name = unique_name("au")
                password = f"pw-{name}-secret"
                user = await runtime.users.create(name, password, superuser=superuser)
                token, _ = await runtime.credentials.issue(
                    "app", user.id, title="audit tests", scopes=list(scopes)
                )
                made.append(Member(name, user.id, password, token))
        finally:
            await runtime.close()
        return made

    return asyncio.run(make())


def namespace_id(server: RegistryProcess, name: str) -> int:
    return int(query(server, "SELECT id FROM namespace WHERE name = :name", name=name)[0][0])


def repository_id(server: RegistryProcess, name: str) -> int:
    return int(query(server, "SELECT id FROM repository WHERE name = :name", name=name)[0][0])


def organization(
    server: RegistryProcess,
    *,
    admins: tuple[Member, ...] = (),
    members: tuple[Member, ...] = (),
    creators: tuple[Member, ...] = (),
) -> str:
    """A new organization; `admins`, `members` and `creators` in a team of that role."""
    name = unique_name("org")
    execute(
        server,
        "INSERT INTO namespace (name, kind, created_at) VALUES (:name, 'org', :now)",
        [{"name": name, "now": utcnow()}],
    )
    org = namespace_id(server, name)
    teams = (
        ("owners", "admin", admins),
        ("crew", "member", members),
        ("makers", "creator", creators),
    )
    for team, role, people in teams:
        execute(
            server,
            """INSERT INTO team (org_id, name, role, description, created_at)
               VALUES (:org, :name, :role, '', :now)""",
            [{"org": org, "name": team, "role": role, "now": utcnow()}],
        )
        team_id = query(
            server, "SELECT id FROM team WHERE org_id = :org AND name = :name", org=org, name=team
        )[0][0]
        execute(
            server,
            """INSERT INTO team_member (team_id, kind, member_id, synced)
               VALUES (:team, 'user', :member, :no)""",
            [{"team": team_id, "member": m.id, "no": False} for m in people],
        )
    return name


def grant(server: RegistryProcess, repository: str, kind: str, grantee: int, role: str) -> None:
    """Give user/team/robot `grantee` `role` on an existing repository."""
    execute(
        server,
        """INSERT INTO repository_permission (repository_id, kind, grantee_id, role)
           VALUES (:repo, :kind, :grantee, :role)""",
        [
            {
                "repo": repository_id(server, repository),
                "kind": kind,
                "grantee": grantee,
                "role": role,
            }
        ],
    )


def robot(server: RegistryProcess, namespace: str) -> tuple[str, int, str]:
    """A new robot of `namespace`: (its name `<namespace>+<short>`, id, token)."""
    short = unique_name("bot")
    token = base64.urlsafe_b64encode(secrets.token_bytes(30)).decode().rstrip("=")
    execute(
        server,
        """INSERT INTO robot (namespace_id, shortname, description, token_hash, created_at)
           VALUES (:ns, :short, '', :hash, :now)""",
        [
            {
                "ns": namespace_id(server, namespace),
                "short": short,
                "hash": digest(token),
                "now": utcnow(),
            }
        ],
    )
    row = query(
        server,
        "SELECT id FROM robot WHERE namespace_id = :ns AND shortname = :short",
        ns=namespace_id(server, namespace),
        short=short,
    )
    return f"{namespace}+{short}", int(row[0][0]), token
