"""One typed settings tree, validated whole at start-up.

Sources, lowest first: defaults, an optional YAML file, then CARGOHOLD_* environment
variables with `__` for nesting (CARGOHOLD_DATABASE__URL). Unknown keys are errors."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class SettingsError(Exception):
    """The configuration is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = False
    # On SIGTERM (or Ctrl-C) the server stops accepting connections at once and lets the
    # requests in flight (an upload's PATCH or PUT) finish for up to this long; then the
    # background work stops (jobs.stop_seconds) and whatever is left is killed.
    shutdown_timeout_seconds: int = Field(30, ge=1, le=86400)
    # Addresses or networks of the load balancers in front (e.g. ["10.0.0.0/8"]): only
    # from them are X-Forwarded-For and X-Forwarded-Proto believed. Empty: from no one.
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values


class DatabaseSettings(_Strict):
    # Empty means SQLite at <data_dir>/cargohold.db.
    url: str = ""
    pool_size: int = Field(10, ge=1, le=200)
    echo: bool = False
    # SQLite only. "normal": a commit survives the process being killed; "full": it also
    # survives power loss (an fsync per commit, run off the event loop).
    sqlite_synchronous: Literal["normal", "full"] = "normal"


class FilesystemStorageSettings(_Strict):
    # Empty means <data_dir>/storage.
    root: str = ""
    fsync: bool = True


class S3StorageSettings(_Strict):
    """Any S3-compatible service (docs/configuration.md, "S3 storage")."""

    endpoint_url: str = ""  # empty: AWS S3 in `region`
    region: str = "us-east-1"
    bucket: str = ""
    prefix: str = ""  # the root directory inside the bucket
    access_key: str = ""  # empty (with secret_key): boto3's own chain (environment, IAM role)
    secret_key: SecretStr = SecretStr("")
    addressing: Literal["auto", "path", "virtual"] = "auto"
    redirect: bool = False  # blob GET: 307 to a presigned URL instead of proxying the bytes
    presign_seconds: int = Field(1200, ge=1, le=7 * 86400)
    multipart_part_bytes: int = Field(16 * 1024**2, ge=5 * 1024**2, le=1024**3)
    max_pool_connections: int = Field(32, ge=1, le=512)
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(5, ge=1, le=20)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    # "lease": one writer per upload across replicas through conditional PUTs (If-None-Match);
    # "local": this process only (one replica, or a service without conditional writes).
    upload_locks: Literal["lease", "local"] = "lease"
    lease_seconds: float = Field(30.0, ge=1.0, le=3600.0)


# A storage location's name: what `blob_placement.location` records.
LOCATION_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class StorageLocationSettings(_Strict):
    """One place blob bytes live: a driver and its settings."""

    driver: Literal["filesystem", "memory", "s3"] = "filesystem"
    filesystem: FilesystemStorageSettings = FilesystemStorageSettings()
    s3: S3StorageSettings = S3StorageSettings()

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> StorageLocationSettings:
        if self.driver == "s3" and not self.s3.bucket:
            raise ValueError("storage.driver s3 needs storage.s3.bucket")
        return self


class StorageSettings(StorageLocationSettings):
    """The default location (this section's own driver), and more named locations
    (ARCHITECTURE.md, "Storage locations"; docs/configuration.md)."""

    name: str = Field("default", pattern=LOCATION_NAME)  # the default location's
    locations: dict[str, StorageLocationSettings] = {}
    # Where a new blob is written, the first synchronously with its upload's bytes (and
    # where uploads in progress live), the others copied before the push is answered.
    # Empty: the default location only.
    write_to: list[str] = []
    # Which locations blob downloads read first, when several hold a blob; the others
    # follow in the order write_to, the default, then the rest.
    read_preference: list[str] = []

    @model_validator(mode="after")
    def _locations_known(self) -> StorageSettings:
        for name in self.locations:
            if not re.fullmatch(LOCATION_NAME, name):
                raise ValueError(
                    f"storage location name {name!r}: lowercase letters, digits, - and _"
                )
        if self.name in self.locations:
            raise ValueError(f"storage.locations.{self.name} is the default location's name")
        known = {self.name, *self.locations}
        for field in ("write_to", "read_preference"):
            names: list[str] = getattr(self, field)
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"storage.{field} names unknown locations: {', '.join(unknown)} "
                    f"(configured: {', '.join(sorted(known))})"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"storage.{field} names a location twice")
        return self

    @property
    def writes(self) -> list[str]:
        """The locations new blobs are written to, the first holding uploads."""
        return self.write_to or [self.name]


class RegistrySettings(_Strict):
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_blob_bytes: int = Field(64 * 1024**3, ge=1)
    max_page_size: int = Field(1000, ge=1, le=100_000)
    # tags/list without `n` answers the whole list up to this many tags (as Distribution
    # does, and as clients that never follow Link headers expect), then pages.
    max_tag_list: int = Field(100_000, ge=1, le=1_000_000)
    upload_max_age_seconds: int = Field(24 * 3600, ge=1)
    upload_purge_interval_seconds: int = Field(3600, ge=1)


