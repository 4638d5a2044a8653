"""Which storage locations hold each blob: the `blob_placement` rows (ARCHITECTURE.md,
"Storage locations").

Rows are written before the bytes, in the publish's claim of the blob (services/gc.py
`claim_blob`), just as the blob row itself: a crash after some bytes were written never
leaves bytes the collector does not know of, and the collector deletes the bytes from
every placement before the row goes (the rows cascade). A row may therefore name a
location whose copy is not there (yet, or any more: lost by hand): readers check and
fall back to the next holder. A blob without rows is in the default location. With one
location configured no row is written or read."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession
from cargohold.db.sql import sql
from cargohold.domain.digests import Digest
from cargohold.domain.errors import BlobUnknown
from cargohold.storage import layout
from cargohold.storage.driver import ObjectNotFound, StorageDriver
from cargohold.storage.locations import StorageLocations

log = logging.getLogger(__name__)

INSERT_PLACEMENT = sql(
    "INSERT INTO blob_placement (blob_id, location, created_at) "
    "VALUES (:blob_id, :location, :now) ON CONFLICT DO NOTHING"
)
# A blob stored before it had rows is in the default location: say so before the first
# row names another one.
MATERIALIZE_DEFAULT = sql(
    """INSERT INTO blob_placement (blob_id, location, created_at)
       SELECT :blob_id, :location, :now
       WHERE NOT EXISTS (SELECT 1 FROM blob_placement WHERE blob_id = :blob_id)"""
)
PLACEMENTS_OF_DIGEST = sql(
    """SELECT p.location FROM blob b JOIN blob_placement p ON p.blob_id = b.id
       WHERE b.digest = :digest"""
)


async def record(
    session: DbSession,
    blob_id: int,
    locations: Sequence[str],
    *,
    default: str,
    existed: bool,
) -> None:
    """In the claim's transaction, before any byte is written: `blob_id` is (about to
    be) in `locations`. `existed`: the blob row was there before this claim, so a blob
    without rows keeps its implicit place in the default location."""
    if not locations:
        return
    now = utcnow()
    if existed and default not in locations:
        await session.run(MATERIALIZE_DEFAULT, blob_id=blob_id, location=default, now=now)
    for location in locations:
        await session.run(INSERT_PLACEMENT, blob_id=blob_id, location=location, now=now)


async def placements_of(session: DbSession, digest: Digest) -> list[str]:
    rows = await session.all(PLACEMENTS_OF_DIGEST, digest=str(digest))
    return [str(r[0]) for r in rows]


class BlobSources:
    """Where to read a blob's bytes from."""

    def __init__(self, db: Database, locations: StorageLocations) -> None:
        self.db = db
        self.locations = locations

    async def source(self, digest: Digest) -> StorageDriver:
        """The driver to read `digest` from: with one location, that one (no query, no
        check); with several, the first of its holders in read order whose copy is
        there. BlobUnknown when none has it."""
        locations = self.locations
        if not locations.several:
            return locations.primary
        async with self.db.read() as session:
            placed = await placements_of(session, digest)
        key = layout.blob_key(digest)
        for name, driver in locations.holders(placed):
            try:
                await driver.stat(key)
            except ObjectNotFound:
                log.warning("blob %s is missing from storage location %r", digest, name)
                continue
            return driver
        log.error("blob %s is in none of its storage locations (%s)", digest, placed)
        raise BlobUnknown(detail={"digest": str(digest)})
