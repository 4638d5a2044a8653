"""Password sign-in when the users live elsewhere (LDAP, OpenID Connect).

The database always remains for superusers (the initial admin, `cargohold user create
--superuser`, names in `auth.superusers`): their local password keeps working, so an
administrator can still sign in when the directory is down or misconfigured. Every other
name goes to the external provider, never to a local password: a local account that is
not a superuser cannot sign in with a password, and an external user can never take
over a local account of the same name (the Authenticator refuses an identity whose
provider differs from the account's)."""

from __future__ import annotations

from cargohold.auth.identity import ExternalIdentity, IdentityProvider
from cargohold.auth.passwords import verify_password
from cargohold.db.session import Database
from cargohold.db.sql import sql
from cargohold.db.values import as_bool


class LdapUnavailable(Exception):
    """The directory could not be asked (service bind, StartTLS, search error). Defined
    here rather than in auth/ldap.py so that catching it does not import ldap3 (5 MiB in
    every worker that never talks LDAP)."""


LOCAL_ACCOUNT = sql(
    """SELECT password_hash, email, provider, superuser FROM user_account
       WHERE username = :name AND enabled = :yes"""
)


class NoPasswords:
    """OpenID Connect users sign in through the browser (web/oidc.py), never with a
    password: on the registry protocol they use app tokens or the encrypted CLI password."""

    name = "oidc"

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        return None


class LocalSuperusersFirst:
    """`external` for everyone, except local superusers, who keep their local password."""

    def __init__(
        self, db: Database, external: IdentityProvider, superusers: frozenset[str] = frozenset()
    ) -> None:
        self.db = db
        self.external = external
        self.superusers = superusers
        self.name = external.name

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        async with self.db.read() as session:
            row = await session.one(LOCAL_ACCOUNT, name=username, yes=True)
        if row is None or row[2] != "database":
            return await self.external.authenticate(username, password)
        stored, email = row[0], row[1]
        if not (as_bool(row[3]) or username in self.superusers):
            stored = None  # a local account that is not a superuser: no password sign-in
        if not await verify_password(stored, password) or stored is None:
            return None
        return ExternalIdentity(username=username, email=email, provider="database")
