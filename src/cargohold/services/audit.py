"""The audit log: who did what, when, from where.

Entries are written in the caller's transaction when the action is a change (`write`),
so the change and its record commit together; or queued (`record`) and written in
batches by a background task, for frequent events such as pulls and logins, so that
recording them never slows the request."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql

log = logging.getLogger(__name__)

INSERT = sql(
    """INSERT INTO audit_log (created_at, kind, actor_kind, actor, namespace, repository, ip,
       user_agent, details) VALUES (:created_at, :kind, :actor_kind, :actor, :namespace,
       :repository, :ip, :user_agent, :details)"""
)
MAX_QUEUE = 10_000

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
        # repositories
        "create_repo",
        "delete_repo",
        "change_repo_visibility",
        "change_repo_description",
        "change_repo_permission",
        "delete_repo_permission",
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
        if not self._queue:
            return
        batch, self._queue = self._queue, []

        async def work(session: DbSession) -> None:
            for entry in batch:
                await session.run(INSERT, **entry.row())

        try:
            await run_write(self.db, work)
        except Exception:
            log.exception("could not write %d audit entries; requeued", len(batch))
            self._queue[:0] = batch[: MAX_QUEUE - len(self._queue)]
