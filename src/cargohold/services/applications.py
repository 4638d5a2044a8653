"""OAuth applications registered in an organization, and the OAuth 2 authorization-code
grant that issues their access tokens.

- A client secret is shown when the application is created or its secret reset; only its
  sha256 is kept (it is a 256-bit random string, so a fast hash is enough).
- Authorization codes live in the `credential` table (kind "oauth", a `code:` lookup
  that no token can have, a 10-minute expiry), so every replica sees them and a code
  works once: exchanging it marks it revoked in the same statement that checks it. A
  code presented again revokes the token issued for it (RFC 6749 section 4.1.2). PKCE
  (S256) is supported: the challenge is kept in the code's row.
- Access tokens are credentials of kind "oauth" (`cho_...`), bearer tokens on /api/v1
  with the scopes granted; they act as the user who approved them, so their rights
  never exceed that user's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cargohold.auth import secrets as tokens
from cargohold.auth.roles import API_SCOPES
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.credentials import CredentialInfo, CredentialService
from cargohold.services.problems import Invalid, NotFound

CODE_LIFETIME = timedelta(minutes=10)
TOKEN_LIFETIME = timedelta(days=90)
MAX_NAME = 255
MAX_DESCRIPTION = 4096
MAX_REDIRECT_URI = 1024
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CODE_PREFIX = "code:"
_CLIENT_ID_CHARS = string.ascii_uppercase + string.digits
_CODE_LOOKUP = 24  # hex characters of a code that find its row

COLUMNS = "a.id, a.name, a.description, a.client_id, a.redirect_uri, a.created_at, n.name"
ORG = sql("SELECT id, kind FROM namespace WHERE name = :name")
LIST = sql(
    f"""SELECT {COLUMNS} FROM oauth_application a JOIN namespace n ON n.id = a.org_id
        WHERE a.org_id = :org ORDER BY a.name, a.id"""
)
GET = sql(
    f"""SELECT {COLUMNS} FROM oauth_application a JOIN namespace n ON n.id = a.org_id
        WHERE a.org_id = :org AND a.client_id = :client_id"""
)
BY_CLIENT_ID = sql(
    f"""SELECT {COLUMNS}, a.client_secret_hash FROM oauth_application a
        JOIN namespace n ON n.id = a.org_id WHERE a.client_id = :client_id"""
)
INSERT = sql(
    """INSERT INTO oauth_application (org_id, name, description, client_id,
       client_secret_hash, redirect_uri, created_at)
       VALUES (:org, :name, :description, :client_id, :hash, :redirect_uri, :now)"""
)
UPDATE = sql(
    """UPDATE oauth_application SET name = :name, description = :description,
       redirect_uri = :redirect_uri WHERE id = :id"""
)
SET_SECRET = sql("UPDATE oauth_application SET client_secret_hash = :hash WHERE id = :id")
DELETE_TOKENS = sql("DELETE FROM credential WHERE application_id = :id")
DELETE = sql("DELETE FROM oauth_application WHERE id = :id")

INSERT_CODE = sql(
    """INSERT INTO credential (kind, lookup, secret_hash, user_id, title, scopes,
       application_id, created_at, expires_at)
       VALUES ('oauth', :lookup, :hash, :user, :title, :scopes, :app, :now, :expires)"""
)
CODE = sql(
    """SELECT id, secret_hash, user_id, scopes, application_id, expires_at, revoked_at, title
       FROM credential WHERE lookup = :lookup AND kind = 'oauth'"""
)
USE_CODE = sql(
    """UPDATE credential SET revoked_at = :now, last_used_at = :now
       WHERE id = :id AND revoked_at IS NULL"""
)
NOTE_CODE = sql("UPDATE credential SET title = :title WHERE id = :id")
REVOKE_TOKEN = sql(
    """UPDATE credential SET revoked_at = :now
       WHERE id = :id AND kind = 'oauth' AND revoked_at IS NULL"""
)


class GrantError(Exception):
    """An OAuth 2 error (RFC 6749 section 5.2): `code` is the `error` field."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True)
class Application:
    id: int
    name: str
    description: str
    client_id: str
    redirect_uri: str
    created_at: datetime | None
    organization: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Application:
        return cls(
            int(row[0]),
            str(row[1]),
            str(row[2] or ""),
            str(row[3]),
            str(row[4] or ""),
            as_datetime(row[5]),
            str(row[6]),
        )


