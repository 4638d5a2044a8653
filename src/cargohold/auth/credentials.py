"""Checking credentials: a name and a secret (HTTP Basic, the token endpoint, API
login) or a bearer token on the API, to a Principal.

The secret may be the user's password (checked by the configured identity provider),
a robot token (name `<namespace>+<robot>`), an app token (name `$app` or the user's),
the encrypted CLI password (the user's name) or an OAuth token (name `$oauthtoken`).
Verified pairs are cached for `credential_cache_seconds`, keyed by a digest of both,
so that CI fleets asking all day cost one argon2 check per minute, not per request.
Failures are counted by LoginThrottle and recorded in the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from cargohold.auth import secrets as tokens
from cargohold.auth.identity import ExternalIdentity, IdentityProvider
from cargohold.auth.principal import Method, Principal, PrincipalKind
from cargohold.auth.throttle import LoginThrottle, keys_for
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool, as_datetime
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.cache import Generation

log = logging.getLogger(__name__)

USER = sql(
    """SELECT id, namespace_id, superuser, enabled, username FROM user_account
       WHERE username = :name"""
)
USER_BY_ID = sql(
    "SELECT id, namespace_id, superuser, enabled, username FROM user_account WHERE id = :id"
)
ROBOT = sql(
    """SELECT r.id, r.namespace_id, r.token_hash FROM robot r
       JOIN namespace n ON n.id = r.namespace_id
       WHERE n.name = :namespace AND r.shortname = :shortname"""
)
CREDENTIAL = sql(
    """SELECT id, kind, secret_hash, user_id, scopes, expires_at, revoked_at
       FROM credential WHERE lookup = :lookup"""
)
TOUCH_CREDENTIAL = sql("UPDATE credential SET last_used_at = :now WHERE id = :id")
TOUCH_USER = sql("UPDATE user_account SET last_login_at = :now WHERE id = :id")
INSERT_NAMESPACE = sql(
    "INSERT INTO namespace (name, kind, created_at) VALUES (:name, 'user', :now)"
)
NAMESPACE_ID = sql("SELECT id, kind FROM namespace WHERE name = :name")
INSERT_USER = sql(
    """INSERT INTO user_account (namespace_id, username, email, password_hash, provider,
       external_id, superuser, enabled, created_at)
       VALUES (:ns, :name, :email, NULL, :provider, :external_id, :superuser, :yes, :now)"""
)
UPDATE_EXTERNAL_USER = sql(
    """UPDATE user_account SET email = :email, external_id = :external_id,
       superuser = COALESCE(:superuser, superuser) WHERE id = :id"""
)
EXTERNAL_USER = sql("SELECT id, provider, external_id FROM user_account WHERE username = :name")


class AuthenticationFailed(Exception):
    """Wrong or unusable credentials. The message is the same for every cause."""

    def __init__(self) -> None:
        super().__init__("invalid username or password")


@dataclass(frozen=True, slots=True)
class Context:
    origin: Origin = field(default_factory=Origin)
    registry: bool = True  # the registry protocol (docker login), not the API or the UI


def _cache_key(username: str, secret: str) -> bytes:
    return hashlib.sha256(f"{username}\0{secret}".encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    def __init__(
        self,
        db: Database,
        provider: IdentityProvider,
        throttle: LoginThrottle,
        audit: AuditLog,
        generation: Generation,
        *,
        superusers: frozenset[str] = frozenset(),
        cache_seconds: float = 60.0,
        refuse_password_on_cli: bool = False,
        delay_after: int = 3,
        delay_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.provider = provider
        self.throttle = throttle
        self.audit = audit
        self.generation = generation
        self.superusers = superusers
        self.cache_seconds = cache_seconds
        self.refuse_password_on_cli = refuse_password_on_cli
        self.delay_after = delay_after
        self.delay_seconds = delay_seconds
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._expiry: dict[int, datetime] = {}  # credential id -> its expiry
        self._pending: dict[bytes, asyncio.Future[Principal]] = {}  # checks under way
        self._seen = generation.current()
        # Called with (principal, identity) after an external provider's sign-in: team sync.
        self.on_external_login: list = []  # type: ignore[type-arg]

    # -- the cache -----------------------------------------------------------------------

    def _cached(self, key: bytes) -> Principal | None:
        now = self.generation.current()
        if now != self._seen:
            self._cache.clear()
            self._seen = now
            return None
        hit = self._cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def _remember(self, snapshot: int, key: bytes, principal: Principal) -> None:
        if snapshot != self._seen or self.cache_seconds <= 0:
            return
        if len(self._cache) > 100_000:
            self._cache.clear()
            self._expiry.clear()
        deadline = time.monotonic() + self.cache_seconds
        expires = self._expiry.get(principal.credential_id or 0)
        if expires is not None:  # a token is never trusted past its own expiry
            deadline = min(deadline, time.monotonic() + (expires - utcnow()).total_seconds())
        self._cache[key] = (deadline, principal)

    def changed(self) -> None:
        """Credentials, users or robots changed: forget every verified credential."""
        self.generation.bump()
        self._cache.clear()
        self._seen = self.generation.current()

    # -- entry points --------------------------------------------------------------------

    async def basic(self, username: str, secret: str, context: Context = Context()) -> Principal:
        """The principal these credentials prove, or AuthenticationFailed."""
        key = _cache_key(username, secret)
        cached = self._cached(key)
        if cached is not None:
            return cached
        # A CI fleet starting at once sends the same credentials many times before the
        # first check ends: check them once, and let the others wait for that answer.
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            principal = await self._basic(key, username, secret, context)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting
            raise
        else:
            future.set_result(principal)
            return principal
        finally:
            del self._pending[key]

    async def _basic(self, key: bytes, username: str, secret: str, context: Context) -> Principal:
        snapshot = self.generation.current()
        throttle_keys = keys_for(username, context.origin.ip)
        locked, failures = await self.throttle.state(throttle_keys)
        principal = None
        if not locked:
            try:
                principal = await self._verify(username, secret, context)
            except Exception:
                # The identity provider (e.g. LDAP) is unreachable or broke: refuse, but do
                # not count it against the account, or an outage would lock everyone out.
                log.exception("credential check failed")
                self.audit.record(
                    AuditEntry(
                        "login_failure",
                        Principal(),
                        context.origin,
                        details={"username": username[:255], "error": "provider unavailable"},
                    )
                )
                raise AuthenticationFailed() from None
        if principal is None:
            await self._failed(username, context, locked, failures)
            raise AuthenticationFailed()
        if failures:
            await self.throttle.succeeded(username)
        self.audit.record(
            AuditEntry(
                "login",
                principal,
                context.origin,
                details={"method": principal.method.value, "registry": context.registry},
            )
        )
        self._remember(snapshot, key, principal)
        return principal

    async def bearer(self, token: str, context: Context = Context()) -> Principal:
        """An API bearer token: an app token or an OAuth token."""
        key = _cache_key("", token)
        cached = self._cached(key)
        if cached is not None:
            return cached
        snapshot = self.generation.current()
        principal = await self._issued_token(token, None)
        if principal is not None and principal.method is Method.CLI_KEY:
            principal = None  # the CLI password stands for a password: not a bearer token
        if principal is None:
            self.audit.record(
                AuditEntry("login_failure", Principal(), context.origin, details={"bearer": True})
            )
            raise AuthenticationFailed()
        self._remember(snapshot, key, principal)
        return principal

    async def _failed(self, username: str, context: Context, locked: bool, failures: int) -> None:
        newly_locked: list[str] = []
        if not locked:
            newly_locked = await self.throttle.failed(keys_for(username, context.origin.ip))
        anonymous = Principal()
        details: dict[str, object] = {"username": username[:255], "locked": locked}
        self.audit.record(AuditEntry("login_failure", anonymous, context.origin, details=details))
        if newly_locked:
            lock_details: dict[str, object] = {
                "username": username[:255],
                "keys": newly_locked,
                "lock_seconds": self.throttle.settings.lock_seconds,
            }
            self.audit.record(
                AuditEntry("account_locked", anonymous, context.origin, details=lock_details)
            )
            # A lock refuses even the right secret: forget the verified ones on this host,
            # or a password checked a moment ago would still pass from the cache.
            self.changed()
        if locked or failures + 1 > self.delay_after:
            await asyncio.sleep(self.delay_seconds)

    # -- the kinds of secrets ------------------------------------------------------------

    async def _verify(self, username: str, secret: str, context: Context) -> Principal | None:
        if not username or not secret or len(username) > 255 or len(secret) > 4096:
            return None
        if "+" in username:
            return await self._robot(username, secret)
        if tokens.parse(secret) is not None:
            expected = None if username in ("$app", "$oauthtoken") else username
            return await self._issued_token(secret, expected)
        if username.startswith("$"):
            return None
        if context.registry and self.refuse_password_on_cli:
            # Still check it, so the answer's timing does not depend on the setting.
            await self.provider.authenticate(username, secret)
            return None
        identity = await self.provider.authenticate(username, secret)
        if identity is None:
            return None
        principal = await self.local_user(identity)
        if principal is not None:
            principal = _with(principal, method=Method.PASSWORD)
        return principal

    async def _robot(self, username: str, secret: str) -> Principal | None:
        namespace, _, shortname = username.partition("+")
        async with self.db.read() as session:
            row = await session.one(ROBOT, namespace=namespace, shortname=shortname)
        expected = row[2] if row is not None else "0" * 64
        if not tokens.same(expected, secret) or row is None:
            return None
        return Principal(
            kind=PrincipalKind.ROBOT,
            name=username,
            id=row[0],
            namespace_id=row[1],
            method=Method.ROBOT_TOKEN,
        )

    async def _issued_token(self, token: str, username: str | None) -> Principal | None:
        parsed = tokens.parse(token)
        if parsed is None:
            return None
        kind, lookup = parsed
        async with self.db.read() as session:
            row = await session.one(CREDENTIAL, lookup=lookup)
            if row is None:
                tokens.same("0" * 64, token)
                return None
            cred_id, row_kind, secret_hash, user_id, scopes, expires_at, revoked_at = row
            user = await session.one(USER_BY_ID, id=user_id)
        if not tokens.same(secret_hash, token) or row_kind != kind or user is None:
            return None
        if revoked_at is not None:
            return None
        expires = as_datetime(expires_at)
        if expires is not None and expires <= utcnow():
            return None
        if expires is not None:
            self._expiry[int(cred_id)] = expires
        principal = self._user_principal(user)
        if principal is None or (username is not None and principal.name != username):
            return None
        method = {"app": Method.APP_TOKEN, "cli": Method.CLI_KEY, "oauth": Method.OAUTH}[kind]
        # The CLI password stands for the password itself: no scope limits.
        scope_set = None if kind == "cli" else frozenset(str(scopes or "").split())
        await self._touch(TOUCH_CREDENTIAL, cred_id)
        return _with(principal, method=method, credential_id=cred_id, scopes=scope_set)

    async def _touch(self, statement: object, row_id: int) -> None:
        async def work(session: DbSession) -> None:
            await session.run(statement, now=utcnow(), id=row_id)  # type: ignore[arg-type]

        try:
            await run_write(self.db, work)
        except Exception:  # last-used times are informative; never fail a login on them
            log.warning("could not record last use", exc_info=True)

    def _user_principal(self, row: tuple[object, ...]) -> Principal | None:
        user_id, ns_id, superuser, enabled, name = row
        if not as_bool(enabled):
            return None
        return Principal(
            kind=PrincipalKind.USER,
            name=str(name),
            id=int(user_id),  # type: ignore[call-overload]
            namespace_id=int(ns_id),  # type: ignore[call-overload]
            superuser=as_bool(superuser) or str(name) in self.superusers,
        )

    async def user(self, username: str) -> Principal | None:
        """The principal of an existing, enabled local user."""
        async with self.db.read() as session:
            row = await session.one(USER, name=username)
        return None if row is None else self._user_principal(row)

    async def user_by_id(self, user_id: int) -> Principal | None:
        async with self.db.read() as session:
            row = await session.one(USER_BY_ID, id=user_id)
        return None if row is None else self._user_principal(row)

    async def local_user(self, identity: ExternalIdentity) -> Principal | None:
        """The local user for a provider's identity: created at first sign-in for
        external providers, updated (email, superuser) at each. The identity names its
        provider (OIDC sign-ins) or else it is the configured one."""
        provider = identity.provider or self.provider.name
        if provider == "database":
            principal = await self.user(identity.username)
        else:
            principal = await self._sync_external(identity, provider)
            if principal is not None:
                for hook in self.on_external_login:
                    await hook(principal, identity)
        if principal is not None:
            await self._touch(TOUCH_USER, principal.id or 0)
        return principal

    async def _sync_external(self, identity: ExternalIdentity, provider: str) -> Principal | None:
        now = utcnow()

        async def work(session: DbSession) -> None:
            row = await session.one(EXTERNAL_USER, name=identity.username)
            if row is not None and (
                row[1] != provider
                # An OIDC subject is the stable identity; the username claim may move.
                or (provider == "oidc" and row[2] != identity.external_id)
            ):
                raise LookupError("the name belongs to another account")
            if row is None:
                ns = await session.one(NAMESPACE_ID, name=identity.username)
                if ns is not None:
                    raise LookupError("the name is taken by an organization")
                await session.run(INSERT_NAMESPACE, name=identity.username, now=now)
                ns_id = await session.value(NAMESPACE_ID, name=identity.username)
                await session.run(
                    INSERT_USER,
                    ns=ns_id,
                    name=identity.username,
                    email=identity.email,
                    provider=provider,
                    external_id=identity.external_id,
                    superuser=bool(identity.superuser),
                    yes=True,
                    now=now,
                )
            else:
                await session.run(
                    UPDATE_EXTERNAL_USER,
                    email=identity.email,
                    external_id=identity.external_id,
                    superuser=identity.superuser,
                    id=row[0],
                )

        try:
            await run_write(self.db, work)
        except LookupError as exc:
            log.warning("%s user %s refused: %s", provider, identity.username, exc)
            return None
        return await self.user(identity.username)


def _with(p: Principal, **changes: object) -> Principal:
    from dataclasses import replace

    return replace(p, **changes)  # type: ignore[arg-type]
