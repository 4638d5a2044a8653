"""The audit log: who did what, when, from where.

Entries are written in the caller's transaction when the action is a change (`write`),
so the change and its record commit together; or queued (`record`) and written in
batches by a background task, for frequent events such as pulls and logins, so that
recording them never slows the request.

`search` answers the logs API (newest first, keyset pages on the id, each scope on its
own index); `purge` applies the retention setting in bounded batches."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import Sql, sql
from cargohold.db.values import as_datetime

log = logging.getLogger(__name__)

INSERT = sql(
    """INSERT INTO audit_log (created_at, kind, actor_kind, actor, namespace, repository, ip,
       user_agent, details) VALUES (:created_at, :kind, :actor_kind, :actor, :namespace,
       :repository, :ip, :user_agent, :details)"""
)
MAX_QUEUE = 10_000
FLUSH_BATCH = 500
PURGE_BATCH = 1000
# Larger than any id: the first page of a search.
FIRST_PAGE = 2**62
COLUMNS = "id, created_at, kind, actor_kind, actor, namespace, repository, ip, user_agent, details"
PURGE = sql(
    """DELETE FROM audit_log WHERE id IN
       (SELECT id FROM audit_log WHERE created_at < :cutoff LIMIT :limit)"""
)

# Every kind of entry, the one list (the API's `kinds` filter and the tests use it).
# Superuser actions carry {"superuser": true} in their details.
KINDS = frozenset(
    {
        # sign-in and credentials
        "login",
        "login_failure",
        "account_locked",
        "logout",
        "token_issued",
        "create_app_token",
        "revoke_app_token",
        "create_cli_password",
        # content (the registry protocol and the API)
        "push",
        "pull",
        "delete_manifest",
        "create_tag",
        "move_tag",
        "delete_tag",
        # tags: expiry, the time machine, immutability, labels (services/tags.py)
        "tag_expired",
        "change_tag_expiration",
        "restore_tag",
        "permanently_delete_tag",
        "create_immutability_rule",
        "delete_immutability_rule",
        "manifest_label_add",
        "manifest_label_delete",
        # repositories
        "create_repo",
        "delete_repo",
        "change_repo_visibility",
        "change_repo_description",
        "change_repo_permission",
        "delete_repo_permission",
        "star_repo",
        "unstar_repo",
        # storage quotas (services/usage.py)
        "change_quota",
        "delete_quota",
        "quota_warning",
        "quota_exceeded",
        # robots
        "create_robot",
        "regenerate_robot_token",
        "delete_robot",
        # users, organizations and teams
        "create_user",
        "change_user",
        "delete_user",
        "create_org",
        "change_org",
        "delete_org",
        "create_team",
        "change_team",
        "delete_team",
        "add_team_member",
        "remove_team_member",
        "sync_team",
        "create_prototype",
        "change_prototype",
        "delete_prototype",
        # OAuth applications
        "create_application",
        "change_application",
        "delete_application",
        "reset_application_secret",
        "create_oauth_token",
    }
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from."""

    ip: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class AuditEntry:
    kind: str
    principal: Principal
    origin: Origin = Origin()
    namespace: str | None = None
    repository: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown audit kind {self.kind!r}: add it to services.audit.KINDS")

    def row(self) -> dict[str, Any]:
        p = self.principal
        actor_kind = p.kind.value
        if p.kind is PrincipalKind.USER and p.credential_id is not None:
            actor_kind = "token"
        details = dict(self.details)
        if p.credential_id is not None:
            details.setdefault("credential_id", p.credential_id)
        if p.method.value != "none":
            details.setdefault("auth", p.method.value)
        namespace = self.namespace
        if namespace is None and self.repository:
            namespace = self.repository.split("/", 1)[0]
        return {
            "created_at": self.created_at,
            "kind": self.kind,
            "actor_kind": actor_kind,
            "actor": p.name,
            "namespace": namespace,
            "repository": self.repository,
            "ip": self.origin.ip[:64] if self.origin.ip else None,
            "user_agent": (self.origin.user_agent or "")[:512] or None,
            "details": json.dumps(details, separators=(",", ":"), default=str),
        }


