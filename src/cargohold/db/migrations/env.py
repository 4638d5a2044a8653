"""Alembic environment: runs on a synchronous engine for SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool

from cargohold.db import models  # noqa: F401  (registers the tables)
from cargohold.db.base import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None

if url.startswith("sqlite"):
    db_path = url.split("///", 1)[-1]
    if db_path and db_path != ":memory:":
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)

connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
