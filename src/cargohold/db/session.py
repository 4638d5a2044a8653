"""Connections and units of work, the same API on SQLite and PostgreSQL.

Services talk to a `DbSession` that runs the hand-written statements of db/queries.py
on the driver's own connection; SQLAlchemy's engines own the pools, the SQLite pragmas
and the PostgreSQL connection handling (the schema itself is models.py plus Alembic).

- PostgreSQL goes through psycopg 3's asyncio connection: network round trips must not
  block the event loop.
- SQLite (the embedded default) runs on the event loop itself. A statement on a local
  WAL database takes microseconds, far less than handing it to a thread and back, which
  is what an async driver does for every call. Readers never block in WAL mode. Write
  transactions take an asyncio lock first and then BEGIN IMMEDIATE, so in one process
  writers queue without blocking the loop; another process's writer can make BEGIN wait
  (busy_timeout), for as long as one short transaction takes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from cargohold.db.sql import Sql

T = TypeVar("T")
Row = tuple[Any, ...]

# Errors that mean "a concurrent writer won": retried by run_write. psycopg's join them
# once something imported psycopg (a PostgreSQL database): importing it costs every
# embedded-default worker 10 MiB for errors SQLite never raises.
_RETRYABLE: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.OperationalError,
    sqlalchemy.exc.IntegrityError,
    sqlalchemy.exc.OperationalError,
)


def _retryable() -> tuple[type[Exception], ...]:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return _RETRYABLE
    errors = psycopg.errors
    return (
        *_RETRYABLE,
        errors.UniqueViolation,
        errors.DeadlockDetected,
        errors.SerializationFailure,
        # A concurrent delete removed a row this transaction refers to: run it again,
        # and it fails (or succeeds) cleanly against the new state.
        errors.ForeignKeyViolation,
    )


def async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return u.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
    return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


class DbSession:
    """Runs statements of db/queries.py inside the caller's unit of work."""

    dialect: str
    _committed: list[Callable[[], None]] | None = None

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this write unit of work has committed, never if it rolls
        back (jobs/queue.py wakes this process's job worker so)."""
        if self._committed is None:
            self._committed = []
        self._committed.append(callback)

    def _run_committed(self) -> None:
        for callback in self._committed or ():
            callback()

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        """The first row, or None."""
        raise NotImplementedError

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        raise NotImplementedError

    async def value(self, statement: Sql, **params: Any) -> Any:
        """The first column of the first row, or None."""
        row = await self.one(statement, **params)
        return None if row is None else row[0]

    async def run(self, statement: Sql, **params: Any) -> int:
        """Execute; the number of rows changed."""
        raise NotImplementedError

    async def run_many(self, statement: Sql, rows: list[dict[str, Any]]) -> None:
        """Execute once per parameter set, in one driver call (batched inserts)."""
        raise NotImplementedError


def _sqlite_params(params: dict[str, Any]) -> dict[str, Any]:
    # Datetimes are stored the way SQLAlchemy's SQLite dialect stores them: naive UTC text.
    return {
        k: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
        for k, v in params.items()
    }


class SqliteSession(DbSession):
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        row: Row | None = self._connection.execute(
            statement.sqlite, _sqlite_params(params)
        ).fetchone()
        return row

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        return self._connection.execute(statement.sqlite, _sqlite_params(params)).fetchall()

    async def run(self, statement: Sql, **params: Any) -> int:
        return self._connection.execute(statement.sqlite, _sqlite_params(params)).rowcount

    async def run_many(self, statement: Sql, rows: list[dict[str, Any]]) -> None:
        self._connection.executemany(statement.sqlite, [_sqlite_params(r) for r in rows])


class PostgresSession(DbSession):
    dialect = "postgresql"

    def __init__(self, connection: Any) -> None:
        self._connection = connection  # psycopg.AsyncConnection

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        async with self._connection.cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            row: Row | None = await cursor.fetchone() if cursor.description else None
            return row

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        async with self._connection.cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            rows: list[Row] = await cursor.fetchall()
            return rows

    async def run(self, statement: Sql, **params: Any) -> int:
        async with self._connection.cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            count: int = cursor.rowcount
            return count

    async def run_many(self, statement: Sql, rows: list[dict[str, Any]]) -> None:
        async with self._connection.cursor() as cursor:
            await cursor.executemany(statement.postgres, rows)


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_connection: Any, synchronous: str) -> None:
    # SQLite's LOWER() folds ASCII only; the repository search needs every letter
    # (services/repository_search.py).
    dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a crash of the process (the test suite kills
    # the server with SIGKILL); FULL also fsyncs the log at each commit, for power loss.
    cursor.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # Checkpoints (which fsync the database file) run in a thread, not inside a COMMIT on
    # the event loop: see Database.checkpoint.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_engine(url: str, *, pool_size: int, echo: bool, synchronous: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        sync_url(url),
        echo=echo,
        pool_size=pool_size,
        # Never wait for a pooled connection: a wait would block the event loop.
        max_overflow=-1,
        # Autocommit mode at the driver: this module issues BEGIN and COMMIT itself.
        connect_args={"isolation_level": None, "check_same_thread": False},
    )
    event.listen(engine, "connect", lambda conn, _record: _sqlite_pragmas(conn, synchronous))
    return engine


