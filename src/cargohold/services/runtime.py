"""The Runtime: settings, adapters and services wired once, handed to entry points."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold.auth.access import AccessService
from cargohold.auth.credentials import Authenticator
from cargohold.auth.identity import DatabaseProvider, IdentityProvider
from cargohold.auth.keys import KeyRing, load_or_create_secret_key
from cargohold.auth.permissions import PermissionCache, Permissions
from cargohold.auth.throttle import LoginThrottle
from cargohold.auth.tokens import RegistryTokens
from cargohold.db.session import Database
from cargohold.services.audit import AuditLog
from cargohold.services.blobs import BlobService
from cargohold.services.cache import (
    Generation,
    MetadataCache,
    SharedFileGeneration,
    TickingGeneration,
)
from cargohold.services.credentials import CredentialService
from cargohold.services.listings import ListingService
from cargohold.services.manifests import ManifestService
from cargohold.services.placements import BlobSources
from cargohold.services.repositories import RepositoryCreator
from cargohold.services.sessions import SessionService
from cargohold.services.teamsync import TeamSync
from cargohold.services.uploads import UploadService
from cargohold.services.usage import Quotas
from cargohold.services.users import UserService
from cargohold.settings import Settings
from cargohold.storage.driver import StorageDriver
from cargohold.storage.locations import StorageLocations

if TYPE_CHECKING:
    from cargohold.shared.state import RedisState


@dataclass
class Runtime:
    settings: Settings
    db: Database
    storage: StorageDriver
    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    listings: ListingService

    cache: MetadataCache
    audit: AuditLog
    users: UserService
    permissions: Permissions
    authenticator: Authenticator
    tokens: RegistryTokens
    access: AccessService
    throttle: LoginThrottle
    credentials: CredentialService
    sessions: SessionService
    creator: RepositoryCreator
    teamsync: TeamSync
    quotas: Quotas
    # Every storage location by name; `storage` is the primary one (uploads in progress,
    # a new blob's first copy), the only one unless storage.locations adds more.
    locations: StorageLocations
    sources: BlobSources  # where blob downloads read from
    redis: RedisState | None = None  # with redis.url (shared/)

    @classmethod
    def build(
        cls, settings: Settings, db: Database, storage: StorageDriver | StorageLocations
    ) -> Runtime:
        reg = settings.registry
        if isinstance(storage, StorageLocations):
            locations = storage
        else:
            locations = StorageLocations.single(storage, settings.storage.name)
        storage = locations.primary
        # Worker processes of one host share the invalidation counter through a file.
        run = Path(settings.data_dir) / "run"
        cache_generation: Generation = SharedFileGeneration(run / "cache-gen")
        auth = settings.auth
        audit = AuditLog(db, log_pulls=auth.audit.log_pulls)
        # Permission and credential answers: dropped on this host's changes at once.
        auth_generation: Generation = SharedFileGeneration(run / "auth-gen")
        throttle = LoginThrottle(db, auth.lockout)
        exclusive = storage.exclusive
        redis = None
        if not settings.redis.url and not db.sqlite:
            # Other hosts may share this database, and nothing would tell us of their
            # changes: bound how long a cached answer lives instead.
            stale = settings.cache.max_stale_seconds
            cache_generation = TickingGeneration(cache_generation, stale)
            auth_generation = TickingGeneration(auth_generation, stale)
        if settings.redis.url:  # the client library is imported only then
            from cargohold.shared.locks import RedisLocks
            from cargohold.shared.state import RedisState
            from cargohold.shared.throttle import RedisLoginThrottle

            # ...and, with Redis, on every replica's (ARCHITECTURE.md, "Caches").
            redis = RedisState(settings.redis, run)
            cache_generation = redis.generation("cache", cache_generation)
            auth_generation = redis.generation("auth", auth_generation)
            throttle = RedisLoginThrottle(db, auth.lockout, redis)
            if settings.redis.upload_locks:
                locks = RedisLocks(redis, settings.redis.lock_seconds, storage.exclusive)
                exclusive = locks.exclusive
        cache = MetadataCache(cache_generation)
        permissions = Permissions(
            db, PermissionCache(auth_generation, float(auth.credential_cache_seconds))
        )
        authenticator = Authenticator(
            db,
            identity_provider(settings, db),
            throttle,
            audit,
            auth_generation,
            superusers=frozenset(auth.superusers),
            cache_seconds=float(auth.credential_cache_seconds),
            refuse_password_on_cli=auth.refuse_password_on_cli,
            delay_after=auth.lockout.delay_after,
            delay_seconds=auth.lockout.delay_seconds,
        )
        teamsync = TeamSync(settings, db, audit, permissions)
        authenticator.on_external_login.append(teamsync.at_login)
        secret = load_or_create_secret_key(auth.secret_key.get_secret_value(), settings.data_dir)
        ttl = timedelta(seconds=auth.token_ttl_seconds)
        keys = KeyRing(
            db,
            secret,
            timedelta(days=auth.key_rotation_days),
            ttl,
            refresh_seconds=auth.key_refresh_seconds,
        )
        creator = RepositoryCreator(db, audit, public_by_default=auth.new_repositories_public)
        quotas = Quotas.from_settings(db, audit, settings.quota)
        return cls(
            settings=settings,
            db=db,
            storage=storage,
            blobs=BlobService(db, cache, creator, quotas),
            uploads=UploadService(
                db,
                storage,
                creator,
                max_blob_bytes=reg.max_blob_bytes,
                quotas=quotas,
                deletion_lease_seconds=settings.gc.deletion_lease_seconds,
                exclusive=exclusive,
                locations=locations,
            ),
            manifests=ManifestService(
                db,
                cache,
                audit,
                creator,
                max_manifest_bytes=reg.max_manifest_bytes,
                # Config blobs (for their labels) from whichever location has them.
                storage=locations if locations.several else storage,
            ),
            listings=ListingService(db, cache),
            cache=cache,
            audit=audit,
            users=UserService(db, audit),
            permissions=permissions,
            authenticator=authenticator,
            tokens=RegistryTokens(keys, auth.service, auth.service, ttl),
            access=AccessService(permissions),
            throttle=throttle,
            credentials=CredentialService(db, audit, authenticator.changed),
            sessions=SessionService(db),
            creator=creator,
            teamsync=teamsync,
            quotas=quotas,
            locations=locations,
            sources=BlobSources(db, locations),
            redis=redis,
        )

    def start(self) -> None:
        """Background work of a serving process (in its event loop): with Redis, the
        invalidation listener."""
        if self.redis is not None:
            self.redis.start()

    async def close(self) -> None:
        await self.audit.flush()
        if self.redis is not None:
            await self.redis.close()
        await self.db.dispose()


def identity_provider(settings: Settings, db: Database) -> IdentityProvider:
    """The configured provider of password sign-in. OIDC signs in through the browser,
    so on the CLI its users use app tokens or the encrypted CLI password. With LDAP or
    OIDC, local superusers keep their database password (auth/external.py)."""
    if settings.auth.provider == "database":
        return DatabaseProvider(db)
    from cargohold.auth.external import LocalSuperusersFirst, NoPasswords

    external: IdentityProvider = NoPasswords()
    if settings.auth.provider == "ldap":
        from cargohold.auth.ldap import LdapProvider

        external = LdapProvider(settings.auth.ldap)
    return LocalSuperusersFirst(db, external, frozenset(settings.auth.superusers))
