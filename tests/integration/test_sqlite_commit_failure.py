"""A COMMIT that fails leaves the shared SQLite writer connection usable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cargohold.db.migrate import upgrade
from cargohold.db.session import Database, DbSession
from cargohold.db.sql import sql

DEFER = sql("PRAGMA defer_foreign_keys=ON")
# A repository whose namespace does not exist: with deferred foreign keys the INSERT passes
# and the COMMIT fails, as it would on a full disk.
ORPHAN = sql(
    "INSERT INTO repository (namespace_id, name, created_at) VALUES (999, 'a/b', '2026-01-01')"
)
NAMESPACES = sql("SELECT count(*) FROM namespace")
ADD_NAMESPACE = sql("INSERT INTO namespace (name, created_at) VALUES ('ok', '2026-01-01')")


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_writes_go_on_after_a_failed_commit(tmp_path: Path, synchronous: str) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    db = Database(url, synchronous=synchronous)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with db.write() as session:
                await session.run(DEFER)
                await session.run(ORPHAN)

        async def add(session: DbSession) -> None:
            await session.run(ADD_NAMESPACE)

        async with db.write() as session:
            await add(session)
        async with db.read() as session:
            assert await session.value(NAMESPACES) == 1
        # Another connection (another worker) can write too: no lock was left behind.
        other = sqlite3.connect(tmp_path / "db.sqlite", timeout=1)
        other.execute("INSERT INTO namespace (name, created_at) VALUES ('x', '2026-01-01')")
        other.commit()
        other.close()
    finally:
        await db.dispose()
