"""Secrets issued to users: app-specific tokens, the encrypted CLI password, OAuth
access tokens. Each is shown once at creation; only its sha256 is kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.auth import secrets as tokens
from cargohold.auth.roles import API_SCOPES
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.services.audit import AuditEntry, AuditLog

INSERT = sql(
    """INSERT INTO credential (kind, lookup, secret_hash, user_id, title, scopes,
       application_id, created_at, expires_at)
       VALUES (:kind, :lookup, :hash, :user, :title, :scopes, :app, :now, :expires)"""
)
BY_LOOKUP = sql("SELECT id FROM credential WHERE lookup = :lookup")
LIST = sql(
    """SELECT id, kind, lookup, title, scopes, created_at, expires_at, last_used_at, revoked_at
       FROM credential WHERE user_id = :user AND kind = :kind ORDER BY id"""
)
GET = sql(
    """SELECT id, kind, lookup, title, scopes, created_at, expires_at, last_used_at, revoked_at
       FROM credential WHERE user_id = :user AND id = :id"""
)
REVOKE = sql(
    """UPDATE credential SET revoked_at = :now
       WHERE user_id = :user AND id = :id AND revoked_at IS NULL"""
)
REVOKE_KIND = sql(
    """UPDATE credential SET revoked_at = :now
       WHERE user_id = :user AND kind = :kind AND revoked_at IS NULL"""
)


class CredentialError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    id: int
    kind: str
    lookup: str
    title: str
    scopes: tuple[str, ...]
    created_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> CredentialInfo:
        return cls(
            int(row[0]),
            str(row[1]),
            str(row[2]),
            str(row[3]),
            tuple(str(row[4] or "").split()),
            as_datetime(row[5]),
            as_datetime(row[6]),
            as_datetime(row[7]),
            as_datetime(row[8]),
        )

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())


def check_scopes(scopes: list[str]) -> str:
    unknown = sorted(set(scopes) - set(API_SCOPES))
    if unknown:
        raise CredentialError(f"unknown scopes: {', '.join(unknown)}")
    return " ".join(sorted(set(scopes)))


class CredentialService:
    def __init__(self, db: Database, audit: AuditLog, on_change: Callable[[], None]) -> None:
        self.db = db
        self.audit = audit
        self.on_change = on_change  # forget cached verifications (a revoked token fails at once)

    async def issue(
        self,
        kind: str,
        user_id: int,
        *,
        title: str = "",
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        application_id: int | None = None,
        audit: AuditEntry | None = None,
        replace: bool = False,
    ) -> tuple[str, CredentialInfo]:
        """A new secret (returned once) and its record. `replace` revokes the user's
        other secrets of this kind first (the encrypted CLI password: one at a time)."""
        scope_text = check_scopes(scopes or [])
        if len(title) > 255:
            raise CredentialError("title is longer than 255 characters")
        if expires_at is not None and expires_at <= utcnow():
            raise CredentialError("expiration is in the past")
        token, lookup, digest = tokens.issue(kind)

        async def work(session: DbSession) -> CredentialInfo:
            now = utcnow()
            if replace:
                await session.run(REVOKE_KIND, now=now, user=user_id, kind=kind)
            await session.run(
                INSERT,
                kind=kind,
                lookup=lookup,
                hash=digest,
                user=user_id,
                title=title,
                scopes=scope_text,
                app=application_id,
                now=now,
                expires=expires_at,
            )
            cred_id = await session.value(BY_LOOKUP, lookup=lookup)
            row = await session.one(GET, user=user_id, id=cred_id)
            assert row is not None
            if audit is not None:
                audit.details.setdefault("credential_id", cred_id)
                await self.audit.write(session, audit)
            return CredentialInfo.from_row(row)

        info = await run_write(self.db, work)
        if replace:
            self.on_change()
        return token, info

    async def list(self, user_id: int, kind: str) -> list[CredentialInfo]:
        async with self.db.read() as session:
            rows = await session.all(LIST, user=user_id, kind=kind)
        return [CredentialInfo.from_row(r) for r in rows]

    async def get(self, user_id: int, credential_id: int) -> CredentialInfo | None:
        async with self.db.read() as session:
            row = await session.one(GET, user=user_id, id=credential_id)
        return None if row is None else CredentialInfo.from_row(row)

    async def revoke(
        self, user_id: int, credential_id: int, audit: AuditEntry | None = None
    ) -> bool:
        async def work(session: DbSession) -> bool:
            done = await session.run(REVOKE, now=utcnow(), user=user_id, id=credential_id) > 0
            if done and audit is not None:
                await self.audit.write(session, audit)
            return done

        done = await run_write(self.db, work)
        self.on_change()
        return done