class LdapSettings(_Strict):
    url: str = ""  # ldap://host:389 or ldaps://host:636
    start_tls: bool = False
    ca_cert_file: str = ""  # verify the server against this CA (default: system CAs)
    bind_dn: str = ""
    bind_password: SecretStr = SecretStr("")
    base_dn: str = ""  # where users are searched
    group_base_dn: str = ""  # where groups are searched (empty: base_dn)
    user_filter: str = "(objectClass=inetOrgPerson)"
    uid_attribute: str = "uid"
    email_attribute: str = "mail"
    superuser_filter: str = ""  # users matching it are superusers
    group_member_attribute: str = "member"  # on the group entry, holding user DNs
    team_sync_interval_seconds: int = Field(3600, ge=1)
    timeout_seconds: int = Field(10, ge=1)


class OidcSettings(_Strict):
    issuer: str = ""  # discovery at <issuer>/.well-known/openid-configuration
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    scopes: list[str] = ["openid", "profile", "email"]
    username_claim: str = "preferred_username"
    email_claim: str = "email"
    groups_claim: str = "groups"
    display_name: str = "Single sign-on"
    # The callback URL registered with the provider (https://HOST/oauth2/oidc/callback);
    # empty: derived from each request's scheme and Host.
    redirect_uri: str = ""


class LockoutSettings(_Strict):
    # Failed logins per account or per address within the window slow the next attempts
    # down, then lock them out for `lock_seconds`.
    max_failures: int = Field(5, ge=1)  # per account name
    # Per client address: higher, since many users may share one address (NAT, proxies).
    max_failures_per_address: int = Field(50, ge=1)
    window_seconds: int = Field(900, ge=1)
    lock_seconds: int = Field(900, ge=1)
    delay_after: int = Field(3, ge=0)  # failures before each answer is delayed
    delay_seconds: float = Field(1.0, ge=0)


class AuditSettings(_Strict):
    log_pulls: bool = True
    retention_days: int = Field(365, ge=0)  # 0: keep for ever
    # How often entries older than retention_days are deleted (in batches).
    retention_check_seconds: float = Field(3600.0, gt=0)


class AuthSettings(_Strict):
    provider: Literal["database", "ldap", "oidc"] = "database"
    # Users named here are superusers whatever the database says.
    superusers: list[str] = []
    # Created as a superuser on start when no user exists yet (like Harbor's initial
    # admin password). Empty: `serve` generates one into <data_dir>/initial-admin-password.
    initial_admin_user: str = "admin"
    initial_admin_password: SecretStr = SecretStr("")
    # Encrypts signing keys at rest. Empty: generated into <data_dir>/run/secret-key.
    secret_key: SecretStr = SecretStr("")
    service: str = "cargohold"  # the `service` of registry tokens
    # The token endpoint's public URL; empty: derived from each request's Host.
    realm: str = ""
    token_ttl_seconds: int = Field(300, ge=30, le=86400)
    key_rotation_days: int = Field(30, ge=1)
    # How often each process re-reads the signing keys from the database (a key deleted
    # there stops verifying tokens within this time).
    key_refresh_seconds: float = Field(60.0, gt=0, le=3600)
    new_repositories_public: bool = False
    # Refuse real passwords on the registry protocol (docker login): CLI users must use
    # an app token, the encrypted CLI password or a robot.
    refuse_password_on_cli: bool = False
    # How long a verified password or token is trusted without checking it again.
    credential_cache_seconds: int = Field(60, ge=0, le=3600)
    user_creation: bool = True  # may new users sign up through the API?
    ldap: LdapSettings = LdapSettings()
    oidc: OidcSettings = OidcSettings()
    lockout: LockoutSettings = LockoutSettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _provider_configured(self) -> AuthSettings:
        missing: list[str] = []
        if self.provider == "ldap":
            ldap = self.ldap
            missing = [f"ldap.{k}" for k in ("url", "base_dn", "bind_dn") if not getattr(ldap, k)]
        elif self.provider == "oidc":
            missing = [f"oidc.{k}" for k in ("issuer", "client_id") if not getattr(self.oidc, k)]
        if missing:
            raise ValueError(f"auth.provider {self.provider} needs {', '.join(missing)}")
        return self


class TagSettings(_Strict):
    # The time machine: how long an ended tag stays restorable, unless its namespace sets
    # its own window (0 allowed: nothing is kept).
    time_machine_seconds: int = Field(14 * 86400, ge=0)
    # How often tags whose expiry passed are ended (reads hide them on time regardless).
    expiry_check_seconds: float = Field(1.0, gt=0)


class GcSettings(_Strict):
    enabled: bool = True  # inside `serve`; `cargohold worker` runs it apart
    interval_seconds: float = Field(5.0, gt=0)  # pause between passes
    batch_size: int = Field(200, ge=1, le=10_000)  # rows per transaction
    # Nothing younger than this is collected: an untagged manifest just pushed by digest, a
    # blob just uploaded or linked (ARCHITECTURE.md, garbage collection).
    grace_seconds: int = Field(3600, ge=0)
    # A collector that marked a blob for deletion and did not finish within this time is
    # presumed dead: a push of the same bytes takes the blob back.
    deletion_lease_seconds: int = Field(60, ge=1)
    dry_run: bool = False
    # After each step (a scan, a batch) the collector rests this many times as long as the
    # step took: 1 leaves about half of a serving process to requests; 0 runs flat out.
    pace: float = Field(1.0, ge=0, le=100)


