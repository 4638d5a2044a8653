"""Organizations: creating one (with its `owners` team), reading and changing its details,
listing its members, and deleting it with everything that hangs off it.

Teams live in services/teams.py and default permissions in services/prototypes.py; the
lookups they share (the organization, a member named in a request) are here. Every
object a request names is looked up *within* the organization of the URL, so an object
of another organization is never found through it. Errors are services/problems.py's
(NotFound 404, Invalid 400, Conflict 409)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cargohold.auth.permissions import namespace_right
from cargohold.auth.principal import Principal
from cargohold.auth.roles import NamespaceRight
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.problems import Conflict, Invalid, NotFound, Problem

OWNERS_TEAM = "owners"
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
MAX_EMAIL = 255

ORG = sql("SELECT id, email FROM namespace WHERE name = :name AND kind = 'org'")
# Changes that must see a stable organization (its last admin, its repositories) lock its
# row on PostgreSQL; SQLite runs one write transaction at a time anyway.
ORG_FOR_UPDATE = sql(
    "SELECT id, email FROM namespace WHERE name = :name AND kind = 'org'",
    postgres="SELECT id, email FROM namespace WHERE name = :name AND kind = 'org' FOR UPDATE",
)
NAME_TAKEN = sql("SELECT 1 FROM namespace WHERE name = :name")
USER_NAME_TAKEN = sql("SELECT 1 FROM user_account WHERE username = :name")
INSERT_ORG = sql(
    """INSERT INTO namespace (name, kind, email, created_at)
       VALUES (:name, 'org', :email, :now)"""
)
INSERT_TEAM = sql(
    """INSERT INTO team (org_id, name, role, description, created_at)
       VALUES (:org, :name, :role, :description, :now)"""
)
TEAM_ID = sql("SELECT id FROM team WHERE org_id = :org AND name = :name")
ADD_MEMBER = sql(
    """INSERT INTO team_member (team_id, kind, member_id, synced)
       VALUES (:team, :kind, :member, :synced)
       ON CONFLICT (team_id, kind, member_id) DO NOTHING"""
)
SET_EMAIL = sql("UPDATE namespace SET email = :email WHERE id = :org")
USER_ID = sql("SELECT id FROM user_account WHERE username = :name")
ROBOT_ID = sql("SELECT id FROM robot WHERE namespace_id = :ns AND shortname = :shortname")
# The teams of an organization with their member and repository counts.
TEAMS = sql(
    """SELECT t.id, t.name, t.description, t.role, t.sync_group,
         (SELECT COUNT(*) FROM team_member m WHERE m.team_id = t.id),
         (SELECT COUNT(*) FROM repository_permission p
            WHERE p.kind = 'team' AND p.grantee_id = t.id)
       FROM team t WHERE t.org_id = :org ORDER BY t.id"""
)
MY_TEAMS = sql(
    """SELECT t.id FROM team t JOIN team_member m ON m.team_id = t.id
       WHERE t.org_id = :org AND m.kind = :kind AND m.member_id = :member"""
)
# Every user and robot in a team of the organization, one row per membership.
MEMBERSHIPS = sql(
    """SELECT m.kind, m.member_id, t.name, u.username, rn.name, r.shortname
       FROM team_member m JOIN team t ON t.id = m.team_id
       LEFT JOIN user_account u ON m.kind = 'user' AND u.id = m.member_id
       LEFT JOIN robot r ON m.kind = 'robot' AND r.id = m.member_id
       LEFT JOIN namespace rn ON rn.id = r.namespace_id
       WHERE t.org_id = :org ORDER BY t.name"""
)
# Direct (not through a team) permissions of users and robots on the organization's
# repositories.
DIRECT_PERMISSIONS = sql(
    """SELECT p.kind, p.grantee_id, r.name FROM repository_permission p
       JOIN repository r ON r.id = p.repository_id
       WHERE r.namespace_id = :org AND p.kind IN ('user', 'robot') ORDER BY r.name"""
)
# What deleting an organization removes, in order (the namespace row last). Deleted
# repositories still waiting for the collector's purge do not count: the namespace is then
# renamed out of the way (`.deleted-<id>`, a name no client can use) and the collector
# deletes it after its last repository (services/gc.py).
REPOSITORY_COUNT = sql(
    "SELECT COUNT(*) FROM repository WHERE namespace_id = :org AND deleted_at IS NULL"
)
_TEAMS_OF = "(SELECT id FROM team WHERE org_id = :org)"
_ROBOTS_OF = "(SELECT id FROM robot WHERE namespace_id = :org)"
DELETE_ORG_STATEMENTS = (
    sql(
        f"""DELETE FROM repository_permission
            WHERE (kind = 'team' AND grantee_id IN {_TEAMS_OF})
               OR (kind = 'robot' AND grantee_id IN {_ROBOTS_OF})"""
    ),
    sql(
        f"""DELETE FROM default_permission WHERE org_id = :org
            OR (kind = 'team' AND grantee_id IN {_TEAMS_OF})
            OR (kind = 'robot' AND grantee_id IN {_ROBOTS_OF})"""
    ),
    sql(
        f"""DELETE FROM team_member WHERE team_id IN {_TEAMS_OF}
            OR (kind = 'robot' AND member_id IN {_ROBOTS_OF})"""
    ),
    sql("DELETE FROM team WHERE org_id = :org"),
    sql("DELETE FROM robot WHERE namespace_id = :org"),
    sql(
        """DELETE FROM credential WHERE application_id IN
           (SELECT id FROM oauth_application WHERE org_id = :org)"""
    ),
    sql("DELETE FROM oauth_application WHERE org_id = :org"),
    sql(
        """DELETE FROM namespace WHERE id = :org AND kind = 'org'
           AND NOT EXISTS (SELECT 1 FROM repository WHERE namespace_id = :org)"""
    ),
    sql("UPDATE namespace SET name = '.deleted-' || CAST(id AS TEXT) WHERE id = :org"),
)


# -- shared lookups ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Org:
    id: int
    name: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Member:
    """A user or a robot of the organization, as named in a request."""

    kind: str  # "user" | "robot"
    id: int
    name: str

    @property
    def is_robot(self) -> bool:
        return self.kind == "robot"


async def find_org(session: DbSession, name: str, *, lock: bool = False) -> Org:
    """The organization `name` (NotFound for a user's namespace too); `lock` holds its
    row until the transaction ends, so that concurrent changes of its admins or its
    repositories run one after the other."""
    row = await session.one(ORG_FOR_UPDATE if lock else ORG, name=name)
    if row is None:
        raise NotFound("no such organization")
    return Org(int(row[0]), name, row[1])


async def is_admin(session: DbSession, principal: Principal, org: Org) -> bool:
    right = await namespace_right(session, principal, org.id, "org")
    return right is NamespaceRight.ADMIN


async def find_user(session: DbSession, name: str) -> int | None:
    if "+" in name or len(name) > 255:
        return None
    value = await session.value(USER_ID, name=name)
    return None if value is None else int(value)


async def find_member(
    session: DbSession, org: Org, name: str, *, missing: type[Problem] = NotFound
) -> Member:
    """The user `name`, or the robot `<org>+<short>` of THIS organization. A robot of
    another namespace is Invalid; an unknown user or robot raises `missing`."""
    if "+" in name:
        namespace, _, shortname = name.partition("+")
        if namespace != org.name:
            raise Invalid(f"{name!r} is a robot of another namespace; use a robot of {org.name}")
        robot = await session.value(ROBOT_ID, ns=org.id, shortname=shortname)
        if robot is None:
            raise missing(f"no robot {name!r}")
        return Member("robot", int(robot), name)
    user = await find_user(session, name)
    if user is None:
        raise missing(f"no user {name!r}")
    return Member("user", user, name)


def check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if len(email) > MAX_EMAIL or not EMAIL_RE.fullmatch(email):
        raise Invalid("invalid e-mail address")
    return email


def team_view(row: tuple[Any, ...], *, can_view: bool = True) -> dict[str, Any]:
    """A row of TEAMS (or teams.TEAM) as the API shows it (Quay's field names)."""
    return {
        "name": row[1],
        "description": row[2] or "",
        "role": row[3],
        "can_view": can_view,
        "member_count": int(row[5]),
        "repo_count": int(row[6]),
        "is_synced": row[4] is not None,
    }


# -- the service ---------------------------------------------------------------------


class OrganizationService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        permissions_changed: Callable[[], None],
        credentials_changed: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.permissions_changed = permissions_changed
        self.credentials_changed = credentials_changed

    async def create(
        self, name: str, email: str | None, creator: Principal, audit: AuditEntry
    ) -> Org:
        """A new organization whose `owners` team (role admin) holds the creator."""
        try:
            parse_namespace(name)
        except NameInvalid as exc:
            raise Invalid(str(exc)) from exc
        email = check_email(email)
        if creator.id is None:
            raise Invalid("only a user can create an organization")
        creator_id = creator.id

        async def work(session: DbSession) -> Org:
            if (
                await session.value(NAME_TAKEN, name=name) is not None
                or await session.value(USER_NAME_TAKEN, name=name) is not None
            ):
                raise Invalid("a user or organization with this name already exists")
            now = utcnow()
            await session.run(INSERT_ORG, name=name, email=email, now=now)
            org = await find_org(session, name)
            await session.run(
                INSERT_TEAM,
                org=org.id,
                name=OWNERS_TEAM,
                role="admin",
                description="Administrators of the organization",
                now=now,
            )
            team = await session.value(TEAM_ID, org=org.id, name=OWNERS_TEAM)
            await session.run(ADD_MEMBER, team=team, kind="user", member=creator_id, synced=False)
            audit.namespace = name
            audit.details.update({"email": email, "owners_team": OWNERS_TEAM})
            await self.audit.write(session, audit)
            return org

        org = await run_write(self.db, work)
        self.permissions_changed()
        return org

    async def view(self, name: str, principal: Principal) -> dict[str, Any]:
        """The organization as `principal` (a member or an admin) may see it: admins see
        every team with its counts and the e-mail address; other members see only the
        teams they belong to."""
        async with self.db.read() as session:
            org = await find_org(session, name)
            admin = await is_admin(session, principal, org)
            rows = await session.all(TEAMS, org=org.id)
            mine: set[int] = set()
            if principal.id is not None:
                mine = {
                    int(r[0])
                    for r in await session.all(
                        MY_TEAMS, org=org.id, kind=principal.kind.value, member=principal.id
                    )
                }
        visible = [r for r in rows if admin or int(r[0]) in mine]
        return {
            "name": org.name,
            "email": (org.email or "") if admin else "",
            "is_admin": admin,
            "is_member": bool(mine) or admin,
            "teams": {r[1]: team_view(r) for r in visible},
            "ordered_teams": [r[1] for r in visible],
        }

    async def change(self, name: str, email: str | None, audit: AuditEntry) -> None:
        email = check_email(email)

        async def work(session: DbSession) -> None:
            org = await find_org(session, name)
            await session.run(SET_EMAIL, email=email, org=org.id)
            audit.namespace = name
            audit.details.update({"email": email, "old_email": org.email})
            await self.audit.write(session, audit)

        await run_write(self.db, work)

    async def delete(self, name: str, audit: AuditEntry) -> None:
        """Delete the organization with its teams, members, robots, default permissions,
        OAuth applications (and their tokens) and the permissions granted to its teams
        and robots. Refused while it still has repositories."""

        async def work(session: DbSession) -> None:
            org = await find_org(session, name, lock=True)
            repositories = int(await session.value(REPOSITORY_COUNT, org=org.id))
            if repositories:
                raise Conflict(
                    f"the organization still has {repositories} repositories; delete them first"
                )
            for statement in DELETE_ORG_STATEMENTS:
                await session.run(statement, org=org.id)
            audit.namespace = name
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.permissions_changed()
        self.credentials_changed()  # its robots and its applications' tokens are gone

    async def members(self, name: str) -> list[dict[str, Any]]:
        """Every user and robot in a team of the organization, with their teams and the
        repositories of the organization they hold a direct permission on."""
        async with self.db.read() as session:
            org = await find_org(session, name)
            rows = await session.all(MEMBERSHIPS, org=org.id)
            direct = await session.all(DIRECT_PERMISSIONS, org=org.id)
        members: dict[tuple[str, int], dict[str, Any]] = {}
        for kind, member_id, team, username, robot_ns, robot_short in rows:
            key = (str(kind), int(member_id))
            if kind == "robot":
                shown = f"{robot_ns}+{robot_short}" if robot_short is not None else None
            else:
                shown = username
            if shown is None:
                continue  # a dangling membership of a deleted account
            entry = members.setdefault(
                key, {"name": shown, "kind": kind, "teams": [], "repositories": []}
            )
            entry["teams"].append({"name": team})
        prefix = f"{org.name}/"
        for kind, grantee, repository in direct:
            found = members.get((str(kind), int(grantee)))
            if found is not None:
                found["repositories"].append(str(repository).removeprefix(prefix))
        return sorted(members.values(), key=lambda m: (m["kind"], m["name"]))
