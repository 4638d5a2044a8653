"""Identity providers: who may sign in with a password, behind one interface.

The database provider checks the local password hash. LDAP binds as the user against
the directory; OIDC signs in through the browser only (web/oidc). Whatever the provider,
a signed-in user gets a local user row (created on first sign-in), and robots and
superusers always live in the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cargohold.auth.passwords import verify_password
from cargohold.db.session import Database
from cargohold.db.sql import sql


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """What a provider says about a user who proved their password."""

    username: str
    email: str | None = None
    external_id: str | None = None
    # None: the provider does not decide (the local flag is kept as it is).
    superuser: bool | None = None
    groups: frozenset[str] = field(default_factory=frozenset)  # for team sync
    # Who vouches for the user: "database", "ldap", "oidc". None: the authenticator's
    # configured provider (OIDC sign-ins say "oidc" whatever provider checks passwords).
    provider: str | None = None


class IdentityProvider(Protocol):
    name: str

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        """The identity when the password is right; None otherwise (never says which part
        was wrong)."""
        ...


USER_PASSWORD = sql(
    "SELECT password_hash, email FROM user_account WHERE username = :name AND enabled = :yes"
)


class DatabaseProvider:
    name = "database"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        async with self.db.read() as session:
            row = await session.one(USER_PASSWORD, name=username, yes=True)
        stored = row[0] if row is not None else None
        if not await verify_password(stored, password):
            return None
        assert row is not None
        return ExternalIdentity(username=username, email=row[1])