class JobSettings(_Strict):
    """Background jobs and periodic tasks (ARCHITECTURE.md, "Background jobs")."""

    # `serve` runs them too; false for web nodes beside `cargohold worker` processes.
    run_in_web: bool = True
    # Longest pause between two looks for due jobs when idle (shorter right after work,
    # and at once when this process enqueues one); also how often periodic tasks are read.
    poll_seconds: float = Field(2.0, gt=0, le=60)
    # A claimed job (or a running periodic task) is leased this long and renewed every
    # third of it; a worker that died loses it after this time, and another takes over.
    lease_seconds: float = Field(60.0, ge=1, le=3600)
    concurrency: int = Field(4, ge=1, le=256)  # jobs one process runs at once
    # Retries wait base x 2^(attempt-1), at most max, with jitter (between half and all).
    retry_base_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    retention_days: int = Field(7, ge=1)  # finished (done, failed) jobs are then deleted
    # On SIGTERM, running jobs get this long to finish; then they are released (queued
    # again without counting an attempt) for another worker. Periodic tasks are cut at once.
    stop_seconds: float = Field(5.0, ge=0, le=3600)
    # Test-only job kinds and periodic tasks (jobs/testing.py); never in production.
    test_kinds: bool = False


class QuotaSettings(_Strict):
    # Applied to namespaces that have none of their own; None: no limit.
    default_bytes: int | None = Field(None, ge=0)
    default_warning_percent: int = Field(80, ge=1, le=100)


class MetricsSettings(_Strict):
    """Prometheus metrics at GET /metrics (docs/operations.md)."""

    enabled: bool = True
    # A bearer token scrapers must send; empty: /metrics answers only requests from a
    # loopback address that did not come through a proxy (no Forwarded/X-Forwarded-For).
    token: SecretStr = SecretStr("")


class RedisSettings(_Strict):
    """Optional Redis shared by every replica (docs/configuration.md, "Redis")."""

    # redis://[[USER]:PASSWORD@]HOST:6379/DB, rediss:// (TLS) or unix://PATH; empty: no
    # Redis (caches are invalidated per host, throttle counters and locks as without it).
    url: str = ""
    # Put in front of every key and channel, so several registries can share one Redis.
    key_prefix: str = "cargohold:"
    connect_timeout_seconds: float = Field(1.0, gt=0, le=60)
    # A command, or the invalidation channel's heartbeat, unanswered this long: Redis is
    # taken as down (the caches fall back to `degraded_cache_seconds`).
    timeout_seconds: float = Field(1.0, gt=0, le=60)
    # While the invalidation channel is down, cached tag resolutions, permissions and
    # verified credentials are reused this long at most (0: not cached at all).
    degraded_cache_seconds: float = Field(1.0, ge=0, le=3600)
    # Requests on one upload are serialized by a Redis lock instead of the storage driver's.
    upload_locks: bool = True
    # A lock not renewed this long (its holder died) expires; holders renew every third.
    lock_seconds: float = Field(30.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _known_scheme(self) -> RedisSettings:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis.url must be redis://, rediss:// or unix://")
        return self


class CacheSettings(_Strict):
    # Several hosts on one PostgreSQL database without Redis learn nothing of each other's
    # changes: their in-memory caches then keep no answer longer than this. Ignored on
    # SQLite (one host) and with redis.url (changes are announced at once).
    max_stale_seconds: float = Field(5.0, gt=0, le=3600)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CARGOHOLD_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: str = "./var"
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    registry: RegistrySettings = RegistrySettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    tags: TagSettings = TagSettings()
    gc: GcSettings = GcSettings()
    jobs: JobSettings = JobSettings()
    quota: QuotaSettings = QuotaSettings()
    metrics: MetricsSettings = MetricsSettings()
    redis: RedisSettings = RedisSettings()

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        data = Path(self.data_dir)
        if not self.database.url:
            self.database.url = f"sqlite:///{(data / 'cargohold.db').as_posix()}"
        if not self.storage.filesystem.root:
            self.storage.filesystem.root = str(data / "storage")
        for name, location in self.storage.locations.items():
            if not location.filesystem.root:
                location.filesystem.root = str(data / f"storage-{name}")
        if not self.database.url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("database.url must be sqlite:///PATH or postgresql://...")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the file, which is passed as init values.
        return (env_settings, init_settings)

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets hidden, for `config check`."""
        out = self.model_dump(mode="json")  # SecretStr fields come out as ******
        for section in ("database", "redis"):
            url: str = out[section]["url"]
            if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
                scheme, rest = url.split("//", 1)
                user = rest.split(":", 1)[0]
                out[section]["url"] = f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
        return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate everything; raise SettingsError with every problem listed."""
    values: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for key, value in overrides.items():
        values[key] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc


__all__ = ["InitSettingsSource", "Settings", "SettingsError", "load_settings"]
