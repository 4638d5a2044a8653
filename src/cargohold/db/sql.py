"""Hand-written SQL for the hot paths, run on the driver's own cursor.

SQLAlchemy builds the schema (models + Alembic) and owns connections and transactions;
statements on request paths skip its expression and ORM layers, which cost several times
more than SQLite itself (docs/perf/README.md). Each statement is written once with
`:name` parameters and rendered for PostgreSQL's `%(name)s` style when it is defined."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Sql:
    sqlite: str
    postgres: str


def sql(text: str, *, postgres: str | None = None) -> Sql:
    """A statement for both databases; `postgres` overrides where the dialects differ."""
    text = " ".join(text.split())
    pg = " ".join(postgres.split()) if postgres is not None else text
    return Sql(text, _PARAM.sub(r"%(\1)s", pg.replace("%", "%%")))
