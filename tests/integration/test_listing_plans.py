"""Repository pages walk the name index on SQLite: the catalog (`/v2/_catalog`, all and
visible to a principal), the API's repository list and search. SQLite has no statistics
unless ANALYZE ran (the registry never runs it), so an index usable for
`deleted_at IS NULL` would look selective to it and it would sort every live repository
on every page ("USE TEMP B-TREE FOR ORDER BY"): O(N) a page, O(N^2) a walk. The index on
deleted_at is partial (WHERE deleted_at IS NOT NULL) for that reason. A listed
repository's size and last change are columns of its row: no subquery on its manifests
or tags."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.db import queries
from cargohold.db.migrate import upgrade
from cargohold.db.sql import Sql
from cargohold.services import repository_admin, repository_search

NAME_INDEX = "USING INDEX sqlite_autoindex_repository_1 (name>?)"
VISIBILITY = {
    "everything": False,
    "with_public": True,
    "own_namespace": 1,
    "kind": "user",
    "member": 1,
    "yes": True,
}
LISTED = {"namespace": "", "user": 1, "starred_only": False, "pattern": "", "unicode": False}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    path: Path = tmp_path_factory.mktemp("plans") / "plans.db"
    upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    conn.create_function("unicode_lower", 1, str.lower, deterministic=True)
    yield conn
    conn.close()


def plan(db: sqlite3.Connection, statement: Sql, **params: Any) -> list[str]:
    rows = db.execute(
        "EXPLAIN QUERY PLAN " + statement.sqlite, {"last": "", "limit": 101, **params}
    )
    return [str(row[3]) for row in rows]


CASES = {
    "catalog": (queries.REPOSITORIES_PAGE, {}),
    "visible catalog": (queries.VISIBLE_REPOSITORIES_PAGE, VISIBILITY),
    "api page": (repository_admin.PAGE, {**VISIBILITY, "namespace": ""}),
    "list": (repository_search.LISTED, {**VISIBILITY, **LISTED}),
    "list, one namespace": (repository_search.LISTED, {**VISIBILITY, **LISTED, "namespace": "a"}),
    "starred": (repository_search.LISTED, {**VISIBILITY, **LISTED, "starred_only": True}),
    "search": (repository_search.LISTED, {**VISIBILITY, **LISTED, "pattern": "%a%"}),
    "search, not ascii": (
        repository_search.LISTED,
        {**VISIBILITY, **LISTED, "pattern": "%é%", "unicode": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pages_walk_the_name_index(db: sqlite3.Connection, case: str) -> None:
    statement, params = CASES[case]
    steps = plan(db, statement, **params)
    assert steps[0].startswith("SEARCH ") and steps[0].endswith(NAME_INDEX), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps


def test_a_listed_repository_reads_none_of_its_manifests_or_tags(db: sqlite3.Connection) -> None:
    steps = plan(db, repository_search.LISTED, **VISIBILITY, **LISTED)
    assert not any(
        " tag " in f" {step} " or " manifest " in f" {step} " or "SCALAR SUBQUERY" in step
        for step in steps
    ), steps
