"""Granting repository permissions (read, write, admin) to users, robots and teams.

This module changes grants; auth/permissions.py reads them. The rules, after Quay's:
- a robot may be granted only on repositories of its own namespace;
- a team only on repositories of its own organization;
- the user who owns a user namespace is always its admin, so is not granted anything.
The caller (an admin of the repository, checked by the API's policy) names the grantee
as `username`, `<namespace>+<robot>` or a team name; unknown grantees are NotFound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cargohold.auth.roles import ROLE_NAMES
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace, parse_shortname
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.problems import Invalid, NotFound

GranteeKind = Literal["user", "robot", "team"]

REPOSITORY = sql(
    """SELECT r.id, n.id, n.name, n.kind FROM repository r
       JOIN namespace n ON n.id = r.namespace_id WHERE r.name = :name"""
)
USER = sql("SELECT id, namespace_id FROM user_account WHERE username = :name")
ROBOT = sql("SELECT id FROM robot WHERE namespace_id = :ns AND shortname = :shortname")
TEAM = sql("SELECT id FROM team WHERE org_id = :org AND name = :name")
# Grants to users and robots, with whether the grantee belongs to the organization
# (a user in one of its teams; a robot always does).
USER_GRANTS = sql(
    """SELECT u.username, p.role, EXISTS (SELECT 1 FROM team_member m JOIN team t
              ON t.id = m.team_id WHERE t.org_id = :ns AND m.kind = 'user'
              AND m.member_id = u.id)
       FROM repository_permission p JOIN user_account u ON u.id = p.grantee_id
       WHERE p.repository_id = :repo AND p.kind = 'user' ORDER BY u.username"""
)
ROBOT_GRANTS = sql(
    """SELECT n.name, b.shortname, p.role FROM repository_permission p
       JOIN robot b ON b.id = p.grantee_id JOIN namespace n ON n.id = b.namespace_id
       WHERE p.repository_id = :repo AND p.kind = 'robot' ORDER BY b.shortname"""
)
TEAM_GRANTS = sql(
    """SELECT t.name, p.role FROM repository_permission p JOIN team t ON t.id = p.grantee_id
       WHERE p.repository_id = :repo AND p.kind = 'team' ORDER BY t.name"""
)
ROLE = sql(
    """SELECT role FROM repository_permission
       WHERE repository_id = :repo AND kind = :kind AND grantee_id = :grantee"""
)
GRANT = sql(
    """INSERT INTO repository_permission (repository_id, kind, grantee_id, role)
       VALUES (:repo, :kind, :grantee, :role)
       ON CONFLICT (repository_id, kind, grantee_id) DO UPDATE SET role = :role"""
)
REVOKE = sql(
    """DELETE FROM repository_permission
       WHERE repository_id = :repo AND kind = :kind AND grantee_id = :grantee"""
)
IS_ORG_MEMBER = sql(
    """SELECT 1 FROM team_member m JOIN team t ON t.id = m.team_id
       WHERE t.org_id = :ns AND m.kind = 'user' AND m.member_id = :member"""
)


@dataclass(frozen=True, slots=True)
class Grant:
    kind: GranteeKind
    name: str  # username, <namespace>+<robot>, or team name
    role: str
    org_member: bool = False  # users and robots: belongs to the repository's organization


@dataclass(frozen=True, slots=True)
class _Repo:
    id: int
    namespace_id: int
    namespace: str
    namespace_kind: str


@dataclass(frozen=True, slots=True)
class _Grantee:
    kind: GranteeKind
    id: int
    name: str
    org_member: bool


def check_role(role: str) -> str:
    if role not in ROLE_NAMES:
        raise Invalid(f"role must be one of {', '.join(ROLE_NAMES)}")
    return role


class GrantService:
    def __init__(self, db: Database, audit: AuditLog, on_change: Callable[[], None]) -> None:
        self.db = db
        self.audit = audit
        self.on_change = on_change  # drop cached permission answers

    # -- lookups ----------------------------------------------------------------------------

    async def _repository(self, session: DbSession, repository: str) -> _Repo:
        row = await session.one(REPOSITORY, name=repository)
        if row is None:
            raise NotFound("no such repository")
        return _Repo(int(row[0]), int(row[1]), str(row[2]), str(row[3]))

    async def _user_or_robot(self, session: DbSession, repo: _Repo, name: str) -> _Grantee:
        if "+" in name:
            namespace, _, shortname = name.partition("+")
            # The namespace is checked before any lookup: whether another tenant's robot
            # exists is not revealed.
            if namespace != repo.namespace:
                raise Invalid(f"only robots of {repo.namespace} can be granted on its repositories")
            try:
                parse_shortname(shortname)
            except NameInvalid as exc:
                raise NotFound(f"no robot {name}") from exc
            robot_id = await session.value(ROBOT, ns=repo.namespace_id, shortname=shortname)
            if robot_id is None:
                raise NotFound(f"no robot {name}")
            return _Grantee("robot", int(robot_id), name, True)
        try:
            parse_namespace(name)
        except NameInvalid as exc:
            raise NotFound(f"no user {name}") from exc
        row = await session.one(USER, name=name)
        if row is None:
            raise NotFound(f"no user {name}")
        if int(row[1]) == repo.namespace_id:
            raise Invalid(f"{name} owns {repo.namespace} and is always its admin")
        member = False
        if repo.namespace_kind == "org":
            member = (
                await session.one(IS_ORG_MEMBER, ns=repo.namespace_id, member=row[0]) is not None
            )
        return _Grantee("user", int(row[0]), name, member)

    async def _team(self, session: DbSession, repo: _Repo, name: str) -> _Grantee:
        if repo.namespace_kind != "org":
            raise Invalid("teams exist only in organizations")
        try:
            parse_shortname(name, "a team's name")
        except NameInvalid as exc:
            raise NotFound(f"no team {name} in {repo.namespace}") from exc
        team_id = await session.value(TEAM, org=repo.namespace_id, name=name)
        if team_id is None:
            raise NotFound(f"no team {name} in {repo.namespace}")
        return _Grantee("team", int(team_id), name, False)

    async def _grantee(self, session: DbSession, repo: _Repo, team: bool, name: str) -> _Grantee:
        if team:
            return await self._team(session, repo, name)
        return await self._user_or_robot(session, repo, name)

    # -- reading ----------------------------------------------------------------------------

    async def list_users(self, repository: str) -> list[Grant]:
        """Grants to users and robots (Quay lists both under /permissions/user/)."""
        async with self.db.read() as session:
            repo = await self._repository(session, repository)
            users = await session.all(USER_GRANTS, repo=repo.id, ns=repo.namespace_id)
            robots = await session.all(ROBOT_GRANTS, repo=repo.id)
        grants = [Grant("user", str(r[0]), str(r[1]), as_bool(r[2])) for r in users]
        grants += [Grant("robot", f"{r[0]}+{r[1]}", str(r[2]), True) for r in robots]
        return grants

    async def list_teams(self, repository: str) -> list[Grant]:
        async with self.db.read() as session:
            repo = await self._repository(session, repository)
            rows = await session.all(TEAM_GRANTS, repo=repo.id)
        return [Grant("team", str(r[0]), str(r[1])) for r in rows]

    async def get(self, repository: str, name: str, *, team: bool) -> Grant:
        async with self.db.read() as session:
            repo = await self._repository(session, repository)
            grantee = await self._grantee(session, repo, team, name)
            role = await session.value(ROLE, repo=repo.id, kind=grantee.kind, grantee=grantee.id)
        if role is None:
            raise NotFound(f"{name} has no permission on {repository}")
        return Grant(grantee.kind, grantee.name, str(role), grantee.org_member)

    # -- changing ---------------------------------------------------------------------------

    async def set(
        self, repository: str, name: str, role: str, audit: AuditEntry, *, team: bool
    ) -> Grant:
        """Grant `role` to the grantee (replacing the role it had)."""
        check_role(role)

        async def work(session: DbSession) -> Grant:
            repo = await self._repository(session, repository)
            grantee = await self._grantee(session, repo, team, name)
            await session.run(GRANT, repo=repo.id, kind=grantee.kind, grantee=grantee.id, role=role)
            audit.repository = repository
            audit.details.update({grantee.kind: grantee.name, "role": role})
            await self.audit.write(session, audit)
            return Grant(grantee.kind, grantee.name, role, grantee.org_member)

        grant = await run_write(self.db, work)
        self.on_change()
        return grant

    async def delete(self, repository: str, name: str, audit: AuditEntry, *, team: bool) -> None:
        async def work(session: DbSession) -> None:
            repo = await self._repository(session, repository)
            grantee = await self._grantee(session, repo, team, name)
            done = await session.run(REVOKE, repo=repo.id, kind=grantee.kind, grantee=grantee.id)
            if not done:
                raise NotFound(f"{name} has no permission on {repository}")
            audit.repository = repository
            audit.details[grantee.kind] = grantee.name
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.on_change()
