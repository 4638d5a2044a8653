"""Finding repositories: the API's repository list (with stars, size and last change),
the search by substring, and stars.

Every list is one statement per page (keyset on the full name) filtered by the visibility
rule of services/repository_admin.py (VISIBLE), so a caller finds exactly what it may
read, and never a deleted repository. A repository's size (`used_bytes`) and last change
(`changed_at`, set by the pushes and tag changes that make one) are columns of its row:
a page costs the same however many manifests and tags its repositories hold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool, as_datetime
from cargohold.services.audit import AuditEntry, AuditLog
from cargohold.services.repository_admin import (
    MAX_PAGE,
    VISIBLE,
    check_text,
    encode_page,
    visibility_params,
)

MAX_QUERY = 255

# The caller's star is a join on the star's primary key (user_id, repository_id); the
# name index drives the page whatever the filters (tests/integration/test_listing_plans.py).
# The search: names are lowercase by their grammar. SQLite's LOWER() (and LIKE) fold ASCII
# only, so a query with other letters compares descriptions through `unicode_lower`, the
# Python function db/session.py registers on every SQLite connection; ASCII queries keep
# the built-in (a Python call per row doubles the cost of a scan).
_LISTED = """SELECT r.name, r.public, r.description, n.name, n.kind, r.used_bytes,
          s.user_id IS NOT NULL AS starred, r.changed_at
        FROM repository r JOIN namespace n ON n.id = r.namespace_id
        LEFT JOIN repository_star s ON s.repository_id = r.id AND s.user_id = :user
        WHERE r.name > :last
          AND (:namespace = '' OR n.name = :namespace)
          AND (NOT :starred_only OR s.user_id IS NOT NULL)
          AND (:pattern = '' OR r.name LIKE :pattern ESCAPE '!'
               OR {description} LIKE :pattern ESCAPE '!')
          AND {visible}
        ORDER BY r.name LIMIT :limit"""
LISTED = sql(
    _LISTED.format(
        description="""(CASE WHEN :unicode THEN unicode_lower(r.description)
                        ELSE LOWER(r.description) END)""",
        visible=VISIBLE,
    ),
    postgres=_LISTED.format(description="LOWER(r.description)", visible=VISIBLE),
)
STAR = sql(
    """INSERT INTO repository_star (user_id, repository_id, created_at)
       SELECT :user, id, :now FROM repository WHERE name = :name AND deleted_at IS NULL
       ON CONFLICT DO NOTHING"""
)
UNSTAR = sql(
    """DELETE FROM repository_star WHERE user_id = :user
       AND repository_id IN (SELECT id FROM repository WHERE name = :name)"""
)


@dataclass(frozen=True, slots=True)
class ListedRepository:
    name: str  # namespace/name
    public: bool
    description: str
    namespace: str
    namespace_kind: str
    size: int  # bytes of the blobs linked into it (docs/quotas.md)
    starred: bool  # by the caller
    last_modified: datetime | None

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]


@dataclass(frozen=True, slots=True)
class ListedPage:
    repositories: list[ListedRepository]
    next_page: str | None


def like_pattern(query: str) -> str:
    """`%query%` for LIKE, lowercased, with the wildcards of `query` taken literally."""
    escaped = query.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _listed(row: tuple[Any, ...]) -> ListedRepository:
    return ListedRepository(
        str(row[0]),
        as_bool(row[1]),
        str(row[2] or ""),
        str(row[3]),
        str(row[4]),
        int(row[5] or 0),
        as_bool(row[6]),
        as_datetime(row[7]),
    )


def user_id(principal: Principal) -> int | None:
    if principal.kind is PrincipalKind.USER and principal.id is not None:
        return principal.id
    return None


class RepositorySearch:
    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    async def page(
        self,
        principal: Principal,
        *,
        viewer: Principal | None = None,
        namespace: str = "",
        with_public: bool = False,
        starred_only: bool = False,
        query: str = "",
        last: str = "",
        limit: int = MAX_PAGE,
    ) -> ListedPage:
        """Repositories `principal` can read, by name after `last`: in `namespace`,
        starred by the caller, or matching `query` (a substring of the name or the
        description, any case). `viewer` is whose stars count (default `principal`; a
        token without repo:read lists as anonymous but still has its user's stars)."""
        check_text(query, "query")
        check_text(last, "last")
        limit = max(1, min(limit, MAX_PAGE))
        viewer_id = user_id(viewer or principal)
        async with self.db.read() as session:
            rows = await session.all(
                LISTED,
                last=last,
                namespace=namespace,
                user=viewer_id if viewer_id is not None else -1,
                starred_only=starred_only,
                pattern=like_pattern(query) if query else "",
                unicode=not query.isascii(),
                limit=limit + 1,
                **visibility_params(principal, with_public=with_public),
            )
        found = [_listed(r) for r in rows[:limit]]
        more = len(rows) > limit
        return ListedPage(found, encode_page(found[-1].name) if more and found else None)

    async def star(self, user: int, repository: str, audit: AuditEntry) -> None:
        """Star a repository (the caller checked that the user may read it); idempotent."""

        async def work(session: DbSession) -> None:
            if await session.run(STAR, user=user, name=repository, now=utcnow()):
                audit.repository = repository
                await self.audit.write(session, audit)

        await run_write(self.db, work)

    async def unstar(self, user: int, repository: str, audit: AuditEntry) -> None:
        """Remove a star; idempotent, and the same whether the repository exists or not."""

        async def work(session: DbSession) -> None:
            if await session.run(UNSTAR, user=user, name=repository):
                audit.repository = repository
                await self.audit.write(session, audit)

        await run_write(self.db, work)