def check_redirect_uri(uri: str) -> str:
    """An absolute https URL (http only on loopback), no fragment, no user info; or ""
    (no redirect: tokens only through the direct generation endpoint)."""
    if uri == "":
        return uri
    if len(uri) > MAX_REDIRECT_URI or any(c.isspace() or ord(c) < 32 for c in uri):
        raise Invalid("redirect_uri must be a URL of at most 1024 characters")
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise Invalid("redirect_uri is not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not host:
        raise Invalid("redirect_uri must be an absolute http(s) URL")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise Invalid("redirect_uri must use https (http only on loopback)")
    if parts.fragment or "#" in uri:
        raise Invalid("redirect_uri must not have a fragment")
    if parts.username is not None or parts.password is not None:
        raise Invalid("redirect_uri must not carry user information")
    return uri


def check_text(value: str, what: str, limit: int, *, required: bool = False) -> str:
    value = value.strip() if required else value
    if required and not value:
        raise Invalid(f"{what} must not be empty")
    if len(value) > limit:
        raise Invalid(f"{what} must be at most {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise Invalid(f"{what} must not contain control characters")
    return value


def check_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    unknown = sorted(set(scopes) - set(API_SCOPES))
    if unknown:
        raise Invalid(f"unknown scopes: {', '.join(unknown)}")
    return sorted(set(scopes))


def _client_id() -> str:
    return "".join(secrets.choice(_CLIENT_ID_CHARS) for _ in range(20))


def _client_secret() -> str:
    return "".join(secrets.choice(_CLIENT_ID_CHARS) for _ in range(40))


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of `verifier` (RFC 7636)."""
    raw = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class ApplicationService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        credentials: CredentialService,
        on_change: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.credentials = credentials
        self.on_change = on_change  # forget cached credentials (deleted apps' tokens)

    # -- applications ---------------------------------------------------------------------

    async def _org(self, s: DbSession, org: str) -> int:
        row = await s.one(ORG, name=org)
        if row is None or row[1] != "org":
            raise NotFound("no such organization")
        return int(row[0])

    async def in_org(self, org: str) -> list[Application]:
        async with self.db.read() as s:
            org_id = await self._org(s, org)
            rows = await s.all(LIST, org=org_id)
        return [Application.from_row(r) for r in rows]

    async def get(self, org: str, client_id: str) -> Application:
        async with self.db.read() as s:
            org_id = await self._org(s, org)
            row = await s.one(GET, org=org_id, client_id=client_id)
        if row is None:
            raise NotFound("no such application")
        return Application.from_row(row)

    async def by_client_id(self, client_id: str) -> Application | None:
        if not client_id or len(client_id) > 64:
            return None
        async with self.db.read() as s:
            row = await s.one(BY_CLIENT_ID, client_id=client_id)
        return None if row is None else Application.from_row(row)

    async def authenticate_client(self, client_id: str, secret: str) -> Application | None:
        """The application when `secret` is its client secret (constant-time compare)."""
        row = None
        if client_id and len(client_id) <= 64:
            async with self.db.read() as s:
                row = await s.one(BY_CLIENT_ID, client_id=client_id)
        expected = str(row[7]) if row is not None else "0" * 64
        if not tokens.same(expected, secret) or row is None:
            return None
        return Application.from_row(row)

    async def create(
        self, org: str, name: str, description: str, redirect_uri: str, audit: AuditEntry
    ) -> tuple[Application, str]:
        """The new application and its client secret (shown once)."""
        name = check_text(name, "name", MAX_NAME, required=True)
        description = check_text(description, "description", MAX_DESCRIPTION)
        redirect_uri = check_redirect_uri(redirect_uri)
        secret = _client_secret()
        client_id = _client_id()

        async def work(s: DbSession) -> Application:
            org_id = await self._org(s, org)
            await s.run(
                INSERT,
                org=org_id,
                name=name,
                description=description,
                client_id=client_id,
                hash=tokens.digest(secret),
                redirect_uri=redirect_uri,
                now=utcnow(),
            )
            row = await s.one(GET, org=org_id, client_id=client_id)
            assert row is not None
            audit.details.update(client_id=client_id, name=name)
            await self.audit.write(s, audit)
            return Application.from_row(row)

        return await run_write(self.db, work), secret

    async def update(
        self,
        org: str,
        client_id: str,
        audit: AuditEntry,
        *,
        name: str | None = None,
        description: str | None = None,
        redirect_uri: str | None = None,
    ) -> Application:
        if name is not None:
            name = check_text(name, "name", MAX_NAME, required=True)
        if description is not None:
            description = check_text(description, "description", MAX_DESCRIPTION)
        if redirect_uri is not None:
            redirect_uri = check_redirect_uri(redirect_uri)

        async def work(s: DbSession) -> Application:
            org_id = await self._org(s, org)
            row = await s.one(GET, org=org_id, client_id=client_id)
            if row is None:
                raise NotFound("no such application")
            app = Application.from_row(row)
            await s.run(
                UPDATE,
                id=app.id,
                name=app.name if name is None else name,
                description=app.description if description is None else description,
                redirect_uri=app.redirect_uri if redirect_uri is None else redirect_uri,
            )
            audit.details.setdefault("client_id", client_id)
            await self.audit.write(s, audit)
            changed = await s.one(GET, org=org_id, client_id=client_id)
            assert changed is not None
            return Application.from_row(changed)

        return await run_write(self.db, work)

    async def delete(self, org: str, client_id: str, audit: AuditEntry) -> None:
        """Delete the application and every token and code issued for it."""

        async def work(s: DbSession) -> None:
            org_id = await self._org(s, org)
            row = await s.one(GET, org=org_id, client_id=client_id)
            if row is None:
                raise NotFound("no such application")
            app_id = int(row[0])
            await s.run(DELETE_TOKENS, id=app_id)
            await s.run(DELETE, id=app_id)
            audit.details.setdefault("client_id", client_id)
            await self.audit.write(s, audit)

        await run_write(self.db, work)
        self.on_change()

    async def reset_secret(
        self, org: str, client_id: str, audit: AuditEntry
    ) -> tuple[Application, str]:
        """A new client secret (shown once); the old one stops working at once. Tokens
        already issued stay valid (revoke them by deleting the application)."""
        secret = _client_secret()

        async def work(s: DbSession) -> Application:
            org_id = await self._org(s, org)
            row = await s.one(GET, org=org_id, client_id=client_id)
            if row is None:
                raise NotFound("no such application")
            await s.run(SET_SECRET, hash=tokens.digest(secret), id=int(row[0]))
            audit.details.setdefault("client_id", client_id)
            await self.audit.write(s, audit)
            return Application.from_row(row)

        return await run_write(self.db, work), secret

    # -- tokens ---------------------------------------------------------------------------

    async def issue_token(
        self, app: Application, user_id: int, scopes: list[str], audit: AuditEntry
    ) -> tuple[str, CredentialInfo]:
        """An access token of `app` acting as the user, with `scopes`."""
        scopes = check_scopes(scopes)
        if not scopes:
            raise Invalid("at least one scope is needed")
        audit.details.update(client_id=app.client_id, scopes=scopes)
        return await self.credentials.issue(
            "oauth",
            user_id,
            title=app.name,
            scopes=scopes,
            expires_at=utcnow() + TOKEN_LIFETIME,
            application_id=app.id,
            audit=audit,
        )

    async def issue_code(
        self, app: Application, user_id: int, scopes: list[str], challenge: str | None
    ) -> str:
        """A single-use authorization code for the user's approval of `scopes`."""
        lookup = secrets.token_hex(_CODE_LOOKUP // 2)
        code = lookup + tokens.new_secret()
        now = utcnow()

        async def work(s: DbSession) -> None:
            await s.run(
                INSERT_CODE,
                lookup=CODE_PREFIX + lookup,
                hash=tokens.digest(code),
                user=user_id,
                title=f"pkce:S256:{challenge}" if challenge else "code",
                scopes=" ".join(check_scopes(scopes)),
                app=app.id,
                now=now,
                expires=now + CODE_LIFETIME,
            )

        await run_write(self.db, work)
        return code

    async def redeem_code(
        self, app: Application, code: str, verifier: str | None
    ) -> tuple[int, list[str], int]:
        """Check and use up `code` for `app`: (user id, scopes, code id). GrantError
        `invalid_grant` for an unknown, expired, used or foreign code."""
        invalid = GrantError("invalid_grant", "the code is invalid, expired or used")
        if len(code) < _CODE_LOOKUP + 32 or len(code) > 256:
            raise invalid
        lookup = CODE_PREFIX + code[:_CODE_LOOKUP]
        now = utcnow()

        async def work(s: DbSession) -> tuple[int, list[str], int] | str:
            row = await s.one(CODE, lookup=lookup)
            if row is None or not tokens.same(str(row[1]), code) or int(row[4]) != app.id:
                return "invalid"
            code_id, user_id, scopes, expires, revoked, title = (
                int(row[0]),
                int(row[2]),
                str(row[3] or "").split(),
                as_datetime(row[5]),
                row[6],
                str(row[7] or ""),
            )
            if revoked is not None:
                # Used before: revoke what it was exchanged for.
                if title.startswith("used:"):
                    await s.run(REVOKE_TOKEN, now=now, id=int(title[5:]))
                return "replayed"
            if expires is None or expires <= now:
                return "invalid"
            if title.startswith("pkce:S256:"):
                if not verifier or not hmac.compare_digest(
                    pkce_challenge(verifier), title[len("pkce:S256:") :]
                ):
                    return "invalid"
            elif verifier:
                return "invalid"  # no challenge was sent with the authorization request
            if await s.run(USE_CODE, now=now, id=code_id) != 1:
                return "invalid"
            return user_id, scopes, code_id

        result = await run_write(self.db, work)
        if result == "replayed":
            self.on_change()
        if isinstance(result, str):
            raise invalid
        return result

    async def note_exchange(self, code_id: int, token_id: int) -> None:
        """Remember which token a code was exchanged for (revoked if the code comes back)."""

        async def work(s: DbSession) -> None:
            await s.run(NOTE_CODE, title=f"used:{token_id}", id=code_id)

        await run_write(self.db, work)
