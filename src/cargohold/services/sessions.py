"""Browser sessions: a random id in an HttpOnly cookie (the table keeps its sha256) and a
CSRF token the page sends back in a header on every change."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from cargohold.auth import secrets as tokens
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime

COOKIE = "cargohold_session"
CSRF_HEADER = "x-csrf-token"
LIFETIME = timedelta(hours=12)

INSERT = sql(
    """INSERT INTO web_session (id_hash, user_id, csrf_token, created_at, expires_at)
       VALUES (:id_hash, :user, :csrf, :now, :expires)"""
)
GET = sql("SELECT user_id, csrf_token, expires_at FROM web_session WHERE id_hash = :id_hash")
DELETE = sql("DELETE FROM web_session WHERE id_hash = :id_hash")
DELETE_USER = sql("DELETE FROM web_session WHERE user_id = :user")
PURGE = sql("DELETE FROM web_session WHERE expires_at < :now")


@dataclass(frozen=True, slots=True)
class WebSession:
    user_id: int
    csrf_token: str


class SessionService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self, user_id: int) -> tuple[str, WebSession]:
        """A new session: (cookie value, session)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()

        async def work(s: DbSession) -> None:
            await s.run(
                INSERT,
                id_hash=tokens.digest(session_id),
                user=user_id,
                csrf=csrf,
                now=now,
                expires=now + LIFETIME,
            )

        await run_write(self.db, work)
        return session_id, WebSession(user_id, csrf)

    async def find(self, session_id: str) -> WebSession | None:
        if not session_id or len(session_id) > 128:
            return None
        async with self.db.read() as s:
            row = await s.one(GET, id_hash=tokens.digest(session_id))
        if row is None:
            return None
        expires = as_datetime(row[2])
        if expires is None or expires <= utcnow():
            return None
        return WebSession(int(row[0]), str(row[1]))

    async def end(self, session_id: str) -> None:
        async def work(s: DbSession) -> None:
            await s.run(DELETE, id_hash=tokens.digest(session_id))

        await run_write(self.db, work)

    async def end_all(self, user_id: int) -> None:
        async def work(s: DbSession) -> None:
            await s.run(DELETE_USER, user=user_id)

        await run_write(self.db, work)

    async def purge(self) -> None:
        async def work(s: DbSession) -> None:
            await s.run(PURGE, now=utcnow())

        await run_write(self.db, work)
