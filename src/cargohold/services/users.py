"""Local user accounts: creation (with the user's own namespace) and password changes."""

from __future__ import annotations

from dataclasses import dataclass

from cargohold.auth.passwords import hash_password_async, password_problem
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.domain.names import parse_namespace
from cargohold.services.audit import AuditEntry, AuditLog

NAMESPACE_ID = sql("SELECT id FROM namespace WHERE name = :name")
INSERT_NAMESPACE = sql(
    "INSERT INTO namespace (name, kind, created_at) VALUES (:name, 'user', :now)"
)
INSERT_USER = sql(
    """INSERT INTO user_account (namespace_id, username, email, password_hash, provider,
       superuser, enabled, created_at)
       VALUES (:ns, :name, :email, :hash, 'database', :superuser, :yes, :now)"""
)
USER_ID = sql("SELECT id FROM user_account WHERE username = :name")
COUNT_USERS = sql("SELECT COUNT(*) FROM user_account")
SET_PASSWORD = sql("UPDATE user_account SET password_hash = :hash WHERE id = :id")


class UserError(ValueError):
    """A user cannot be created or changed as asked; the message says why."""


class NameTaken(UserError):
    """The name belongs to another user or an organization already."""


@dataclass(frozen=True, slots=True)
class NewUser:
    id: int
    username: str


class UserService:
    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    async def create(
        self,
        username: str,
        password: str | None,
        *,
        email: str | None = None,
        superuser: bool = False,
        audit: AuditEntry | None = None,
    ) -> NewUser:
        parse_namespace(username)
        if password is not None:
            problem = password_problem(password)
            if problem:
                raise UserError(problem)
        hashed = await hash_password_async(password) if password is not None else None

        async def work(session: DbSession) -> int:
            if await session.value(NAMESPACE_ID, name=username) is not None:
                raise NameTaken(f"the name {username!r} is taken")
            now = utcnow()
            await session.run(INSERT_NAMESPACE, name=username, now=now)
            ns = await session.value(NAMESPACE_ID, name=username)
            await session.run(
                INSERT_USER,
                ns=ns,
                name=username,
                email=email,
                hash=hashed,
                superuser=superuser,
                yes=True,
                now=now,
            )
            user_id: int = await session.value(USER_ID, name=username)
            if audit is not None:
                await self.audit.write(session, audit)
            return user_id

        return NewUser(await run_write(self.db, work), username)

    async def count(self) -> int:
        async with self.db.read() as session:
            return int(await session.value(COUNT_USERS))

    async def set_password(self, user_id: int, password: str) -> None:
        problem = password_problem(password)
        if problem:
            raise UserError(problem)
        hashed = await hash_password_async(password)

        async def work(session: DbSession) -> None:
            await session.run(SET_PASSWORD, hash=hashed, id=user_id)

        await run_write(self.db, work)