class AuditLog:
    def __init__(self, db: Database, *, log_pulls: bool = True) -> None:
        self.db = db
        self.log_pulls = log_pulls
        self._queue: list[AuditEntry] = []

    async def write(self, session: DbSession, entry: AuditEntry) -> None:
        """Record `entry` inside the caller's transaction."""
        await session.run(INSERT, **entry.row())

    def record(self, entry: AuditEntry) -> None:
        """Queue `entry`; written within a second by `flush`."""
        if entry.kind == "pull" and not self.log_pulls:
            return
        if len(self._queue) >= MAX_QUEUE:
            log.warning("audit queue full: dropping %s", entry.kind)
            return
        self._queue.append(entry)

    async def flush(self) -> None:
        """Write what is queued, in batches of FLUSH_BATCH rows, one driver call each,
        letting other work run between them: on SQLite writes run on the event loop, so
        one long batch would stall every request meanwhile."""
        while self._queue:
            batch, self._queue = self._queue[:FLUSH_BATCH], self._queue[FLUSH_BATCH:]
            rows = [entry.row() for entry in batch]

            async def work(session: DbSession, rows: list[dict[str, Any]] = rows) -> None:
                await session.run_many(INSERT, rows)

            try:
                await run_write(self.db, work)
            except Exception:
                log.exception("could not write %d audit entries; requeued", len(batch))
                self._queue[:0] = batch[: MAX_QUEUE - len(self._queue)]
                return
            await asyncio.sleep(0)

    async def purge(self, older_than: timedelta, *, batch: int = PURGE_BATCH) -> int:
        """Delete entries older than `older_than`, `batch` rows per transaction so that
        writers never wait long; the number deleted."""
        cutoff = utcnow() - older_than

        async def work(session: DbSession) -> int:
            return await session.run(PURGE, cutoff=cutoff, limit=batch)

        total = 0
        while True:
            deleted = await run_write(self.db, work)
            total += deleted
            if deleted < batch:
                break
            await asyncio.sleep(0)  # let waiting requests in between batches
        if total:
            log.info("audit retention: deleted %d entries older than %s", total, cutoff)
        return total

    async def search(
        self, scope: LogScope, where: LogFilter, *, before: int | None, limit: int
    ) -> list[LogRecord]:
        """Entries of `scope` matching `where`, newest first, with ids below `before`."""
        params: dict[str, Any] = {"before": FIRST_PAGE if before is None else before}
        params["limit"] = limit
        if where.start is not None:
            params["start"] = where.start
        if where.end is not None:
            params["end"] = where.end
        kinds = sorted(where.kinds)
        for i, kind in enumerate(kinds):
            params[f"k{i}"] = kind
        if scope.repository is not None:
            params["repository"] = scope.repository
        elif scope.namespace is not None:
            params["namespace"] = scope.namespace
        elif scope.user is not None:
            params["user"] = scope.user
        statement = _search_statement(
            scope.kind, len(kinds), where.start is not None, where.end is not None
        )
        async with self.db.read() as session:
            rows = await session.all(statement, **params)
        return [LogRecord.from_row(row) for row in rows]


@dataclass(frozen=True, slots=True)
class LogScope:
    """Whose entries a search sees: one repository's, one namespace's (an organization or
    a user's own), one user's (as the actor, or in their namespace), or all of them."""

    repository: str | None = None
    namespace: str | None = None
    user: str | None = None

    @property
    def kind(self) -> str:
        if self.repository is not None:
            return "repository"
        if self.namespace is not None:
            return "namespace"
        if self.user is not None:
            return "user"
        return "all"


@dataclass(frozen=True, slots=True)
class LogFilter:
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    kinds: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LogRecord:
    id: int
    created_at: datetime
    kind: str
    actor_kind: str
    actor: str | None
    namespace: str | None
    repository: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LogRecord:
        try:
            details = json.loads(row[9] or "{}")
        except ValueError:
            details = {}
        created = as_datetime(row[1])
        assert created is not None
        return cls(
            int(row[0]),
            created,
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            details if isinstance(details, dict) else {},
        )


@lru_cache(maxsize=256)
def _search_statement(scope: str, kinds: int, start: bool, end: bool) -> Sql:
    """One statement per shape of query. Each scope walks its own (column, id) index
    backwards from `before`; a user's entries are the union of two such walks."""
    filters = ["id < :before"]
    if start:
        filters.append("created_at >= :start")
    if end:
        filters.append("created_at < :end")
    if kinds:
        filters.append(f"kind IN ({', '.join(f':k{i}' for i in range(kinds))})")
    common = " AND ".join(filters)

    def walk(condition: str | None) -> str:
        where = f"{condition} AND {common}" if condition else common
        return f"SELECT {COLUMNS} FROM audit_log WHERE {where} ORDER BY id DESC LIMIT :limit"

    if scope == "repository":
        return sql(walk("repository = :repository"))
    if scope == "namespace":
        return sql(walk("namespace = :namespace"))
    if scope == "all":
        return sql(walk(None))
    assert scope == "user"
    as_actor = walk("actor = :user AND actor_kind IN ('user', 'token')")
    in_namespace = walk("namespace = :user")
    return sql(
        f"""SELECT {COLUMNS} FROM ({as_actor}) AS a UNION SELECT {COLUMNS} FROM ({in_namespace})
            AS b ORDER BY id DESC LIMIT :limit"""
    )
