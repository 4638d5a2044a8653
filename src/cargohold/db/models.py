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
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cargohold.db.base import Base, BigId, UTCDateTime, utcnow


def _name(length: int) -> String:
    """Names sort bytewise on both databases (the OCI pagination order): SQLite's BINARY
    collation is the default; PostgreSQL's default follows the locale, so ask for "C"."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Namespace(Base):
    __tablename__ = "namespace"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Repository(Base):
    __tablename__ = "repository"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"), index=True)
    name: Mapped[str] = mapped_column(_name(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "blob"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[str] = mapped_column(String(150), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(_name(128))
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Upload(Base):
    """An upload session, bound to the repository it was started in."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repository.id", ondelete="CASCADE"), index=True
    )
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
