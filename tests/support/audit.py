"""The audit log of a test server, read straight from its database.

`assert_logged(server, "<kind>", ...)` waits (up to a few seconds: pulls and logins are
queued and written in batches every 0.5 s) for an entry of that kind matching every
field given, and returns it. tests/api_v1/test_audit_kinds.py reads the kinds of every
`assert_logged` call in tests/ and fails when some kind of services.audit.KINDS has
none, so pass the kind as a string literal:

    from tests.support.audit import assert_logged, last_id

    mark = last_id(server)
    ... the action ...
    assert_logged(server, "create_team", actor="alice", namespace=org,
                  details={"team": "builders"}, after=mark)

SQL runs on a connection of its own: sqlite3 on the server's file, or psycopg on its
PostgreSQL URL."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from cargohold.services.audit import KINDS
from tests.support.server import RegistryProcess

WAIT_SECONDS = 5.0
COLUMNS = "id, created_at, kind, actor_kind, actor, namespace, repository, ip, user_agent, details"
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class Logged:
    """One audit_log row."""

    id: int
    created_at: str
    kind: str
    actor_kind: str
    actor: str | None
    namespace: str | None
    repository: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


def database_url(server: RegistryProcess) -> str:
    url = server.database_url or server.extra_env.get("CARGOHOLD_DATABASE__URL")
    return url or f"sqlite:///{(server.data_dir / 'cargohold.db').as_posix()}"


@contextmanager
def _connect(server: RegistryProcess) -> Iterator[Any]:
    url = database_url(server)
    if url.startswith("sqlite:"):
        with closing(sqlite3.connect(url.split("///", 1)[1], timeout=30)) as conn:
            yield conn
    else:
        url = url.replace("postgresql+psycopg:", "postgresql:")
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn


def _sqlite(server: RegistryProcess) -> bool:
    return database_url(server).startswith("sqlite:")


def _render(server: RegistryProcess, text: str) -> str:
    if _sqlite(server):
        return text
    return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))


def _params(server: RegistryProcess, params: dict[str, Any]) -> dict[str, Any]:
    if not _sqlite(server):
        return params
    # SQLite holds datetimes as naive UTC text, as the server writes them.
    return {
        k: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
        for k, v in params.items()
    }


def query(server: RegistryProcess, text: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a SELECT with `:name` parameters, on either database."""
    with _connect(server) as conn:
        return list(conn.execute(_render(server, text), _params(server, params)).fetchall())


def execute(server: RegistryProcess, text: str, rows: list[dict[str, Any]]) -> None:
    """Run a changing statement once per parameter set, in one transaction."""
    rendered = _render(server, text)
    converted = [_params(server, row) for row in rows]
    with _connect(server) as conn:
        if isinstance(conn, sqlite3.Connection):
            with conn:
                conn.executemany(rendered, converted)
        else:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(rendered, converted)


def _logged(row: tuple[Any, ...]) -> Logged:
    return Logged(
        int(row[0]),
        str(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        json.loads(row[9] or "{}"),
    )


def last_id(server: RegistryProcess) -> int:
    """The newest entry's id: pass it as `after=` to look only at what comes next."""
    value = query(server, "SELECT MAX(id) FROM audit_log")[0][0]
    return int(value or 0)


def entries(server: RegistryProcess, kind: str | None = None, *, after: int = 0) -> list[Logged]:
    """Entries (of `kind`) with ids above `after`, oldest first."""
    text = f"SELECT {COLUMNS} FROM audit_log WHERE id > :after"
    params: dict[str, Any] = {"after": after}
    if kind is not None:
        text += " AND kind = :kind"
        params["kind"] = kind
    return [_logged(row) for row in query(server, text + " ORDER BY id", **params)]


def _matches(entry: Logged, wanted: dict[str, Any], details: dict[str, Any]) -> bool:
    if any(getattr(entry, field) != value for field, value in wanted.items()):
        return False
    return all(key in entry.details and entry.details[key] == v for key, v in details.items())


def assert_logged(
    server: RegistryProcess,
    kind: str,
    *,
    actor: str | None = None,
    actor_kind: str | None = None,
    namespace: str | None = None,
    repository: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
    after: int = 0,
    timeout: float = WAIT_SECONDS,
) -> Logged:
    """The newest entry of `kind` (with id above `after`) whose fields equal every one
    given (None: any) and whose details contain `details`; waits for queued entries."""
    assert kind in KINDS, f"{kind!r} is not in services.audit.KINDS"
    wanted = {
        field: value
        for field, value in {
            "actor": actor,
            "actor_kind": actor_kind,
            "namespace": namespace,
            "repository": repository,
            "ip": ip,
            "user_agent": user_agent,
        }.items()
        if value is not None
    }
    deadline = time.monotonic() + timeout
    while True:
        found = entries(server, kind, after=after)
        hits = [e for e in found if _matches(e, wanted, details or {})]
        if hits:
            return hits[-1]
        if time.monotonic() >= deadline:
            recent = "\n".join(f"  {e}" for e in found[-5:]) or "  (none)"
            raise AssertionError(
                f"no {kind!r} entry with {wanted} and details {details or {}} "
                f"after id {after}; the latest {kind!r} entries:\n{recent}"
            )
        time.sleep(0.1)


def drain_queue(server: RegistryProcess) -> None:
    """Return once everything the server queued so far (pulls, logins) is written: queue
    one more entry (an anonymous token request with a unique user agent) and wait for
    it. Entries are written in the order they were queued (one worker process)."""
    marker = f"audit-drain-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        answer = client.get("/v2/auth", headers={"User-Agent": marker})
        assert answer.status_code == 200, answer.text
    assert_logged(server, "token_issued", actor_kind="anonymous", user_agent=marker)
