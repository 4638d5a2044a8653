"""The garbage collector's figures for the metrics, read from the `gc_run` table (what
the collector records after each pass; ARCHITECTURE.md, garbage collection)."""

from __future__ import annotations

from dataclasses import dataclass

from cargohold.db.session import Database
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime

LAST_PASS = sql(
    """SELECT tags_deleted, manifests_deleted, links_deleted, blobs_deleted,
              repositories_purged, backlog, finished_at, error
       FROM gc_run WHERE dry_run = :no AND finished_at IS NOT NULL
       ORDER BY id DESC LIMIT 1"""
)
FREED = sql("SELECT COALESCE(SUM(bytes_freed), 0) FROM gc_run WHERE dry_run = :no")

KINDS = ("tags", "manifests", "links", "blobs", "repositories")


@dataclass(frozen=True, slots=True)
class GcFigures:
    deleted: dict[str, int]  # by KINDS, in the last finished pass
    backlog: int  # what the last pass left for the next ones
    finished_at: float | None  # UNIX time; None before the first pass
    failed: bool  # the last pass ended with an error
    freed_bytes: int  # over the passes the table still holds


NO_PASS = GcFigures({k: 0 for k in KINDS}, 0, None, False, 0)


async def read_gc_figures(db: Database) -> GcFigures:
    """The last finished pass that was not a dry run, and the bytes freed in all of them."""
    async with db.read() as session:
        row = await session.one(LAST_PASS, no=False)
        freed = await session.value(FREED, no=False)
    if row is None:
        return GcFigures(NO_PASS.deleted, 0, None, False, int(freed or 0))
    finished = as_datetime(row[6])
    return GcFigures(
        deleted={k: int(v or 0) for k, v in zip(KINDS, row[:5], strict=True)},
        backlog=int(row[5] or 0),
        finished_at=finished.timestamp() if finished else None,
        failed=row[7] is not None,
        freed_bytes=int(freed or 0),
    )