async def _driver(connection: AsyncConnection) -> Any:
    return (await connection.get_raw_connection()).driver_connection


class Database:
    """Owns the engines; hands out read and write units of work."""

    def __init__(
        self, url: str, *, pool_size: int = 10, echo: bool = False, synchronous: str = "normal"
    ) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        # With an fsync per commit, COMMIT runs in a thread so the loop keeps serving.
        self._commit_in_thread = synchronous == "full"
        self._write_lock = asyncio.Lock()
        if self.sqlite:
            # Statements run on the event loop thread: one connection reads (autocommit, so
            # interleaved readers never share a transaction), one writes (under the lock).
            # Both stay open: checking them out of a pool per unit of work costs more than
            # a typical SELECT.
            self._read_engine = _sqlite_engine(url, pool_size=1, echo=echo, synchronous=synchronous)
            self._write_engine = _sqlite_engine(
                url, pool_size=1, echo=echo, synchronous=synchronous
            )
            self._reader: Any = None
            self._writer: Any = None
        else:
            self._async_engine = create_async_engine(
                async_url(url), echo=echo, pool_size=pool_size, max_overflow=pool_size
            )
            # Reads run in autocommit: no BEGIN and ROLLBACK round trips around a SELECT.
            self._read_async_engine = create_async_engine(
                async_url(url),
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size,
                isolation_level="AUTOCOMMIT",
            )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        """Reads, in autocommit: each statement sees the latest committed state."""
        if self.sqlite:
            if self._reader is None:
                self._reader = self._read_engine.raw_connection()
            yield SqliteSession(self._reader.driver_connection)
        else:
            async with self._read_async_engine.connect() as connection:
                yield PostgresSession(await _driver(connection))

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[DbSession]:
        """A read-only transaction: several statements see one consistent state, and no
        writer waits for it (SQLite: a deferred transaction, WAL, on a connection of its
        own; PostgreSQL: REPEATABLE READ READ ONLY). For long reads, not request paths."""
        if self.sqlite:
            raw = self._read_engine.raw_connection()
            try:
                connection: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
                connection.execute("BEGIN")
                try:
                    yield SqliteSession(connection)
                finally:
                    connection.execute("ROLLBACK")
            finally:
                raw.close()
        else:
            async with self._async_engine.connect() as async_connection:
                options = await async_connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                async with options.begin():
                    yield PostgresSession(await _driver(options))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[DbSession]:
        """A transaction that commits when the block ends without an exception."""
        if self.sqlite:
            async with self._write_lock:
                if self._writer is None:
                    self._writer = self._write_engine.raw_connection()
                connection: sqlite3.Connection = self._writer.driver_connection
                connection.execute("BEGIN IMMEDIATE")
                session: DbSession = SqliteSession(connection)
                try:
                    yield session
                    await self._commit(connection)
                except BaseException:
                    # Whatever failed, the body or the COMMIT itself (disk full), the shared
                    # writer connection must not stay inside a transaction.
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
        else:
            async with self._async_engine.begin() as async_connection:
                session = PostgresSession(await _driver(async_connection))
                yield session
        session._run_committed()

    async def _commit(self, connection: sqlite3.Connection) -> None:
        if not self._commit_in_thread:
            connection.execute("COMMIT")
            return
        # The fsync runs in a thread. If this task is cancelled meanwhile, still wait for
        # the thread: the connection (and the lock) must not be used while it commits.
        commit = asyncio.ensure_future(asyncio.to_thread(connection.execute, "COMMIT"))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await asyncio.wait({commit})
            raise

    def pool_use(self) -> dict[str, tuple[int, int]]:
        """PostgreSQL: per pool ("write", "read"), connections checked out and the pool's
        size (the metrics). SQLite holds its two connections and has no pool: empty."""
        if self.sqlite:
            return {}
        out = {}
        for name, engine in (("write", self._async_engine), ("read", self._read_async_engine)):
            pool: Any = engine.sync_engine.pool
            out[name] = (int(pool.checkedout()), int(pool.size()))
        return out

    async def checkpoint(self) -> None:
        """Copy the SQLite write-ahead log into the database file, in a thread."""
        if self.sqlite:
            await asyncio.to_thread(self._checkpoint_sync, "PASSIVE")

    def _checkpoint_sync(self, mode: str) -> None:
        raw = self._read_engine.raw_connection()
        try:
            raw.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})")  # type: ignore[union-attr]
        finally:
            raw.close()

    async def dispose(self) -> None:
        if self.sqlite:
            for held in (self._reader, self._writer):
                if held is not None:
                    held.close()
            self._reader = self._writer = None
            await asyncio.to_thread(self._checkpoint_sync, "TRUNCATE")
            self._read_engine.dispose()
            self._write_engine.dispose()
        else:
            await self._async_engine.dispose()
            await self._read_async_engine.dispose()


async def run_write(
    db: Database, work: Callable[[DbSession], Awaitable[T]], attempts: int = 3
) -> T:
    """Run `work(session)` in a write transaction, again when a concurrent writer won a
    unique-constraint race or a deadlock (PostgreSQL with several replicas)."""
    for attempt in range(attempts):
        try:
            async with db.write() as session:
                return await work(session)
        except _retryable():
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
