"""Storage accounting on blob links (docs/quotas.md).

A repository's usage is the sum of the sizes of the blobs linked into it; a namespace's is
the sum over the distinct blobs linked into any of its repositories, counted once however
many of them link it (`namespace_blob.links`). Every link insert and delete goes through
`link` / `unlink` here (db/queries.link_blob and unlink_blob), which keep both figures in
the caller's transaction with row-level arithmetic (`used_bytes = used_bytes + :n`) and
INSERT .. ON CONFLICT DO UPDATE .. RETURNING, never a read-modify-write in Python: on
PostgreSQL (READ COMMITTED) concurrent pushes serialize on the rows they change, and on
SQLite writes run one at a time. `differences` recalculates everything from scratch;
`repair` writes the recalculation back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.db.base import utcnow
from cargohold.db.session import DbSession
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime

# RETURNING tells whether the link was new: only a new link counts.
INSERT_LINK = sql(
    "INSERT INTO repository_blob (repository_id, blob_id, created_at) "
    "VALUES (:repository_id, :blob_id, :now) ON CONFLICT DO NOTHING RETURNING blob_id"
)
DELETE_LINK = sql(
    "DELETE FROM repository_blob WHERE repository_id = :repository_id AND blob_id = :blob_id "
    "RETURNING blob_id"
)
BLOB_SIZE = sql("SELECT size FROM blob WHERE id = :id")
GROW_REPOSITORY = sql(
    "UPDATE repository SET used_bytes = used_bytes + :delta WHERE id = :id RETURNING namespace_id"
)
ADD_NAMESPACE_LINK = sql(
    "INSERT INTO namespace_blob (namespace_id, blob_id, links) VALUES (:namespace_id, :blob_id, 1) "
    "ON CONFLICT (namespace_id, blob_id) DO UPDATE SET links = namespace_blob.links + 1 "
    "RETURNING links"
)
DROP_NAMESPACE_LINK = sql(
    "UPDATE namespace_blob SET links = links - 1 "
    "WHERE namespace_id = :namespace_id AND blob_id = :blob_id RETURNING links"
)
DELETE_NAMESPACE_BLOB = sql(
    "DELETE FROM namespace_blob "
    "WHERE namespace_id = :namespace_id AND blob_id = :blob_id AND links <= 0"
)
GROW_NAMESPACE = sql(
    "UPDATE namespace SET used_bytes = used_bytes + :delta WHERE id = :id "
    "RETURNING name, used_bytes, quota_bytes, quota_warning_percent, quota_warned_at"
)
SET_WARNED = sql("UPDATE namespace SET quota_warned_at = :at WHERE id = :id")
# The four statements of a new link as one round trip on PostgreSQL (data-modifying CTEs,
# each step fed by the one before; SQLite runs them one by one, in microseconds). Same
# locks and the same READ COMMITTED re-checks as the separate statements; a row only when
# the namespace's usage grew.
LINK_ONCE = sql(
    "SELECT 1",
    postgres="""WITH link AS (
         INSERT INTO repository_blob (repository_id, blob_id, created_at)
         VALUES (:repository_id, :blob_id, :now) ON CONFLICT DO NOTHING RETURNING blob_id),
       repo AS (
         UPDATE repository SET used_bytes = used_bytes + :delta
         WHERE id = :repository_id AND EXISTS (SELECT 1 FROM link) RETURNING namespace_id),
       refs AS (
         INSERT INTO namespace_blob (namespace_id, blob_id, links)
         SELECT namespace_id, :blob_id, 1 FROM repo
         ON CONFLICT (namespace_id, blob_id) DO UPDATE SET links = namespace_blob.links + 1
         RETURNING namespace_id, links),
       ns AS (
         UPDATE namespace SET used_bytes = used_bytes + :delta
         WHERE id = (SELECT namespace_id FROM refs WHERE links = 1)
         RETURNING id, name, used_bytes, quota_bytes, quota_warning_percent, quota_warned_at)
       SELECT id, name, used_bytes, quota_bytes, quota_warning_percent, quota_warned_at
       FROM ns""",
)


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The settings' `quota.*`: what applies to a namespace without a quota of its own."""

    default_bytes: int | None = None  # None: no limit
    default_warning_percent: int = 80

    def limit(self, own: int | None) -> int | None:
        return own if own is not None else self.default_bytes

    def warning_percent(self, own: int | None) -> int:
        return own if own is not None else self.default_warning_percent

    def warning_bytes(self, quota_bytes: int | None, warning_percent: int | None) -> int | None:
        """Usage at or above which the namespace is warned; None without a limit."""
        limit = self.limit(quota_bytes)
        if limit is None:
            return None
        return -(-limit * self.warning_percent(warning_percent) // 100)  # rounded up


@dataclass(frozen=True, slots=True)
class NamespaceUsage:
    """A namespace's usage right after a link changed it by `delta` bytes."""

    namespace_id: int
    name: str
    used_bytes: int
    delta: int
    quota_bytes: int | None
    warning_percent: int | None
    warned_at: datetime | None

    @property
    def before(self) -> int:
        return self.used_bytes - self.delta


async def _size(session: DbSession, blob_id: int, size: int | None) -> int:
    if size is not None:
        return size
    value: int = await session.value(BLOB_SIZE, id=blob_id)
    return value


async def _grow_namespace(
    session: DbSession, namespace_id: int, delta: int
) -> NamespaceUsage | None:
    row = await session.one(GROW_NAMESPACE, id=namespace_id, delta=delta)
    return None if row is None else _usage((namespace_id, *row), delta)


def _usage(row: tuple[Any, ...], delta: int) -> NamespaceUsage:
    namespace_id, name, used, quota, percent, warned = row
    return NamespaceUsage(
        int(namespace_id),
        str(name),
        int(used),
        delta,
        None if quota is None else int(quota),
        None if percent is None else int(percent),
        as_datetime(warned),
    )


async def link(
    session: DbSession, repository_id: int, blob_id: int, size: int | None = None
) -> NamespaceUsage | None:
    """Link a blob into a repository, counting it. The namespace's new usage when the link
    was new and the blob new to the namespace (its usage grew), else None. On SQLite one
    statement when the link existed, two to four short ones for a new link; on PostgreSQL
    one round trip either way."""
    if session.dialect == "postgresql":
        size = await _size(session, blob_id, size)
        row = await session.one(
            LINK_ONCE, repository_id=repository_id, blob_id=blob_id, delta=size, now=utcnow()
        )
        return None if row is None else _usage(row, size)
    inserted = await session.value(
        INSERT_LINK, repository_id=repository_id, blob_id=blob_id, now=utcnow()
    )
    if inserted is None:
        return None
    size = await _size(session, blob_id, size)
    namespace_id = await session.value(GROW_REPOSITORY, id=repository_id, delta=size)
    links = await session.value(ADD_NAMESPACE_LINK, namespace_id=namespace_id, blob_id=blob_id)
    if links != 1:
        return None
    return await _grow_namespace(session, int(namespace_id), size)


async def unlink(
    session: DbSession,
    repository_id: int,
    blob_id: int,
    size: int | None = None,
    *,
    quota: QuotaPolicy | None = None,
) -> NamespaceUsage | None:
    """Remove a blob's link from a repository, uncounting it. The namespace's new usage
    when the blob left the namespace, else None. With the `quota` policy, a namespace that
    falls back below its warning threshold is armed for the next warning (without it the
    next crossing is still seen: services/usage.py compares usage before and after)."""
    deleted = await session.value(DELETE_LINK, repository_id=repository_id, blob_id=blob_id)
    if deleted is None:
        return None
    size = await _size(session, blob_id, size)
    namespace_id = await session.value(GROW_REPOSITORY, id=repository_id, delta=-size)
    links = await session.value(DROP_NAMESPACE_LINK, namespace_id=namespace_id, blob_id=blob_id)
    if links is None or links > 0:
        return None  # None: never counted (the recalculation repairs that)
    await session.run(DELETE_NAMESPACE_BLOB, namespace_id=namespace_id, blob_id=blob_id)
    usage = await _grow_namespace(session, int(namespace_id), -size)
    if usage is not None and usage.warned_at is not None and quota is not None:
        threshold = quota.warning_bytes(usage.quota_bytes, usage.warning_percent)
        if threshold is None or usage.used_bytes < threshold:
            await session.run(SET_WARNED, id=usage.namespace_id, at=None)
    return usage


async def set_warned(session: DbSession, namespace_id: int, at: datetime | None) -> None:
    await session.run(SET_WARNED, id=namespace_id, at=at)


# -- recalculation from scratch ---------------------------------------------------------------

# What the figures must be, from the links alone.
REPOSITORY_DIFFERENCES = sql(
    """SELECT r.id, r.name, r.used_bytes, COALESCE(x.total, 0) FROM repository r
       LEFT JOIN (SELECT rb.repository_id AS id, SUM(b.size) AS total
                  FROM repository_blob rb JOIN blob b ON b.id = rb.blob_id
                  GROUP BY rb.repository_id) x ON x.id = r.id
       WHERE r.used_bytes <> COALESCE(x.total, 0)
       ORDER BY r.id"""
)
_EXPECTED_NAMESPACE_BLOBS = """SELECT r.namespace_id AS namespace_id, rb.blob_id AS blob_id,
       COUNT(*) AS links FROM repository_blob rb JOIN repository r ON r.id = rb.repository_id
       GROUP BY r.namespace_id, rb.blob_id"""
_STORED_NAMESPACE_BLOBS = "SELECT namespace_id, blob_id, links FROM namespace_blob"
# Blobs whose reference count is wrong, missing or extra, per namespace.
NAMESPACE_BLOB_DIFFERENCES = sql(
    f"""SELECT n.name, COUNT(*) FROM (
          SELECT namespace_id, blob_id FROM ({_STORED_NAMESPACE_BLOBS}
                                             EXCEPT {_EXPECTED_NAMESPACE_BLOBS}) extra
          UNION
          SELECT namespace_id, blob_id FROM ({_EXPECTED_NAMESPACE_BLOBS}
                                             EXCEPT {_STORED_NAMESPACE_BLOBS}) missing) d
        JOIN namespace n ON n.id = d.namespace_id GROUP BY n.name ORDER BY n.name"""
)
NAMESPACE_DIFFERENCES = sql(
    """SELECT n.id, n.name, n.used_bytes, COALESCE(x.total, 0) FROM namespace n
       LEFT JOIN (SELECT d.namespace_id AS id, SUM(b.size) AS total
                  FROM (SELECT DISTINCT r.namespace_id, rb.blob_id FROM repository_blob rb
                        JOIN repository r ON r.id = rb.repository_id) d
                  JOIN blob b ON b.id = d.blob_id GROUP BY d.namespace_id) x ON x.id = n.id
       WHERE n.used_bytes <> COALESCE(x.total, 0)
       ORDER BY n.id"""
)
# On PostgreSQL, links must not change while the figures are compared or rewritten: SHARE
# mode lets readers through and makes pushes wait (an administrator's occasional check).
LOCK_LINKS = sql("SELECT 1", postgres="LOCK TABLE repository_blob IN SHARE MODE")
REPAIR_REPOSITORIES = sql(
    """UPDATE repository SET used_bytes = COALESCE((SELECT SUM(b.size)
       FROM repository_blob rb JOIN blob b ON b.id = rb.blob_id
       WHERE rb.repository_id = repository.id), 0)"""
)
CLEAR_NAMESPACE_BLOBS = sql("DELETE FROM namespace_blob")
FILL_NAMESPACE_BLOBS = sql(
    """INSERT INTO namespace_blob (namespace_id, blob_id, links)
       SELECT r.namespace_id, rb.blob_id, COUNT(*) FROM repository_blob rb
       JOIN repository r ON r.id = rb.repository_id
       GROUP BY r.namespace_id, rb.blob_id"""
)
REPAIR_NAMESPACES = sql(
    """UPDATE namespace SET used_bytes = COALESCE((SELECT SUM(b.size)
       FROM namespace_blob nb JOIN blob b ON b.id = nb.blob_id
       WHERE nb.namespace_id = namespace.id), 0)"""
)


@dataclass(frozen=True, slots=True)
class Difference:
    """A stored figure that the recalculation does not confirm."""

    kind: str  # "repository" | "namespace" | "namespace_blob"
    name: str  # the repository's or the namespace's
    stored: int  # bytes; for "namespace_blob", how many of its blob reference counts differ
    recalculated: int


async def differences(session: DbSession) -> list[Difference]:
    """Every figure the incremental accounting got wrong (empty: all agree). Run it on one
    consistent view: a read-only snapshot (Database.snapshot), or a write unit of work
    after `lock_links` before a repair."""
    found = [
        Difference("repository", str(name), int(stored), int(actual))
        for _, name, stored, actual in await session.all(REPOSITORY_DIFFERENCES)
    ]
    found += [
        Difference("namespace", str(name), int(stored), int(actual))
        for _, name, stored, actual in await session.all(NAMESPACE_DIFFERENCES)
    ]
    found += [
        Difference("namespace_blob", str(name), int(rows), 0)
        for name, rows in await session.all(NAMESPACE_BLOB_DIFFERENCES)
    ]
    return found


async def lock_links(session: DbSession) -> None:
    await session.run(LOCK_LINKS)


async def repair(session: DbSession) -> None:
    """Rewrite every figure from the links (the same statements as migration 0003)."""
    await session.run(REPAIR_REPOSITORIES)
    await session.run(CLEAR_NAMESPACE_BLOBS)
    await session.run(FILL_NAMESPACE_BLOBS)
    await session.run(REPAIR_NAMESPACES)
