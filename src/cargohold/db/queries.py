"""Small SQL helpers shared by the services, written once for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite

from cargohold.db.base import Base
from cargohold.db.models import Namespace, Repository
from cargohold.db.session import DbSession


async def insert_ignore(
    session: DbSession, model: type[Base], values: dict[str, Any] | list[dict[str, Any]]
) -> None:
    """INSERT (one row or many) that skips rows a unique constraint says are there already."""
    if isinstance(values, list) and not values:
        return
    if session.dialect == "postgresql":
        await session.execute(postgresql.insert(model).values(values).on_conflict_do_nothing())
    else:
        await session.execute(sqlite.insert(model).values(values).on_conflict_do_nothing())


async def insert_returning_id(session: DbSession, model: Any, values: dict[str, Any]) -> int:
    """INSERT one row with Core (no ORM unit of work) and return its new id."""
    new_id: int = (
        await session.execute(insert(model).values(values).returning(model.id))
    ).scalar_one()
    return new_id


async def repository_id(session: DbSession, name: str) -> int | None:
    return (
        await session.execute(select(Repository.id).where(Repository.name == name))
    ).scalar_one_or_none()


async def ensure_repository(session: DbSession, name: str, namespace: str) -> int:
    """The id of repository `name`, creating it (and its namespace) on first use."""
    existing = await repository_id(session, name)
    if existing is not None:
        return existing
    await insert_ignore(session, Namespace, {"name": namespace})
    ns_id = (
        await session.execute(select(Namespace.id).where(Namespace.name == namespace))
    ).scalar_one()
    await insert_ignore(session, Repository, {"name": name, "namespace_id": ns_id})
    repo_id = await repository_id(session, name)
    assert repo_id is not None
    return repo_id
