"""Teams of an organization and their members.

A team's role says what membership gives in the organization: `member` nothing by
itself (only the repository permissions granted to the team), `creator` the right to
create repositories, `admin` the administration of the organization and of every
repository in it (auth/permissions.py reads them). An organization always keeps an
admin: the changes that would leave it without a user in an admin team are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cargohold.auth.principal import Principal
from cargohold.auth.roles import TEAM_ROLE_NAMES, TeamRole
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_shortname
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.organizations import (
    ADD_MEMBER,
    INSERT_TEAM,
    Member,
    Org,
    find_member,
    find_org,
    is_admin,
    team_view,
)
from cargohold.services.problems import Conflict, Invalid, NotFound

MAX_DESCRIPTION = 4096

TEAM = sql(
    """SELECT t.id, t.name, t.description, t.role, t.sync_group,
         (SELECT COUNT(*) FROM team_member m WHERE m.team_id = t.id),
         (SELECT COUNT(*) FROM repository_permission p
            WHERE p.kind = 'team' AND p.grantee_id = t.id)
       FROM team t WHERE t.org_id = :org AND t.name = :name"""
)
IS_MEMBER = sql(
    "SELECT 1 FROM team_member WHERE team_id = :team AND kind = :kind AND member_id = :member"
)
UPDATE_TEAM = sql("UPDATE team SET role = :role, description = :description WHERE id = :team")
MEMBERS = sql(
    """SELECT m.kind, u.username, rn.name, r.shortname, m.synced
       FROM team_member m
       LEFT JOIN user_account u ON m.kind = 'user' AND u.id = m.member_id
       LEFT JOIN robot r ON m.kind = 'robot' AND r.id = m.member_id
       LEFT JOIN namespace rn ON rn.id = r.namespace_id
       WHERE m.team_id = :team"""
)
REMOVE_MEMBER = sql(
    "DELETE FROM team_member WHERE team_id = :team AND kind = :kind AND member_id = :member"
)
DELETE_TEAM_STATEMENTS = (
    sql("DELETE FROM repository_permission WHERE kind = 'team' AND grantee_id = :team"),
    sql("DELETE FROM default_permission WHERE kind = 'team' AND grantee_id = :team"),
    sql("DELETE FROM team_member WHERE team_id = :team"),
    sql("DELETE FROM team WHERE id = :team"),
)
# Users who administer the organization through a team: all of them, those outside one
# team, and those but one membership.
_ADMINS = """SELECT COUNT(DISTINCT m.member_id) FROM team_member m
             JOIN team t ON t.id = m.team_id
             WHERE t.org_id = :org AND t.role = 'admin' AND m.kind = 'user'"""
ADMINS = sql(_ADMINS)
ADMINS_OUTSIDE_TEAM = sql(_ADMINS + " AND t.id <> :team")
ADMINS_BUT_MEMBERSHIP = sql(_ADMINS + " AND NOT (t.id = :team AND m.member_id = :member)")


async def _keeps_an_admin(session: DbSession, org: Org, after: int) -> None:
    """Refuse a change after which no user administers `org` (through a team) any more,
    when someone did before."""
    if after == 0 and int(await session.value(ADMINS, org=org.id)) > 0:
        raise Conflict("the organization must keep at least one administrator (an admin team)")


def _member_view(kind: str, name: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "is_robot": kind == "robot", "invited": False}


class TeamService:
    def __init__(
        self, db: Database, audit: AuditLog, permissions_changed: Callable[[], None]
    ) -> None:
        self.db = db
        self.audit = audit
        self.permissions_changed = permissions_changed

    async def _team(self, session: DbSession, org: Org, name: str) -> tuple[Any, ...]:
        row = await session.one(TEAM, org=org.id, name=name)
        if row is None:
            raise NotFound("no such team")
        return row

    async def _visible_team(
        self, session: DbSession, orgname: str, teamname: str, principal: Principal
    ) -> tuple[tuple[Any, ...], bool]:
        """The team and whether the caller administers the organization. Other members
        see only their own teams (others are missing to them, like missing teams)."""
        org = await find_org(session, orgname)
        team = await self._team(session, org, teamname)
        admin = await is_admin(session, principal, org)
        if not admin:
            mine = principal.id is not None and await session.value(
                IS_MEMBER, team=team[0], kind=principal.kind.value, member=principal.id
            )
            if not mine:
                raise NotFound("no such team")
        return team, admin

    async def get(self, orgname: str, teamname: str, principal: Principal) -> dict[str, Any]:
        async with self.db.read() as session:
            team, _ = await self._visible_team(session, orgname, teamname, principal)
        return team_view(team)

    async def put(
        self,
        orgname: str,
        teamname: str,
        audit: Callable[[str], AuditEntry],
        *,
        role: str | None = None,
        description: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create the team, or change its role and/or description: (view, created).
        `audit(kind)` makes the entry (create_team or change_team)."""
        if role is not None and role not in TEAM_ROLE_NAMES:
            raise Invalid(f"role must be one of {', '.join(TEAM_ROLE_NAMES)}")
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise Invalid(f"the description is longer than {MAX_DESCRIPTION} characters")

        async def work(session: DbSession) -> tuple[dict[str, Any], bool]:
            org = await find_org(session, orgname, lock=True)
            row = await session.one(TEAM, org=org.id, name=teamname)
            if row is None:
                try:
                    parse_shortname(teamname, "team names")
                except NameInvalid as exc:
                    raise Invalid(str(exc)) from exc
                new_role = role or TeamRole.MEMBER.value
                await session.run(
                    INSERT_TEAM,
                    org=org.id,
                    name=teamname,
                    role=new_role,
                    description=description or "",
                    now=utcnow(),
                )
                entry = audit("create_team")
                entry.namespace = orgname
                entry.details.update({"team": teamname, "role": new_role})
                await self.audit.write(session, entry)
                created = await self._team(session, org, teamname)
                return team_view(created), True
            team_id, old_role, old_description = row[0], row[3], row[2] or ""
            new_role = role or old_role
            new_description = old_description if description is None else description
            if new_role == old_role and new_description == old_description:
                return team_view(row), False
            if old_role == "admin" and new_role != "admin":
                after = await session.value(ADMINS_OUTSIDE_TEAM, org=org.id, team=team_id)
                await _keeps_an_admin(session, org, int(after))
            await session.run(UPDATE_TEAM, role=new_role, description=new_description, team=team_id)
            changes: dict[str, Any] = {"team": teamname}
            if new_role != old_role:
                changes.update({"role": new_role, "old_role": old_role})
            if new_description != old_description:
                changes["description"] = new_description
            entry = audit("change_team")
            entry.namespace = orgname
            entry.details.update(changes)
            await self.audit.write(session, entry)
            return team_view(await self._team(session, org, teamname)), False

        result = await run_write(self.db, work)
        self.permissions_changed()
        return result

    async def delete(self, orgname: str, teamname: str, audit: AuditEntry) -> None:
        """Delete the team with its memberships and the permissions granted to it."""

        async def work(session: DbSession) -> None:
            org = await find_org(session, orgname, lock=True)
            team = await self._team(session, org, teamname)
            if team[3] == "admin":
                after = await session.value(ADMINS_OUTSIDE_TEAM, org=org.id, team=team[0])
                await _keeps_an_admin(session, org, int(after))
            for statement in DELETE_TEAM_STATEMENTS:
                await session.run(statement, team=team[0])
            audit.namespace = orgname
            audit.details.update({"team": teamname, "role": team[3]})
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.permissions_changed()

    async def members(self, orgname: str, teamname: str, principal: Principal) -> dict[str, Any]:
        async with self.db.read() as session:
            team, admin = await self._visible_team(session, orgname, teamname, principal)
            rows = await session.all(MEMBERS, team=team[0])
        members = []
        for kind, username, robot_ns, robot_short, _synced in rows:
            if kind == "robot":
                if robot_short is None:
                    continue
                members.append(_member_view("robot", f"{robot_ns}+{robot_short}"))
            elif username is not None:
                members.append(_member_view("user", str(username)))
        members.sort(key=lambda m: (m["kind"], m["name"]))
        return {"name": team[1], "members": members, "can_edit": admin}

    async def add_member(
        self, orgname: str, teamname: str, membername: str, audit: AuditEntry
    ) -> dict[str, Any]:
        """Add a user, or a robot of this organization, to the team (idempotent)."""

        async def work(session: DbSession) -> Member:
            org = await find_org(session, orgname)
            team = await self._team(session, org, teamname)
            member = await find_member(session, org, membername)
            if team[4] is not None and not member.is_robot:
                raise Invalid("this team's users are synced from a group; add robots only")
            added = await session.run(
                ADD_MEMBER, team=team[0], kind=member.kind, member=member.id, synced=False
            )
            if added:
                audit.namespace = orgname
                audit.details.update({"team": teamname, "member": member.name})
                await self.audit.write(session, audit)
            return member

        member = await run_write(self.db, work)
        self.permissions_changed()
        return _member_view(member.kind, member.name)

    async def remove_member(
        self, orgname: str, teamname: str, membername: str, audit: AuditEntry
    ) -> None:
        async def work(session: DbSession) -> None:
            org = await find_org(session, orgname, lock=True)
            team = await self._team(session, org, teamname)
            member = await find_member(session, org, membername)
            if team[4] is not None and not member.is_robot:
                raise Invalid("this team's users are synced from a group; remove robots only")
            present = await session.value(
                IS_MEMBER, team=team[0], kind=member.kind, member=member.id
            )
            if not present:
                raise NotFound(f"{membername!r} is not a member of the team")
            if team[3] == "admin" and member.kind == "user":
                after = await session.value(
                    ADMINS_BUT_MEMBERSHIP, org=org.id, team=team[0], member=member.id
                )
                await _keeps_an_admin(session, org, int(after))
            await session.run(REMOVE_MEMBER, team=team[0], kind=member.kind, member=member.id)
            audit.namespace = orgname
            audit.details.update({"team": teamname, "member": member.name})
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.permissions_changed()
