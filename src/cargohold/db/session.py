"""Engines and units of work, the same API on SQLite and PostgreSQL.

Services talk to a `DbSession`, whose methods are awaitable on both databases:

- PostgreSQL goes through SQLAlchemy's asyncio engine (psycopg 3): network round trips
  must not block the event loop.
- SQLite (the embedded default) runs on the event loop itself. A statement on a local
  WAL database takes microseconds, far less than handing it to a thread and back, which
  is what an async driver does for every call. Readers never block in WAL mode. Write
  transactions take an asyncio lock first and then BEGIN IMMEDIATE, so in one process
  writers queue without blocking the loop; another process's writer can make BEGIN wait
  (busy_timeout), for as long as one short transaction takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, overload

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Result, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from cargohold.db.sql import Sql

T = TypeVar("T")
Row = tuple[Any, ...]
Ts = TypeVarTuple("Ts")


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
    """What services use: awaitable statements, ORM add/flush/delete, the dialect name."""

    dialect: str

    @overload
    async def execute(self, statement: TypedReturnsRows[*Ts]) -> Result[*Ts]: ...
    @overload
    async def execute(self, statement: Executable) -> Result[*tuple[Any, ...]]: ...
    async def execute(self, statement: Executable) -> Result[*tuple[Any, ...]]:
        raise NotImplementedError

    async def scalar(self, statement: Executable) -> Any:
        raise NotImplementedError

    def add(self, instance: object) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def delete(self, instance: object) -> None:
        raise NotImplementedError

    # Hand-written statements (db/sql.py) on the driver's cursor, in the same transaction.

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


def _sqlite_params(params: dict[str, Any]) -> dict[str, Any]:
    # Datetimes are stored the way SQLAlchemy's SQLite dialect stores them: naive UTC text.
    return {
        k: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
        for k, v in params.items()
    }


class InlineSession(DbSession):
    """A synchronous session run on the event loop (SQLite)."""

    dialect = "sqlite"

    def __init__(self, session: Session) -> None:
        self._session = session

    async def execute(self, statement: Any) -> Any:
        return self._session.execute(statement)

    async def scalar(self, statement: Executable) -> Any:
        return self._session.scalar(statement)

    def add(self, instance: object) -> None:
        self._session.add(instance)

    async def flush(self) -> None:
        self._session.flush()

    async def delete(self, instance: object) -> None:
        self._session.delete(instance)

    def _cursor(self) -> Any:
        return self._session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        row: Row | None = (
            self._cursor().execute(statement.sqlite, _sqlite_params(params)).fetchone()
        )
        return row

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        rows: list[Row] = (
            self._cursor().execute(statement.sqlite, _sqlite_params(params)).fetchall()
        )
        return rows

    async def run(self, statement: Sql, **params: Any) -> int:
        count: int = self._cursor().execute(statement.sqlite, _sqlite_params(params)).rowcount
        return count


class AsyncSessionAdapter(DbSession):
    """An asyncio session (PostgreSQL)."""

    dialect = "postgresql"

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def execute(self, statement: Any) -> Any:
        return await self._session.execute(statement)

    async def scalar(self, statement: Executable) -> Any:
        return await self._session.scalar(statement)

    def add(self, instance: object) -> None:
        self._session.add(instance)

    async def flush(self) -> None:
        await self._session.flush()

    async def delete(self, instance: object) -> None:
        await self._session.delete(instance)

    async def _driver(self) -> Any:
        connection = await self._session.connection()
        return (await connection.get_raw_connection()).driver_connection

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        async with (await self._driver()).cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            row: Row | None = await cursor.fetchone() if cursor.description else None
            return row

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        async with (await self._driver()).cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            rows: list[Row] = await cursor.fetchall()
            return rows

    async def run(self, statement: Sql, **params: Any) -> int:
        async with (await self._driver()).cursor() as cursor:
            await cursor.execute(statement.postgres, params)
            count: int = cursor.rowcount
            return count


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a crash of the process (the test suite kills
    # the server with SIGKILL); FULL would also fsync for power loss (docs/perf/README.md).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int, echo: bool) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        sync_url(url),
        echo=echo,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"isolation_level": None, "check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """Owns the engines; hands out read and write units of work."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self._write_lock = asyncio.Lock()
        if self.sqlite:
            self._read_engine = _sqlite_engine(url, immediate=False, pool_size=2, echo=echo)
            self._write_engine = _sqlite_engine(url, immediate=True, pool_size=1, echo=echo)
            self._sync_read = sessionmaker(self._read_engine, expire_on_commit=False)
            self._sync_write = sessionmaker(self._write_engine, expire_on_commit=False)
        else:
            self._async_engine = create_async_engine(
                async_url(url), echo=echo, pool_size=pool_size, max_overflow=pool_size
            )
            self._async = async_sessionmaker(self._async_engine, expire_on_commit=False)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        if self.sqlite:
            with self._sync_read() as session:
                yield InlineSession(session)
        else:
            async with self._async() as async_session:
                yield AsyncSessionAdapter(async_session)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[DbSession]:
        """A transaction that commits when the block ends without an exception."""
        if self.sqlite:
            async with self._write_lock:
                with self._sync_write() as session, session.begin():
                    yield InlineSession(session)
        else:
            async with self._async() as async_session, async_session.begin():
                yield AsyncSessionAdapter(async_session)

    async def dispose(self) -> None:
        if self.sqlite:
            self._read_engine.dispose()
            self._write_engine.dispose()
        else:
            await self._async_engine.dispose()


async def run_write(
    db: Database, work: Callable[[DbSession], Awaitable[T]], attempts: int = 3
) -> T:
    """Run `work(session)` in a write transaction, again when a concurrent writer won a
    unique-constraint race or a deadlock (PostgreSQL with several replicas)."""
    for attempt in range(attempts):
        try:
            async with db.write() as session:
                return await work(session)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
