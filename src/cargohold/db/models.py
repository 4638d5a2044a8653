"""The registry's tables.

Blobs are global and content-addressed; `repository_blob` links say which repository
may serve which blob. Manifests belong to one repository and keep their exact bytes.
`manifest_blob` and `manifest_child` record references, so garbage collection can work
by reference counting. Tags are rows with a lifetime: moving a tag ends the old row and
starts a new one, which is the tag history the time machine needs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cargohold.db.base import Base, BigId, UTCDateTime, utcnow


def _name(length: int) -> String:
    """Names sort bytewise on both databases (the OCI pagination order): SQLite's BINARY
    collation is the default; PostgreSQL's default follows the locale, so ask for "C"."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Namespace(Base):
    """A user's own namespace or an organization's: one space of names for both."""

    __tablename__ = "namespace"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(8), default="org", server_default="org")
    email: Mapped[str | None] = mapped_column(String(255))  # an organization's contact
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How long ended tags stay restorable (the time machine); None: the configured default.
    time_machine_seconds: Mapped[int | None] = mapped_column(Integer)
    # Storage quota: bytes of distinct blobs linked into its repositories (docs/quotas.md).
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_warning_percent: Mapped[int | None] = mapped_column(Integer)
    quota_warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Repository(Base):
    __tablename__ = "repository"
    __table_args__ = (
        # Partial: only the collector looks for deleted repositories, and a full index
        # tempts SQLite's planner away from the name order the catalog pages walk.
        Index(
            "ix_repository_deleted",
            "deleted_at",
            sqlite_where=text("deleted_at IS NOT NULL"),
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"), index=True)
    name: Mapped[str] = mapped_column(_name(255), unique=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Bytes of distinct blobs linked into it.
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Last push or tag change: the lists' "last modified" without reading the history.
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Deleted by a user: renamed out of the way at once, its content purged by the collector.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Blob(Base):
    __tablename__ = "blob"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[str] = mapped_column(String(150), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last time a push published these bytes: the collector leaves younger blobs alone.
    touched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Set by the collector while it deletes the bytes (ARCHITECTURE.md, garbage collection).
    deleting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RepositoryBlob(Base):
    __tablename__ = "repository_blob"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True
    )
    blob_id: Mapped[int] = mapped_column(ForeignKey("blob.id"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Manifest(Base):
    __tablename__ = "manifest"
    __table_args__ = (
        UniqueConstraint("repository_id", "digest"),
        Index("ix_manifest_subject", "repository_id", "subject_digest"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(150))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255))
    subject_digest: Mapped[str | None] = mapped_column(String(150))
    size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ManifestBlob(Base):
    __tablename__ = "manifest_blob"
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True
    )
    blob_id: Mapped[int] = mapped_column(ForeignKey("blob.id"), primary_key=True, index=True)


class ManifestChild(Base):
    __tablename__ = "manifest_child"
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True
    )
    child_id: Mapped[int] = mapped_column(ForeignKey("manifest.id"), primary_key=True, index=True)


class Tag(Base):
    """A tag's lifetime. The live tag is the row with `ended_at` NULL."""

    __tablename__ = "tag"
    __table_args__ = (
        Index(
            "uq_tag_live",
            "repository_id",
            "name",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
        # The time machine's lists: a repository's history and one tag's, newest first.
        Index("ix_tag_repository_history", "repository_id", "id"),
        Index("ix_tag_name_history", "repository_id", "name", "id"),
        # What the expiry job looks for every second: live tags with an expiry.
        Index(
            "ix_tag_live_expiry",
            "expires_at",
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(_name(128))
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # A live tag leaves the live list at this time (by the API or a quay.expires-after label).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class ManifestLabel(Base):
    """A key/value label of a manifest: from its config or annotations ("manifest") or
    added through the API ("api")."""

    __tablename__ = "manifest_label"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifest.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TagImmutabilityRule(Base):
    """Tags of the repository matching `pattern` (a glob) cannot move, be deleted or expire."""

    __tablename__ = "tag_immutability_rule"
    __table_args__ = (UniqueConstraint("repository_id", "pattern"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    pattern: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepositoryStar(Base):
    __tablename__ = "repository_star"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NamespaceBlob(Base):
    """How many repositories of a namespace link a blob: a blob counts once toward the
    namespace's usage however many of its repositories hold it."""

    __tablename__ = "namespace_blob"
    namespace_id: Mapped[int] = mapped_column(
        ForeignKey("namespace.id", ondelete="CASCADE"), primary_key=True
    )
    blob_id: Mapped[int] = mapped_column(ForeignKey("blob.id"), primary_key=True, index=True)
    links: Mapped[int] = mapped_column(Integer)


class GcRun(Base):
    """One pass of the garbage collector, for its metrics and the API."""

    __tablename__ = "gc_run"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    tags_deleted: Mapped[int] = mapped_column(Integer, default=0)
    manifests_deleted: Mapped[int] = mapped_column(Integer, default=0)
    links_deleted: Mapped[int] = mapped_column(Integer, default=0)
    blobs_deleted: Mapped[int] = mapped_column(Integer, default=0)
    bytes_freed: Mapped[int] = mapped_column(BigInteger, default=0)
    repositories_purged: Mapped[int] = mapped_column(Integer, default=0)
    backlog: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class Upload(Base):
    """An upload session, bound to the repository it was started in."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), index=True
    )
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Who started it ("user:<id>", "robot:<id>", "anonymous"): only they may continue it.
    owner: Mapped[str | None] = mapped_column(String(64))
    # Set when the upload published its blob: the row stays a while so that the same PUT
    # sent again (a load balancer retrying on another replica) answers 201 again.
    finished_digest: Mapped[str | None] = mapped_column(String(150))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


# -- identity and access -----------------------------------------------------------------
#
# Grantees (of repository permissions, default permissions and team membership) are
# polymorphic: `kind` is "user", "team" or "robot" and `grantee_id` that table's id.
# Services delete a grantee's rows when they delete the grantee.


class User(Base):
    __tablename__ = "user_account"  # "user" is reserved in PostgreSQL
    # Ids name grantees and upload owners: SQLite must never hand a deleted id out again.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(
        ForeignKey("namespace.id", ondelete="CASCADE"), unique=True
    )
    username: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(255))
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None: external
    provider: Mapped[str] = mapped_column(String(16), default="database")
    external_id: Mapped[str | None] = mapped_column(String(255))
    superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Team(Base):
    __tablename__ = "team"
    __table_args__ = (UniqueConstraint("org_id", "name"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("namespace.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(8))  # member | creator | admin
    description: Mapped[str] = mapped_column(Text, default="")
    sync_group: Mapped[str | None] = mapped_column(String(512))  # LDAP group DN or OIDC group
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamMember(Base):
    __tablename__ = "team_member"
    team_id: Mapped[int] = mapped_column(
        ForeignKey("team.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # user | robot
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    synced: Mapped[bool] = mapped_column(Boolean, default=False)  # added by a team sync


class Robot(Base):
    """A robot account `<namespace>+<shortname>`, authenticated by a random token."""

    __tablename__ = "robot"
    __table_args__ = (UniqueConstraint("namespace_id", "shortname"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id", ondelete="CASCADE"))
    shortname: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the token
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepositoryPermission(Base):
    __tablename__ = "repository_permission"
    __table_args__ = (UniqueConstraint("repository_id", "kind", "grantee_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # user | team | robot
    grantee_id: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(8))  # read | write | admin


class DefaultPermission(Base):
    """When <activating user, or anyone> creates a repository in the organization, grant
    <role> to <grantee> (Quay's "prototype")."""

    __tablename__ = "default_permission"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("namespace.id", ondelete="CASCADE"), index=True)
    activating_user_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))
    grantee_id: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(8))


class OAuthApplication(Base):
    __tablename__ = "oauth_application"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("namespace.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Credential(Base):
    """A secret issued to a user, stored as a sha256 hash and found by its public `lookup`
    part: app-specific tokens ("app"), the encrypted CLI password ("cli") and OAuth access
    tokens ("oauth"). Random secrets of 32 bytes need no slow hash."""

    __tablename__ = "credential"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(255), default="")
    scopes: Mapped[str] = mapped_column(String(512), default="")  # space separated
    application_id: Mapped[int | None] = mapped_column(
        ForeignKey("oauth_application.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SigningKey(Base):
    """Keys that sign registry tokens, shared by every replica through the database. The
    private key is encrypted with the configured secret key."""

    __tablename__ = "signing_key"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retire_at: Mapped[datetime] = mapped_column(UTCDateTime)  # stops signing
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # stops verifying


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_namespace", "namespace", "id"),
        Index("ix_audit_log_repository", "repository", "id"),
        Index("ix_audit_log_actor", "actor", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | robot | token | anonymous
    actor: Mapped[str | None] = mapped_column(String(255))
    namespace: Mapped[str | None] = mapped_column(String(255))
    repository: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON object


class LoginThrottle(Base):
    """Failed logins per key ("user:<name>" or "ip:<address>"), shared by every process."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A browser session: the cookie holds the id, the table its sha256."""

    __tablename__ = "web_session"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# -- production mode -----------------------------------------------------------------------


class Job(Base):
    """Background work, durable: a job enqueued in the transaction of the change that
    needs it runs after that change committed, survives restarts, and is claimed by one
    worker at a time under a lease (FOR UPDATE SKIP LOCKED on PostgreSQL)."""

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_due", "state", "run_at"),
        # A job enqueued twice under one key runs once (periodic firings, per-event work).
        UniqueConstraint("dedup_key"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # not before
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    dedup_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class PeriodicTask(Base):
    """When each periodic task is next due: the replica whose conditional update moves
    `next_run_at` on runs it, so it fires once across all replicas."""

    __tablename__ = "periodic_task"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_owner: Mapped[str | None] = mapped_column(String(128))


class BlobPlacement(Base):
    """Which configured storage locations hold a blob's bytes (the groundwork of
    geo-replication): a blob with no row is in the default location."""

    __tablename__ = "blob_placement"
    blob_id: Mapped[int] = mapped_column(
        ForeignKey("blob.id", ondelete="CASCADE"), primary_key=True
    )
    location: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
