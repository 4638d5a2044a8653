"""Default permissions of an organization (Quay's "prototypes"): when <anyone, or one
user> creates a repository in the organization, grant <role> to <a user, a team or a
robot>. RepositoryCreator (services/repositories.py) applies them.

Delegates and activating users are named in the request body: one that does not exist,
or a team or robot of another organization, is a bad request (400); a prototype id in
the URL is looked up within the organization of the URL (404 otherwise)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cargohold.auth.roles import ROLE_NAMES
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.organizations import (
    Member,
    Org,
    find_member,
    find_org,
    find_user,
)
from cargohold.services.problems import Conflict, Invalid, NotFound

DELEGATE_KINDS = ("user", "team", "robot")

_SELECT = """SELECT p.id, p.uuid, p.role, p.kind, p.grantee_id, p.activating_user_id,
               au.username, du.username, dt.name, rn.name, rb.shortname
             FROM default_permission p
             LEFT JOIN user_account au ON au.id = p.activating_user_id
             LEFT JOIN user_account du ON p.kind = 'user' AND du.id = p.grantee_id
             LEFT JOIN team dt ON p.kind = 'team' AND dt.id = p.grantee_id
             LEFT JOIN robot rb ON p.kind = 'robot' AND rb.id = p.grantee_id
             LEFT JOIN namespace rn ON rn.id = rb.namespace_id
             WHERE p.org_id = :org"""
PROTOTYPES = sql(_SELECT + " ORDER BY p.id")
PROTOTYPE = sql(_SELECT + " AND p.uuid = :uuid")
ORG_USERS = sql(
    """SELECT DISTINCT m.member_id FROM team_member m JOIN team t ON t.id = m.team_id
       WHERE t.org_id = :org AND m.kind = 'user'"""
)
TEAM_ID = sql("SELECT id FROM team WHERE org_id = :org AND name = :name")
SAME = sql(
    """SELECT uuid FROM default_permission WHERE org_id = :org AND kind = :kind
       AND grantee_id = :grantee AND uuid <> :uuid
       AND (activating_user_id = :activating
            OR (activating_user_id IS NULL AND :activating_set = 0))"""
)
INSERT = sql(
    """INSERT INTO default_permission (uuid, org_id, activating_user_id, kind, grantee_id, role)
       VALUES (:uuid, :org, :activating, :kind, :grantee, :role)"""
)
UPDATE = sql(
    """UPDATE default_permission SET activating_user_id = :activating, kind = :kind,
       grantee_id = :grantee, role = :role WHERE id = :id"""
)
DELETE = sql("DELETE FROM default_permission WHERE id = :id")


@dataclass(frozen=True, slots=True)
class Delegate:
    """Who a default permission grants to, as a request names it."""

    name: str
    kind: str  # user | team | robot (a "user" named `org+short` is the robot)


@dataclass(frozen=True, slots=True)
class _Resolved:
    grantee: Member  # kind user | team | robot
    activating: int | None
    activating_name: str | None


def _view(row: tuple[Any, ...], org_users: set[int]) -> dict[str, Any]:
    _id, uid, role, kind, grantee, activating_id, activating_name = row[:7]
    user_name, team_name, robot_ns, robot_short = row[7:]
    delegate: dict[str, Any]
    if kind == "team":
        delegate = {"name": team_name, "kind": "team"}
    elif kind == "robot":
        name = f"{robot_ns}+{robot_short}" if robot_short is not None else None
        delegate = {"name": name, "kind": "robot", "is_robot": True, "is_org_member": True}
    else:
        delegate = {
            "name": user_name,
            "kind": "user",
            "is_robot": False,
            "is_org_member": int(grantee) in org_users,
        }
    activating = None
    if activating_id is not None:
        activating = {
            "name": activating_name,
            "kind": "user",
            "is_robot": False,
            "is_org_member": int(activating_id) in org_users,
        }
    return {"id": uid, "role": role, "delegate": delegate, "activating_user": activating}


class PrototypeService:
    def __init__(
        self, db: Database, audit: AuditLog, permissions_changed: Callable[[], None]
    ) -> None:
        self.db = db
        self.audit = audit
        self.permissions_changed = permissions_changed

    async def for_org(self, orgname: str) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            org = await find_org(session, orgname)
            rows = await session.all(PROTOTYPES, org=org.id)
            users = await self._org_users(session, org)
        return [_view(r, users) for r in rows]

    async def get(self, orgname: str, prototype_id: str) -> dict[str, Any]:
        async with self.db.read() as session:
            org = await find_org(session, orgname)
            row = await self._row(session, org, prototype_id)
            users = await self._org_users(session, org)
        return _view(row, users)

    async def create(
        self,
        orgname: str,
        role: str,
        delegate: Delegate,
        activating_user: str | None,
        audit: AuditEntry,
    ) -> dict[str, Any]:
        _check_role(role)
        new_id = str(uuid.uuid4())

        async def work(session: DbSession) -> dict[str, Any]:
            org = await find_org(session, orgname)
            resolved = await self._resolve(session, org, delegate, activating_user)
            await self._refuse_duplicate(session, org, resolved, new_id)
            await session.run(
                INSERT,
                uuid=new_id,
                org=org.id,
                activating=resolved.activating,
                kind=resolved.grantee.kind,
                grantee=resolved.grantee.id,
                role=role,
            )
            audit.namespace = orgname
            audit.details.update(_details(new_id, role, resolved))
            await self.audit.write(session, audit)
            return _view(await self._row(session, org, new_id), await self._org_users(session, org))

        view = await run_write(self.db, work)
        self.permissions_changed()
        return view

    async def change(
        self,
        orgname: str,
        prototype_id: str,
        audit: AuditEntry,
        *,
        role: str | None = None,
        delegate: Delegate | None = None,
        activating_user: str | None = None,
        activating_user_given: bool = False,
    ) -> dict[str, Any]:
        """Change the role, and the delegate and activating user when given (an
        activating user given as None means anyone)."""
        if role is not None:
            _check_role(role)

        async def work(session: DbSession) -> dict[str, Any]:
            org = await find_org(session, orgname)
            row = await self._row(session, org, prototype_id)
            row_id, old_role, old_kind, old_grantee, old_activating = (
                row[0],
                row[2],
                row[3],
                row[4],
                row[5],
            )
            grantee = Member(str(old_kind), int(old_grantee), "")
            if delegate is not None:
                grantee = (await self._resolve(session, org, delegate, None)).grantee
            activating: int | None = None if old_activating is None else int(old_activating)
            activating_name = row[6]
            if activating_user_given:
                activating, activating_name = await self._activating(session, activating_user)
            resolved = _Resolved(grantee, activating, activating_name)
            await self._refuse_duplicate(session, org, resolved, prototype_id)
            new_role = role or str(old_role)
            await session.run(
                UPDATE,
                activating=activating,
                kind=grantee.kind,
                grantee=grantee.id,
                role=new_role,
                id=row_id,
            )
            updated = await self._row(session, org, prototype_id)
            view = _view(updated, await self._org_users(session, org))
            audit.namespace = orgname
            audit.details.update(
                {
                    "prototypeid": prototype_id,
                    "role": new_role,
                    "original_role": old_role,
                    "delegate_kind": view["delegate"]["kind"],
                    "delegate": view["delegate"]["name"],
                    "activating_user": activating_name,
                }
            )
            await self.audit.write(session, audit)
            return view

        view = await run_write(self.db, work)
        self.permissions_changed()
        return view

    async def delete(self, orgname: str, prototype_id: str, audit: AuditEntry) -> None:
        async def work(session: DbSession) -> None:
            org = await find_org(session, orgname)
            row = await self._row(session, org, prototype_id)
            await session.run(DELETE, id=row[0])
            view = _view(row, set())
            audit.namespace = orgname
            audit.details.update(
                {
                    "prototypeid": prototype_id,
                    "role": row[2],
                    "delegate_kind": view["delegate"]["kind"],
                    "delegate": view["delegate"]["name"],
                    "activating_user": row[6],
                }
            )
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.permissions_changed()

    # -- helpers ---------------------------------------------------------------------

    async def _row(self, session: DbSession, org: Org, prototype_id: str) -> tuple[Any, ...]:
        row = None
        if len(prototype_id) <= 36:
            row = await session.one(PROTOTYPE, org=org.id, uuid=prototype_id)
        if row is None:
            raise NotFound("no such default permission")
        return row

    async def _org_users(self, session: DbSession, org: Org) -> set[int]:
        return {int(r[0]) for r in await session.all(ORG_USERS, org=org.id)}

    async def _activating(
        self, session: DbSession, name: str | None
    ) -> tuple[int | None, str | None]:
        if name is None:
            return None, None
        if "+" in name:
            raise Invalid("the activating user must be a user, not a robot")
        user = await find_user(session, name)
        if user is None:
            raise Invalid(f"unknown activating user {name!r}")
        return user, name

    async def _resolve(
        self, session: DbSession, org: Org, delegate: Delegate, activating_user: str | None
    ) -> _Resolved:
        if delegate.kind not in DELEGATE_KINDS:
            raise Invalid(f"delegate kind must be one of {', '.join(DELEGATE_KINDS)}")
        grantee: Member
        if delegate.kind == "team":
            team = await session.value(TEAM_ID, org=org.id, name=delegate.name)
            if team is None:
                raise Invalid(f"no team {delegate.name!r} in {org.name}")
            grantee = Member("team", int(team), delegate.name)
        elif delegate.kind == "robot" and "+" not in delegate.name:
            raise Invalid("a robot is named <organization>+<name>")
        else:
            # Quay names robots as users: a "user" named org+short is the robot.
            grantee = await find_member(session, org, delegate.name, missing=Invalid)
        activating, activating_name = await self._activating(session, activating_user)
        return _Resolved(grantee, activating, activating_name)

    async def _refuse_duplicate(
        self, session: DbSession, org: Org, resolved: _Resolved, own_uuid: str
    ) -> None:
        existing = await session.value(
            SAME,
            org=org.id,
            kind=resolved.grantee.kind,
            grantee=resolved.grantee.id,
            uuid=own_uuid,
            activating=resolved.activating if resolved.activating is not None else -1,
            activating_set=0 if resolved.activating is None else 1,
        )
        if existing is not None:
            raise Conflict(f"default permission {existing} already grants to this delegate")


def _check_role(role: str) -> None:
    if role not in ROLE_NAMES:
        raise Invalid(f"role must be one of {', '.join(ROLE_NAMES)}")


def _details(prototype_id: str, role: str, resolved: _Resolved) -> dict[str, Any]:
    return {
        "prototypeid": prototype_id,
        "role": role,
        "delegate_kind": resolved.grantee.kind,
        "delegate": resolved.grantee.name,
        "activating_user": resolved.activating_name,
    }
