"""Robot accounts: `<namespace>+<shortname>`, owned by a user or an organization, signing
in to the registry with a random token of which only the sha256 is kept.

Every lookup is scoped to the namespace named in the request (a robot of another
namespace is simply not found: the Harbor CVE-2022-31667 pattern cannot happen), and
the web layer's policy has already checked that the caller administers that namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.auth import secrets
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool, as_datetime
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_shortname
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.problems import Conflict, Invalid, NotFound

MAX_DESCRIPTION = 255

NAMESPACE = sql("SELECT id, kind FROM namespace WHERE name = :name")
LIST = sql(
    """SELECT id, shortname, description, created_at FROM robot
       WHERE namespace_id = :ns ORDER BY shortname"""
)
GET = sql(
    """SELECT id, shortname, description, created_at FROM robot
       WHERE namespace_id = :ns AND shortname = :shortname"""
)
INSERT = sql(
    """INSERT INTO robot (namespace_id, shortname, description, token_hash, created_at)
       VALUES (:ns, :shortname, :description, :hash, :now)"""
)
SET_TOKEN = sql("UPDATE robot SET token_hash = :hash WHERE id = :id")
DELETE_GRANTS = sql("DELETE FROM repository_permission WHERE kind = 'robot' AND grantee_id = :id")
DELETE_MEMBERSHIPS = sql("DELETE FROM team_member WHERE kind = 'robot' AND member_id = :id")
DELETE_PROTOTYPES = sql("DELETE FROM default_permission WHERE kind = 'robot' AND grantee_id = :id")
DELETE = sql("DELETE FROM robot WHERE id = :id")
PERMISSIONS = sql(
    """SELECT r.name, r.public, p.role FROM repository_permission p
       JOIN repository r ON r.id = p.repository_id
       WHERE p.kind = 'robot' AND p.grantee_id = :id ORDER BY r.name"""
)


@dataclass(frozen=True, slots=True)
class RobotInfo:
    id: int
    namespace: str
    shortname: str
    description: str
    created_at: datetime | None

    @property
    def name(self) -> str:
        return f"{self.namespace}+{self.shortname}"

    @classmethod
    def from_row(cls, namespace: str, row: tuple[Any, ...]) -> RobotInfo:
        return cls(int(row[0]), namespace, str(row[1]), str(row[2] or ""), as_datetime(row[3]))


@dataclass(frozen=True, slots=True)
class RobotPermission:
    repository: str  # namespace/name
    public: bool
    role: str


def check_shortname(shortname: str) -> str:
    try:
        return parse_shortname(shortname, "a robot's name")
    except NameInvalid as exc:
        raise Invalid(str(exc)) from exc


class RobotService:
    """Robots of one namespace at a time. `kind` ("user" or "org") is the kind of
    namespace the route serves: an organization's URL never reaches a user's robots."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        credentials_changed: Callable[[], None],
        permissions_changed: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.credentials_changed = credentials_changed
        self.permissions_changed = permissions_changed

    async def _namespace(self, session: DbSession, namespace: str, kind: str) -> int:
        row = await session.one(NAMESPACE, name=namespace)
        if row is None or row[1] != kind:
            raise NotFound("no such organization" if kind == "org" else "no such user")
        return int(row[0])

    async def _robot(
        self, session: DbSession, namespace: str, kind: str, shortname: str
    ) -> RobotInfo:
        ns = await self._namespace(session, namespace, kind)
        row = await session.one(GET, ns=ns, shortname=shortname)
        if row is None:
            raise NotFound(f"no robot {namespace}+{shortname}")
        return RobotInfo.from_row(namespace, row)

    async def all_of(self, namespace: str, kind: str) -> list[RobotInfo]:
        async with self.db.read() as session:
            ns = await self._namespace(session, namespace, kind)
            rows = await session.all(LIST, ns=ns)
        return [RobotInfo.from_row(namespace, r) for r in rows]

    async def get(self, namespace: str, kind: str, shortname: str) -> RobotInfo:
        check_shortname(shortname)
        async with self.db.read() as session:
            return await self._robot(session, namespace, kind, shortname)

    async def create(
        self, namespace: str, kind: str, shortname: str, description: str, audit: AuditEntry
    ) -> tuple[str, RobotInfo]:
        """A new robot and its token (shown this once)."""
        check_shortname(shortname)
        if len(description) > MAX_DESCRIPTION:
            raise Invalid(f"description is longer than {MAX_DESCRIPTION} characters")
        token = secrets.new_secret()

        async def work(session: DbSession) -> RobotInfo:
            ns = await self._namespace(session, namespace, kind)
            if await session.one(GET, ns=ns, shortname=shortname) is not None:
                raise Conflict(f"the robot {namespace}+{shortname} exists")
            await session.run(
                INSERT,
                ns=ns,
                shortname=shortname,
                description=description,
                hash=secrets.digest(token),
                now=utcnow(),
            )
            row = await session.one(GET, ns=ns, shortname=shortname)
            assert row is not None
            robot = RobotInfo.from_row(namespace, row)
            audit.namespace = namespace
            audit.details.update({"robot": robot.name, "description": description})
            await self.audit.write(session, audit)
            return robot

        robot = await run_write(self.db, work)
        return token, robot

    async def regenerate(
        self, namespace: str, kind: str, shortname: str, audit: AuditEntry
    ) -> tuple[str, RobotInfo]:
        """A new token; the old one stops working at once (on this host; other hosts
        within the credential cache's lifetime)."""
        check_shortname(shortname)
        token = secrets.new_secret()

        async def work(session: DbSession) -> RobotInfo:
            robot = await self._robot(session, namespace, kind, shortname)
            await session.run(SET_TOKEN, hash=secrets.digest(token), id=robot.id)
            audit.namespace = namespace
            audit.details["robot"] = robot.name
            await self.audit.write(session, audit)
            return robot

        robot = await run_write(self.db, work)
        self.credentials_changed()
        return token, robot

    async def delete(self, namespace: str, kind: str, shortname: str, audit: AuditEntry) -> None:
        """Delete the robot with everything that names it (grants, team memberships,
        default permissions): grantees have no foreign key, so nothing else would."""
        check_shortname(shortname)

        async def work(session: DbSession) -> None:
            robot = await self._robot(session, namespace, kind, shortname)
            await session.run(DELETE_GRANTS, id=robot.id)
            await session.run(DELETE_MEMBERSHIPS, id=robot.id)
            await session.run(DELETE_PROTOTYPES, id=robot.id)
            await session.run(DELETE, id=robot.id)
            audit.namespace = namespace
            audit.details["robot"] = robot.name
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.credentials_changed()
        self.permissions_changed()

    async def permissions(
        self, namespace: str, kind: str, shortname: str
    ) -> tuple[RobotInfo, list[RobotPermission]]:
        """The robot's direct repository grants (team grants show on the teams)."""
        check_shortname(shortname)
        async with self.db.read() as session:
            robot = await self._robot(session, namespace, kind, shortname)
            rows = await session.all(PERMISSIONS, id=robot.id)
        return robot, [RobotPermission(str(r[0]), as_bool(r[1]), str(r[2])) for r in rows]
