"""The registry's SQL: every statement the request paths run, one function each.

Functions take a DbSession (in the caller's transaction) and return plain values, so
services hold the rules and no SQL. Statements are portable; where SQLite and PostgreSQL
differ (list parameters) both forms are written next to each other."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cargohold.db import usage
from cargohold.db.base import utcnow
from cargohold.db.session import DbSession, Row
from cargohold.db.sql import Sql, sql


def _in_list(column: str, param: str) -> Sql:
    """`column IN <list parameter>` for both databases (a JSON array on SQLite)."""
    return Sql(
        f"{column} IN (SELECT value FROM json_each(:{param}))",
        f"{column} = ANY(%({param})s)",
    )


def _list_param(session: DbSession, values: Sequence[Any]) -> Any:
    return list(values) if session.dialect == "postgresql" else json.dumps(list(values))


def _with(template: str, fragment: Sql) -> Sql:
    """`template` with `{in}` replaced by an _in_list fragment, rendered for both databases."""
    base = sql(template.replace("{in}", "__IN__"))
    return Sql(
        base.sqlite.replace("__IN__", fragment.sqlite),
        base.postgres.replace("__IN__", fragment.postgres),
    )


# -- repositories ------------------------------------------------------------------------

REPOSITORY_ID = sql("SELECT id FROM repository WHERE name = :name")
INSERT_NAMESPACE = sql(
    "INSERT INTO namespace (name, created_at) VALUES (:name, :now) ON CONFLICT DO NOTHING"
)
INSERT_REPOSITORY = sql(
    """INSERT INTO repository (namespace_id, name, created_at)
       SELECT id, :name, :now FROM namespace WHERE name = :namespace
       ON CONFLICT DO NOTHING"""
)


async def repository_id(session: DbSession, name: str) -> int | None:
    value: int | None = await session.value(REPOSITORY_ID, name=name)
    return value


async def ensure_repository(session: DbSession, name: str, namespace: str) -> int:
    """The id of repository `name`, creating it (and its namespace) on first use."""
    existing = await repository_id(session, name)
    if existing is not None:
        return existing
    now = utcnow()
    await session.run(INSERT_NAMESPACE, name=namespace, now=now)
    await session.run(INSERT_REPOSITORY, name=name, namespace=namespace, now=now)
    created = await repository_id(session, name)
    assert created is not None
    return created


# -- blobs -------------------------------------------------------------------------------

LINKED_BLOB = sql(
    """SELECT b.id, b.size FROM blob b
       JOIN repository_blob rb ON rb.blob_id = b.id
       JOIN repository r ON r.id = rb.repository_id
       WHERE r.name = :repository AND b.digest = :digest"""
)
LINKED_BLOB_FOR_UPDATE = Sql(LINKED_BLOB.sqlite, LINKED_BLOB.postgres + " FOR UPDATE OF rb")
INSERT_BLOB = sql(
    "INSERT INTO blob (digest, size, created_at) VALUES (:digest, :size, :now) "
    "ON CONFLICT DO NOTHING"
)
BLOB_ID = sql("SELECT id FROM blob WHERE digest = :digest")
BLOB_USED_IN_REPOSITORY = sql(
    """SELECT 1 FROM manifest_blob mb JOIN manifest m ON m.id = mb.manifest_id
       WHERE mb.blob_id = :blob_id AND m.repository_id = :repository_id LIMIT 1"""
)
MOUNT_CANDIDATES = sql(
    """SELECT b.id, b.size, r.name FROM blob b
       JOIN repository_blob rb ON rb.blob_id = b.id
       JOIN repository r ON r.id = rb.repository_id
       WHERE b.digest = :digest AND r.deleted_at IS NULL LIMIT 100"""
)


async def linked_blob(
    session: DbSession, repository: str, digest: str, *, for_update: bool = False
) -> Row | None:
    """(blob id, size) of a blob linked into `repository`, or None; `for_update` locks the
    link until the transaction ends (PostgreSQL)."""
    statement = LINKED_BLOB_FOR_UPDATE if for_update else LINKED_BLOB
    return await session.one(statement, repository=repository, digest=digest)


async def insert_blob(session: DbSession, digest: str, size: int) -> int:
    await session.run(INSERT_BLOB, digest=digest, size=size, now=utcnow())
    blob_id: int = await session.value(BLOB_ID, digest=digest)
    return blob_id


async def link_blob(
    session: DbSession, repository_id: int, blob_id: int, size: int | None = None
) -> usage.NamespaceUsage | None:
    """Link a blob into a repository and count it (db/usage.py): the namespace's new usage
    when it grew, else None. Every link insert goes through here."""
    return await usage.link(session, repository_id, blob_id, size)


async def unlink_blob(
    session: DbSession,
    repository_id: int,
    blob_id: int,
    size: int | None = None,
    *,
    quota: usage.QuotaPolicy | None = None,
) -> usage.NamespaceUsage | None:
    """Remove a blob's link and uncount it (db/usage.py): the namespace's new usage when
    it shrank, else None. Every link delete goes through here (pass the settings' `quota`
    policy where it is at hand, so a namespace back under its warning level is re-armed)."""
    return await usage.unlink(session, repository_id, blob_id, size, quota=quota)


async def blob_used_in_repository(session: DbSession, repository_id: int, blob_id: int) -> bool:
    used = await session.value(
        BLOB_USED_IN_REPOSITORY, repository_id=repository_id, blob_id=blob_id
    )
    return used is not None


async def mount_candidates(session: DbSession, digest: str) -> list[Row]:
    """(blob id, size, repository name) of repositories holding the blob."""
    return await session.all(MOUNT_CANDIDATES, digest=digest)


# -- uploads -----------------------------------------------------------------------------

INSERT_UPLOAD = sql(
    "INSERT INTO upload (id, repository_id, size, owner, created_at, updated_at) "
    "VALUES (:id, :repository_id, 0, :owner, :now, :now)"
)
# An upload is found only in its repository and only by the principal who started it;
# once finished, only as finished.
UPLOAD = sql(
    """SELECT u.size FROM upload u JOIN repository r ON r.id = u.repository_id
       WHERE u.id = :id AND r.name = :repository AND u.owner = :owner
       AND u.finished_digest IS NULL"""
)
FINISHED_UPLOAD = sql(
    """SELECT u.finished_digest FROM upload u JOIN repository r ON r.id = u.repository_id
       WHERE u.id = :id AND r.name = :repository AND u.owner = :owner
       AND u.finished_digest IS NOT NULL"""
)
FINISH_UPLOAD = sql(
    "UPDATE upload SET finished_digest = :digest, finished_at = :now, updated_at = :now "
    "WHERE id = :id"
)
PURGE_FINISHED_UPLOADS = sql("DELETE FROM upload WHERE finished_at < :cutoff")
GROW_UPLOAD = sql("UPDATE upload SET size = :new, updated_at = :now WHERE id = :id AND size = :old")
DELETE_UPLOAD = sql("DELETE FROM upload WHERE id = :id")
STALE_UPLOADS = sql("SELECT id FROM upload WHERE updated_at < :cutoff AND finished_digest IS NULL")
UPLOAD_IDS = sql("SELECT id FROM upload")


async def insert_upload(session: DbSession, upload_id: str, repository_id: int, owner: str) -> None:
    await session.run(
        INSERT_UPLOAD, id=upload_id, repository_id=repository_id, owner=owner, now=utcnow()
    )


async def upload_size(
    session: DbSession, upload_id: str, repository: str, owner: str
) -> int | None:
    """The recorded size of an upload of `repository` started by `owner`, or None if
    there is no such upload (another principal's upload is none of theirs)."""
    size: int | None = await session.value(UPLOAD, id=upload_id, repository=repository, owner=owner)
    return size


async def grow_upload(session: DbSession, upload_id: str, old: int, new: int) -> bool:
    """Record the new size, if nobody else changed it since `old` was read."""
    return await session.run(GROW_UPLOAD, id=upload_id, old=old, new=new, now=utcnow()) == 1


async def finished_upload(
    session: DbSession, upload_id: str, repository: str, owner: str
) -> str | None:
    """The digest a finished upload of `repository` by `owner` published, or None."""
    digest: str | None = await session.value(
        FINISHED_UPLOAD, id=upload_id, repository=repository, owner=owner
    )
    return digest


async def finish_upload(session: DbSession, upload_id: str, digest: str) -> None:
    await session.run(FINISH_UPLOAD, id=upload_id, digest=digest, now=utcnow())


async def purge_finished_uploads(session: DbSession, cutoff: datetime) -> int:
    return await session.run(PURGE_FINISHED_UPLOADS, cutoff=cutoff)


async def delete_upload(session: DbSession, upload_id: str) -> int:
    return await session.run(DELETE_UPLOAD, id=upload_id)


async def stale_upload_ids(session: DbSession, cutoff: datetime) -> list[str]:
    return [row[0] for row in await session.all(STALE_UPLOADS, cutoff=cutoff)]


async def upload_ids(session: DbSession) -> set[str]:
    return {row[0] for row in await session.all(UPLOAD_IDS)}


# -- manifests and tags ------------------------------------------------------------------

# A live tag: not ended, and its expiry (if any) not passed. Expired rows stay open until
# the expiry job ends them (services/tags.py), so every live-tag read checks both.
LIVE = "t.ended_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > :now)"
MANIFEST_BY_TAG = sql(
    f"""SELECT m.digest, m.media_type, m.payload, m.subject_digest, t.expires_at FROM tag t
       JOIN repository r ON r.id = t.repository_id
       JOIN manifest m ON m.id = t.manifest_id
       WHERE r.name = :repository AND t.name = :tag AND {LIVE}"""
)
MANIFEST_BY_DIGEST = sql(
    """SELECT m.digest, m.media_type, m.payload, m.subject_digest FROM manifest m
       JOIN repository r ON r.id = m.repository_id
       WHERE r.name = :repository AND m.digest = :digest"""
)
MANIFEST_ID = sql(
    "SELECT id FROM manifest WHERE repository_id = :repository_id AND digest = :digest"
)
_BLOBS_IN_REPOSITORY = _with(
    """SELECT b.digest, b.id, b.size FROM blob b
       JOIN repository_blob rb ON rb.blob_id = b.id
       WHERE rb.repository_id = :repository_id AND b.deleting_since IS NULL AND {in}""",
    _in_list("b.digest", "digests"),
)
# On PostgreSQL (READ COMMITTED) a manifest push holds its blob links until it commits, so a
# concurrent blob DELETE (which locks the link FOR UPDATE) waits and then sees the manifest.
# SQLite runs write transactions one at a time, so it needs no row locks. A blob under the
# collector's deletion lease is unknown (services/gc.py; it has no links by then anyway).
BLOBS_IN_REPOSITORY = Sql(
    _BLOBS_IN_REPOSITORY.sqlite, _BLOBS_IN_REPOSITORY.postgres + " FOR SHARE OF rb"
)
MANIFESTS_IN_REPOSITORY = _with(
    "SELECT digest, id, size FROM manifest WHERE repository_id = :repository_id AND {in}",
    _in_list("digest", "digests"),
)
INSERT_MANIFEST = sql(
    """INSERT INTO manifest (repository_id, digest, media_type, artifact_type, subject_digest,
                             size, payload, created_at)
       VALUES (:repository_id, :digest, :media_type, :artifact_type, :subject_digest,
               :size, :payload, :now)
       RETURNING id"""
)
INSERT_MANIFEST_BLOB = sql(
    "INSERT INTO manifest_blob (manifest_id, blob_id) VALUES (:manifest_id, :blob_id) "
    "ON CONFLICT DO NOTHING"
)
INSERT_MANIFEST_CHILD = sql(
    "INSERT INTO manifest_child (parent_id, child_id) VALUES (:parent_id, :child_id) "
    "ON CONFLICT DO NOTHING"
)
# The open row of a tag, expired or not (a push ends an expired one before starting anew).
LIVE_TAG = sql(
    "SELECT id, manifest_id, expires_at FROM tag "
    "WHERE repository_id = :repository_id AND name = :name AND ended_at IS NULL"
)
END_TAG = sql("UPDATE tag SET ended_at = :now WHERE id = :id")
# An expired row ends when it expired: from then on it is history like any other. The
# expiry is checked again here: on PostgreSQL a change that extended or cleared it may have
# committed while this waited on the row lock (the update then sees the new row).
END_EXPIRED_TAG = sql(
    "UPDATE tag SET ended_at = expires_at WHERE id = :id AND ended_at IS NULL "
    "AND expires_at IS NOT NULL AND expires_at <= :now"
)
END_TAG_BY_NAME = sql(
    "UPDATE tag SET ended_at = :now "
    "WHERE repository_id = :repository_id AND name = :name AND ended_at IS NULL"
)
INSERT_TAG = sql(
    "INSERT INTO tag (repository_id, name, manifest_id, started_at, expires_at) "
    "VALUES (:repository_id, :name, :manifest_id, :now, :expires_at)"
)
MANIFEST_IS_CHILD = sql("SELECT 1 FROM manifest_child WHERE child_id = :id LIMIT 1")
DELETE_TAGS_OF_MANIFEST = sql("DELETE FROM tag WHERE manifest_id = :id")
DELETE_MANIFEST = sql("DELETE FROM manifest WHERE id = :id")
# `repository.changed_at`, the API's `last_modified`: one UPDATE in each transaction that
# stores a manifest or changes a live tag (services/manifests.py, services/tags.py).
TOUCH_REPOSITORY = sql("UPDATE repository SET changed_at = :now WHERE id = :id")
TOUCH_REPOSITORIES = _with(
    "UPDATE repository SET changed_at = :now WHERE {in}", _in_list("name", "names")
)


async def manifest_by_tag(session: DbSession, repository: str, tag: str) -> Row | None:
    """(digest, media type, payload, subject digest, tag expiry) of the manifest a live
    tag points at."""
    return await session.one(MANIFEST_BY_TAG, repository=repository, tag=tag, now=utcnow())


async def manifest_by_digest(session: DbSession, repository: str, digest: str) -> Row | None:
    return await session.one(MANIFEST_BY_DIGEST, repository=repository, digest=digest)


async def manifest_id(session: DbSession, repository_id: int, digest: str) -> int | None:
    value: int | None = await session.value(MANIFEST_ID, repository_id=repository_id, digest=digest)
    return value


async def blobs_in_repository(
    session: DbSession, repository_id: int, digests: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """digest -> (blob id, size) for those of `digests` linked into the repository."""
    rows = await session.all(
        BLOBS_IN_REPOSITORY, repository_id=repository_id, digests=_list_param(session, digests)
    )
    return {digest: (blob_id, size) for digest, blob_id, size in rows}


async def manifests_in_repository(
    session: DbSession, repository_id: int, digests: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """digest -> (manifest id, size) for those of `digests` in the repository."""
    rows = await session.all(
        MANIFESTS_IN_REPOSITORY, repository_id=repository_id, digests=_list_param(session, digests)
    )
    return {digest: (mid, size) for digest, mid, size in rows}


async def insert_manifest(session: DbSession, **values: Any) -> int:
    new_id: int = await session.value(INSERT_MANIFEST, now=utcnow(), **values)
    return new_id


async def add_manifest_references(
    session: DbSession, manifest_id: int, blob_ids: Sequence[int], child_ids: Sequence[int]
) -> None:
    for blob_id in blob_ids:
        await session.run(INSERT_MANIFEST_BLOB, manifest_id=manifest_id, blob_id=blob_id)
    for child_id in child_ids:
        await session.run(INSERT_MANIFEST_CHILD, parent_id=manifest_id, child_id=child_id)


async def live_tag(session: DbSession, repository_id: int, name: str) -> Row | None:
    """(tag row id, manifest id, expires_at) of the tag's open row, or None. The row may
    have expired (expires_at <= now): the caller ends it with `end_expired_tag`."""
    return await session.one(LIVE_TAG, repository_id=repository_id, name=name)


async def end_tag(session: DbSession, tag_id: int) -> None:
    await session.run(END_TAG, id=tag_id, now=utcnow())


async def end_expired_tag(session: DbSession, tag_id: int) -> bool:
    """End the open row if its expiry passed; whether it did (audit only then: another
    transaction may have ended it, or moved its expiry, meanwhile)."""
    return await session.run(END_EXPIRED_TAG, id=tag_id, now=utcnow()) > 0


async def end_tag_by_name(session: DbSession, repository_id: int, name: str) -> bool:
    ended = await session.run(END_TAG_BY_NAME, repository_id=repository_id, name=name, now=utcnow())
    return ended > 0


async def insert_tag(
    session: DbSession,
    repository_id: int,
    name: str,
    manifest_id: int,
    *,
    expires_at: datetime | None = None,
) -> None:
    await session.run(
        INSERT_TAG,
        repository_id=repository_id,
        name=name,
        manifest_id=manifest_id,
        now=utcnow(),
        expires_at=expires_at,
    )


async def manifest_is_child(session: DbSession, manifest_id: int) -> bool:
    return await session.value(MANIFEST_IS_CHILD, id=manifest_id) is not None


async def delete_manifest(session: DbSession, manifest_id: int) -> None:
    """Delete a manifest, its tags (history included) and its reference rows."""
    await session.run(DELETE_TAGS_OF_MANIFEST, id=manifest_id)
    await session.run(DELETE_MANIFEST, id=manifest_id)


async def touch_repository(session: DbSession, repository_id: int) -> None:
    """The repository changed now (its `last_modified`); once per transaction."""
    await session.run(TOUCH_REPOSITORY, id=repository_id, now=utcnow())


async def touch_repositories(session: DbSession, names: Sequence[str]) -> None:
    """touch_repository for several repositories, by name, in one statement."""
    if names:
        await session.run(
            TOUCH_REPOSITORIES, names=_list_param(session, sorted(set(names))), now=utcnow()
        )


# -- listings ----------------------------------------------------------------------------

TAGS_PAGE = sql(
    f"SELECT t.name FROM tag t WHERE t.repository_id = :repository_id AND {LIVE} "
    "AND t.name > :last ORDER BY t.name LIMIT :limit"
)
# Repositories deleted by users (renamed `<ns>/.deleted-<id>` until the collector purges
# them) are no repositories of the catalog.
REPOSITORIES_PAGE = sql(
    "SELECT name FROM repository WHERE name > :last AND deleted_at IS NULL "
    "ORDER BY name LIMIT :limit"
)
REFERRERS_PAGE = sql(
    """SELECT m.digest, m.media_type, m.size, m.artifact_type, m.payload FROM manifest m
       JOIN repository r ON r.id = m.repository_id
       WHERE r.name = :repository AND m.subject_digest = :subject AND m.digest > :last
         AND (:artifact_type = '' OR m.artifact_type = :artifact_type)
       ORDER BY m.digest LIMIT :limit"""
)


async def tags_page(session: DbSession, repository_id: int, last: str, limit: int) -> list[str]:
    rows = await session.all(
        TAGS_PAGE, repository_id=repository_id, last=last, limit=limit, now=utcnow()
    )
    return [row[0] for row in rows]


async def repositories_page(session: DbSession, last: str, limit: int) -> list[str]:
    return [row[0] for row in await session.all(REPOSITORIES_PAGE, last=last, limit=limit)]


VISIBLE_REPOSITORIES_PAGE = sql(
    """SELECT r.name FROM repository r WHERE r.name > :last AND r.deleted_at IS NULL AND (
         r.public = :yes
         OR r.namespace_id = :own_namespace
         OR r.id IN (SELECT repository_id FROM repository_permission
                     WHERE (kind = :kind AND grantee_id = :member)
                        OR (kind = 'team' AND grantee_id IN (SELECT team_id FROM team_member
                            WHERE kind = :kind AND member_id = :member)))
         OR r.namespace_id IN (SELECT t.org_id FROM team t JOIN team_member m
                               ON m.team_id = t.id WHERE t.role = 'admin'
                               AND m.kind = :kind AND m.member_id = :member))
       ORDER BY r.name LIMIT :limit"""
)


async def visible_repositories_page(
    session: DbSession, last: str, limit: int, *, kind: str, member: int, own_namespace: int
) -> list[str]:
    """Like repositories_page, only the repositories a principal can read."""
    rows = await session.all(
        VISIBLE_REPOSITORIES_PAGE,
        last=last,
        limit=limit,
        yes=True,
        kind=kind,
        member=member,
        own_namespace=own_namespace,
    )
    return [row[0] for row in rows]


async def referrers_page(
    session: DbSession, repository: str, subject: str, artifact_type: str, last: str, limit: int
) -> list[Row]:
    """(digest, media type, size, artifact type, payload) of manifests whose subject is
    `subject`; an empty `artifact_type` means any."""
    return await session.all(
        REFERRERS_PAGE,
        repository=repository,
        subject=subject,
        artifact_type=artifact_type,
        last=last,
        limit=limit,
    )
