"""Immutable tags: per-repository glob patterns (`fnmatch.fnmatchcase`, so `v*` and
`release-[0-9]*`). A live tag matching one cannot be moved, deleted or expired, nor taken
away by deleting the manifest it points at; pushing the digest it already points at is
no change and is allowed. The registry refuses with DENIED, the API with 409.

On PostgreSQL the checks and rule changes are serialised per repository: a tag change
holds the repository row `FOR KEY SHARE` while it reads the rules (tag changes do not
block one another, nor quota updates of the row), a rule change takes it `FOR UPDATE`.
So a rule added while a tag moves either sees the move done or is seen by it. SQLite
runs write transactions one at a time."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.problems import Conflict, Invalid, NotFound

MAX_RULES = 100  # per repository
MAX_PATTERN = 256  # the column's length
# Tag characters plus the glob's own (* ? [ ] !).
PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]+")

GUARD = sql(
    "SELECT id FROM repository WHERE id = :id",
    postgres="SELECT id FROM repository WHERE id = :id FOR KEY SHARE",
)
LOCK = sql(
    "SELECT id FROM repository WHERE id = :id",
    postgres="SELECT id FROM repository WHERE id = :id FOR UPDATE",
)
RULES = sql("SELECT id, pattern FROM tag_immutability_rule WHERE repository_id = :id ORDER BY id")


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    pattern: str


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` cannot be a rule, or None."""
    if not 0 < len(pattern) <= MAX_PATTERN:
        return f"a pattern has 1 to {MAX_PATTERN} characters"
    if not PATTERN.fullmatch(pattern):
        return "a pattern has tag characters (A-Z a-z 0-9 _ . -) and the glob's * ? [ ] !"
    return None


def matching(rules: Iterable[Rule], tag: str) -> Rule | None:
    for rule in rules:
        if fnmatchcase(tag, rule.pattern):
            return rule
    return None


async def rules(session: DbSession, repository_id: int, *, guard: bool = True) -> list[Rule]:
    """The repository's rules; `guard` first takes the row lock that orders them against
    rule changes (take it in every transaction that changes a tag on their word)."""
    if guard:
        await session.one(GUARD, id=repository_id)
    return [Rule(int(r[0]), str(r[1])) for r in await session.all(RULES, id=repository_id)]


async def rule_for(session: DbSession, repository_id: int, tag: str) -> Rule | None:
    """The first rule that makes `tag` immutable, or None."""
    return matching(await rules(session, repository_id), tag)


def refusal(tag: str, rule: Rule, action: str) -> str:
    """The message both surfaces show."""
    return f"tag {tag} is immutable (rule {rule.pattern!r}): it cannot be {action}"


# -- managing the rules (the API) -----------------------------------------------------------

INSERT_RULE = sql(
    "INSERT INTO tag_immutability_rule (repository_id, pattern, created_at) "
    "VALUES (:repository_id, :pattern, :now) RETURNING id"
)
DELETE_RULE = sql(
    "DELETE FROM tag_immutability_rule WHERE id = :id AND repository_id = :repository_id"
)
RULE = sql(
    "SELECT id, pattern FROM tag_immutability_rule "
    "WHERE id = :id AND repository_id = :repository_id"
)
EXPIRING_TAGS = sql(
    "SELECT id, name FROM tag WHERE repository_id = :repository_id AND ended_at IS NULL "
    "AND expires_at > :now"
)
CLEAR_EXPIRY = sql(
    "UPDATE tag SET expires_at = NULL WHERE id IN (SELECT value FROM json_each(:ids))",
    postgres="UPDATE tag SET expires_at = NULL WHERE id = ANY(:ids)",
)
CHUNK = 500  # tag ids per UPDATE


def id_list(session: DbSession, ids: list[int]) -> object:
    """A list parameter for `IN json_each(:ids)` (SQLite) or `= ANY(:ids)` (PostgreSQL)."""
    return ids if session.dialect == "postgresql" else json.dumps(ids)


class ImmutabilityRules:
    """Adding a rule clears the expiration of the live tags it matches (an immutable tag
    does not expire); the entry lists them."""

    def __init__(
        self, db: Database, audit: AuditLog, *, content_changed: Callable[[], None]
    ) -> None:
        self.db = db
        self.audit = audit
        self.content_changed = content_changed

    async def _repository(self, session: DbSession, name: str) -> int:
        repo_id = await queries.repository_id(session, name)
        if repo_id is None:
            raise NotFound("no such repository")
        return repo_id

    async def list(self, repository: str) -> list[Rule]:
        async with self.db.read() as session:
            repo_id = await self._repository(session, repository)
            return await rules(session, repo_id, guard=False)

    async def add(self, repository: str, pattern: str, entry: AuditEntry) -> Rule:
        problem = check_pattern(pattern)
        if problem is not None:
            raise Invalid(problem)

        async def work(session: DbSession) -> tuple[Rule, bool]:
            repo_id = await self._repository(session, repository)
            await session.one(LOCK, id=repo_id)
            existing = await rules(session, repo_id, guard=False)
            if any(rule.pattern == pattern for rule in existing):
                raise Conflict(f"the rule {pattern!r} exists")
            if len(existing) >= MAX_RULES:
                raise Invalid(f"a repository has at most {MAX_RULES} immutability rules")
            rule_id = await session.value(
                INSERT_RULE, repository_id=repo_id, pattern=pattern, now=utcnow()
            )
            rule = Rule(int(rule_id), pattern)
            # Matched here, cleared a chunk per statement: the repository row stays locked
            # for as few round trips as the number of tags allows.
            matched = [
                (int(tag_id), str(name))
                for tag_id, name in await session.all(
                    EXPIRING_TAGS, repository_id=repo_id, now=utcnow()
                )
                if fnmatchcase(name, pattern)
            ]
            for start in range(0, len(matched), CHUNK):
                ids = [tag_id for tag_id, _ in matched[start : start + CHUNK]]
                await session.run(CLEAR_EXPIRY, ids=id_list(session, ids))
            cleared = [name for _, name in matched]
            entry.repository = repository
            entry.details.update(
                {"id": rule.id, "pattern": pattern, "cleared_expirations": sorted(cleared)[:100]}
            )
            await self.audit.write(session, entry)
            return rule, bool(cleared)

        rule, cleared = await run_write(self.db, work)
        if cleared:
            self.content_changed()
        return rule

    async def delete(self, repository: str, rule_id: int, entry: AuditEntry) -> None:
        async def work(session: DbSession) -> None:
            repo_id = await self._repository(session, repository)
            await session.one(LOCK, id=repo_id)
            row = await session.one(RULE, id=rule_id, repository_id=repo_id)
            if row is None:
                raise NotFound("no such immutability rule in this repository")
            await session.run(DELETE_RULE, id=rule_id, repository_id=repo_id)
            entry.repository = repository
            entry.details.update({"id": rule_id, "pattern": str(row[1])})
            await self.audit.write(session, entry)

        await run_write(self.db, work)
