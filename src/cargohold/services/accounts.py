"""User accounts as their owners and superusers manage them: the profile, e-mail and
password changes, enabling and disabling, superuser flags, deletion, and the list.

Creation goes through services/users.py (UserService.create). Every change writes its
audit entry in the same transaction, then drops cached credential and permission answers
(a disabled user's password, tokens and sessions stop working at once)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.auth import secrets as tokens
from cargohold.auth.passwords import hash_password_async, password_problem
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool, as_datetime
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.problems import Conflict, Invalid, NotFound

MAX_EMAIL = 255
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
PAGE_LIMIT = 100

COLUMNS = """id, username, email, superuser, enabled, provider, created_at, last_login_at,
             namespace_id"""
BY_NAME = sql(f"SELECT {COLUMNS} FROM user_account WHERE username = :name")
BY_ID = sql(f"SELECT {COLUMNS} FROM user_account WHERE id = :id")
PAGE = sql(
    f"""SELECT {COLUMNS} FROM user_account WHERE username > :after
        ORDER BY username LIMIT :limit"""
)
ORGANIZATIONS = sql(
    """SELECT n.name, MAX(CASE WHEN t.role = 'admin' THEN 1 ELSE 0 END) FROM team_member m
       JOIN team t ON t.id = m.team_id JOIN namespace n ON n.id = t.org_id
       WHERE m.kind = 'user' AND m.member_id = :user
       GROUP BY n.name ORDER BY n.name"""
)
SET_EMAIL = sql("UPDATE user_account SET email = :email WHERE id = :id")
SET_PASSWORD = sql("UPDATE user_account SET password_hash = :hash WHERE id = :id")
SET_ENABLED = sql("UPDATE user_account SET enabled = :enabled WHERE id = :id")
SET_SUPERUSER = sql("UPDATE user_account SET superuser = :superuser WHERE id = :id")
REVOKE_CLI = sql(
    """UPDATE credential SET revoked_at = :now
       WHERE user_id = :user AND kind = 'cli' AND revoked_at IS NULL"""
)
END_OTHER_SESSIONS = sql("DELETE FROM web_session WHERE user_id = :user AND id_hash <> :keep")

# Deleting a user: grants are polymorphic (no foreign keys), so each goes explicitly.
# Deleted repositories waiting for the collector's purge do not count: the namespace is
# then renamed out of the way (`.deleted-<id>`) and the collector deletes it after them.
REPOSITORY_COUNT = sql(
    "SELECT COUNT(*) FROM repository WHERE namespace_id = :ns AND deleted_at IS NULL"
)
ROBOTS = "SELECT id FROM robot WHERE namespace_id = :ns"
DELETE_STEPS = (
    sql("DELETE FROM repository_permission WHERE kind = 'user' AND grantee_id = :user"),
    sql(
        """DELETE FROM default_permission
           WHERE (kind = 'user' AND grantee_id = :user) OR activating_user_id = :user"""
    ),
    sql("DELETE FROM team_member WHERE kind = 'user' AND member_id = :user"),
    sql(f"DELETE FROM repository_permission WHERE kind = 'robot' AND grantee_id IN ({ROBOTS})"),
    sql(f"DELETE FROM default_permission WHERE kind = 'robot' AND grantee_id IN ({ROBOTS})"),
    sql(f"DELETE FROM team_member WHERE kind = 'robot' AND member_id IN ({ROBOTS})"),
    sql("DELETE FROM robot WHERE namespace_id = :ns"),
    sql("DELETE FROM credential WHERE user_id = :user"),
    sql("DELETE FROM web_session WHERE user_id = :user"),
    sql("DELETE FROM user_account WHERE id = :user"),
    sql(
        """DELETE FROM namespace WHERE id = :ns
           AND NOT EXISTS (SELECT 1 FROM repository WHERE namespace_id = :ns)"""
    ),
    sql("UPDATE namespace SET name = '.deleted-' || CAST(id AS TEXT) WHERE id = :ns"),
)


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    username: str
    email: str | None
    superuser: bool  # the database flag (settings may name more superusers)
    enabled: bool
    provider: str
    created_at: datetime | None
    last_login_at: datetime | None
    namespace_id: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Account:
        return cls(
            int(row[0]),
            str(row[1]),
            None if row[2] is None else str(row[2]),
            as_bool(row[3]),
            as_bool(row[4]),
            str(row[5]),
            as_datetime(row[6]),
            as_datetime(row[7]),
            int(row[8]),
        )


@dataclass(frozen=True, slots=True)
class Membership:
    name: str  # the organization
    is_admin: bool  # through a team with the admin role


@dataclass(slots=True)
class Change:
    """What to change; None leaves a field as it is (`email_set` allows clearing it)."""

    email: str | None = None
    email_set: bool = False
    password: str | None = None
    enabled: bool | None = None
    superuser: bool | None = None
    keep_session: str | None = None  # the cookie of the caller's session, kept on changes


def check_email(email: str | None) -> str | None:
    if email is None:
        return None
    email = email.strip()
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        raise Invalid("email must be an address such as name@example.com")
    return email


class AccountService:
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

    # -- reads ----------------------------------------------------------------------------

    async def get(self, username: str) -> Account | None:
        async with self.db.read() as s:
            row = await s.one(BY_NAME, name=username)
        return None if row is None else Account.from_row(row)

    async def get_by_id(self, user_id: int) -> Account | None:
        async with self.db.read() as s:
            row = await s.one(BY_ID, id=user_id)
        return None if row is None else Account.from_row(row)

    async def organizations(self, user_id: int) -> list[Membership]:
        async with self.db.read() as s:
            rows = await s.all(ORGANIZATIONS, user=user_id)
        return [Membership(str(r[0]), bool(r[1])) for r in rows]

    async def page(self, after: str | None, limit: int) -> tuple[list[Account], str | None]:
        """Users ordered by name after `after`; and the name to continue after, if any."""
        limit = max(1, min(limit, PAGE_LIMIT))
        async with self.db.read() as s:
            rows = await s.all(PAGE, after=after or "", limit=limit + 1)
        accounts = [Account.from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return accounts, (accounts[-1].username if more and accounts else None)

    # -- changes --------------------------------------------------------------------------

    async def change(self, user_id: int, change: Change, audit: AuditEntry) -> Account:
        """Apply `change` to the user; ends the user's sessions (all but `keep_session`)
        and revokes the encrypted CLI password on a password change, all sessions on
        disabling."""
        email = check_email(change.email) if change.email_set else None
        hashed = None
        if change.password is not None:
            problem = password_problem(change.password)
            if problem:
                raise Invalid(problem)
            hashed = await hash_password_async(change.password)
        keep = tokens.digest(change.keep_session) if change.keep_session else ""

        async def work(s: DbSession) -> Account:
            row = await s.one(BY_ID, id=user_id)
            if row is None:
                raise NotFound("no such user")
            account = Account.from_row(row)
            if hashed is not None and account.provider != "database":
                raise Invalid(f"the password of this account is managed by {account.provider}")
            if change.email_set:
                await s.run(SET_EMAIL, email=email, id=user_id)
            if hashed is not None:
                await s.run(SET_PASSWORD, hash=hashed, id=user_id)
                await s.run(REVOKE_CLI, now=utcnow(), user=user_id)
            if change.enabled is not None:
                await s.run(SET_ENABLED, enabled=change.enabled, id=user_id)
            if change.superuser is not None:
                await s.run(SET_SUPERUSER, superuser=change.superuser, id=user_id)
            if hashed is not None or change.enabled is False:
                await s.run(END_OTHER_SESSIONS, user=user_id, keep=keep)
            await self.audit.write(s, audit)
            changed = await s.one(BY_ID, id=user_id)
            assert changed is not None
            return Account.from_row(changed)

        account = await run_write(self.db, work)
        if hashed is not None or change.enabled is not None or change.superuser is not None:
            self.credentials_changed()
            self.permissions_changed()
        return account

    async def delete(self, username: str, audit: AuditEntry) -> None:
        """Delete the user with their namespace, robots, grants, team memberships,
        credentials and sessions. Refused (Conflict) while the namespace still
        holds repositories: those go through repository deletion and garbage collection."""

        async def work(s: DbSession) -> None:
            row = await s.one(BY_NAME, name=username)
            if row is None:
                raise NotFound("no such user")
            account = Account.from_row(row)
            count = int(await s.value(REPOSITORY_COUNT, ns=account.namespace_id))
            if count:
                raise Conflict(
                    f"the namespace {username!r} still holds {count} "
                    f"repositor{'y' if count == 1 else 'ies'}: delete them first"
                )
            for step in DELETE_STEPS:
                await s.run(step, user=account.id, ns=account.namespace_id)
            await self.audit.write(s, audit)

        await run_write(self.db, work)
        self.credentials_changed()
        self.permissions_changed()

    async def revoke_cli_passwords(self, user_id: int, audit: AuditEntry) -> int:
        """Revoke the user's encrypted CLI password(s); the number revoked (audited if any)."""

        async def work(s: DbSession) -> int:
            count = await s.run(REVOKE_CLI, now=utcnow(), user=user_id)
            if count:
                await self.audit.write(s, audit)
            return count

        count = await run_write(self.db, work)
        self.credentials_changed()
        return count
