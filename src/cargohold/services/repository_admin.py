"""Managing repositories through the API: create (with the organization's default
permissions), list what the caller can read, describe, change visibility, delete.

Deleting answers at once: the repository is renamed out of the way to
`<namespace>/.deleted-<id>` (a name no client can use), marked `deleted_at` and loses its
grants and stars, so nothing resolves or lists it any more and its name is free; the
garbage collector then purges its tags, manifests, blob links and the row itself in
bounded batches (services/gc.py)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cargohold.auth.permissions import TEAM_ROLES, namespace_right
from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.auth.roles import NamespaceRight
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import (
    RepositoryName,
    check_creatable,
    parse_namespace,
    parse_repository,
)
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.problems import Conflict, Forbidden, Invalid, NotFound
from cargohold.services.repositories import RepositoryCreator

MAX_DESCRIPTION = 65_536
MAX_PAGE = 100

NAMESPACE = sql("SELECT id, kind FROM namespace WHERE name = :name")
REPOSITORY = sql(
    """SELECT r.id, r.name, r.public, r.description, n.name, n.kind FROM repository r
       JOIN namespace n ON n.id = r.namespace_id WHERE r.name = :name"""
)
SET_DESCRIPTION = sql("UPDATE repository SET description = :description WHERE id = :id")
SET_PUBLIC = sql("UPDATE repository SET public = :public WHERE id = :id")
# Taken before the rename: on PostgreSQL a push in flight (its inserts hold a key-share
# lock on the row) commits first, into the repository that is then purged.
LOCK = sql(
    "SELECT id FROM repository WHERE id = :id",
    postgres="SELECT id FROM repository WHERE id = :id FOR UPDATE",
)
MARK_DELETED = sql("UPDATE repository SET name = :gone, deleted_at = :now WHERE id = :id")
DELETE_GRANTS = sql("DELETE FROM repository_permission WHERE repository_id = :id")
DELETE_STARS = sql("DELETE FROM repository_star WHERE repository_id = :id")
# What a principal can read: the rules of auth/permissions.repository_access as one
# filter on `repository r` (public ones only when asked for), with `visibility_params`.
# Deleted repositories (waiting for the collector's purge) are nobody's to see. The only
# index on deleted_at is partial (ix_repository_deleted: WHERE deleted_at IS NOT NULL), so
# no planner can use it for `deleted_at IS NULL`: pages walk the name index (ORDER BY name
# LIMIT) on SQLite and PostgreSQL (tests/integration/test_listing_plans.py).
VISIBLE = """r.deleted_at IS NULL AND (
         :everything
         OR (r.public AND :with_public)
         OR r.namespace_id = :own_namespace
         OR r.id IN (SELECT repository_id FROM repository_permission
                     WHERE (kind = :kind AND grantee_id = :member)
                        OR (kind = 'team' AND grantee_id IN (SELECT team_id FROM team_member
                            WHERE kind = :kind AND member_id = :member)))
         OR r.namespace_id IN (SELECT t.org_id FROM team t JOIN team_member m
                               ON m.team_id = t.id WHERE t.role = 'admin'
                               AND m.kind = :kind AND m.member_id = :member))"""
# In one namespace or all, by name.
PAGE = sql(
    f"""SELECT r.name, r.public, r.description, n.name, n.kind FROM repository r
       JOIN namespace n ON n.id = r.namespace_id
       WHERE r.name > :last AND (:namespace = '' OR n.name = :namespace) AND {VISIBLE}
       ORDER BY r.name LIMIT :limit"""
)


def visibility_params(principal: Principal, *, with_public: bool) -> dict[str, Any]:
    """The parameters of VISIBLE for `principal`. Anonymous callers see public
    repositories; others see theirs, plus public ones if `with_public`."""
    signed_in = principal.id is not None and not principal.is_anonymous
    own = principal.namespace_id if principal.kind is PrincipalKind.USER else None
    return {
        "everything": principal.superuser,
        "with_public": with_public or not signed_in,
        "own_namespace": own if own is not None else -1,
        "kind": principal.kind.value,
        "member": principal.id if signed_in else -1,
    }


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    id: int | None
    name: str  # namespace/name
    public: bool
    description: str
    namespace: str
    namespace_kind: str

    @property
    def short_name(self) -> str:
        """The name within its namespace (Quay's `name` field)."""
        return self.name.split("/", 1)[1]


@dataclass(frozen=True, slots=True)
class RepositoryPage:
    repositories: list[RepositoryInfo]
    next_page: str | None


def encode_page(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def check_text(value: str, what: str) -> str:
    """Refuse NUL in text that reaches a query: PostgreSQL cannot take it in a text
    parameter (it would be a 500 there and a plain mismatch on SQLite)."""
    if "\x00" in value:
        raise Invalid(f"{what} must not contain NUL")
    return value


def decode_page(token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        last = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("next_page is not a page token of this API") from exc
    if len(last) > 255 or "\x00" in last:
        raise Invalid("next_page is not a page token of this API")
    return last


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description is longer than {MAX_DESCRIPTION} characters")
    return description


def _info(row: tuple[Any, ...], repo_id: int | None = None) -> RepositoryInfo:
    return RepositoryInfo(
        repo_id, str(row[0]), as_bool(row[1]), str(row[2] or ""), str(row[3]), str(row[4])
    )


class RepositoryAdmin:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        creator: RepositoryCreator,
        *,
        permissions_changed: Callable[[], None],
        content_changed: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.creator = creator
        self.permissions_changed = permissions_changed
        self.content_changed = content_changed  # drop cached repository ids and blob links

    async def _get(self, session: DbSession, name: str) -> RepositoryInfo:
        row = await session.one(REPOSITORY, name=name)
        if row is None:
            raise NotFound("no such repository")
        return _info(row[1:], int(row[0]))

    async def get(self, name: str) -> RepositoryInfo:
        async with self.db.read() as session:
            return await self._get(session, name)

    async def create(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        *,
        public: bool | None,
        description: str,
        origin: Origin,
    ) -> RepositoryInfo:
        """Create `namespace/name` if `principal` may create repositories there.
        A namespace that does not exist is created (as an organization) only for a
        superuser, as a superuser's first push does."""
        try:
            parse_namespace(namespace)
            repo = check_creatable(parse_repository(f"{namespace}/{name}"))
        except NameInvalid as exc:
            raise Invalid(str(exc)) from exc
        check_description(description)

        async def work(session: DbSession) -> RepositoryInfo:
            right = await self._creation_right(session, principal, repo)
            if await session.one(REPOSITORY, name=repo.value) is not None:
                raise Conflict(f"the repository {repo} exists")
            repo_id = await self.creator.create_in(session, principal, repo, right, origin, public)
            if description:
                await session.run(SET_DESCRIPTION, description=description, id=repo_id)
            return await self._get(session, repo.value)

        info = await run_write(self.db, work)
        self.permissions_changed()
        return info

    async def _creation_right(
        self, session: DbSession, principal: Principal, repo: RepositoryName
    ) -> NamespaceRight:
        ns = await session.one(NAMESPACE, name=repo.namespace)
        if ns is None:
            if principal.superuser:
                return NamespaceRight.ADMIN
            raise NotFound(f"no namespace {repo.namespace}")
        right = await namespace_right(session, principal, int(ns[0]), str(ns[1]))
        if right >= NamespaceRight.CREATE:
            return right
        member = False
        if ns[1] == "org" and principal.id is not None and not principal.is_anonymous:
            rows = await session.all(
                TEAM_ROLES, org=ns[0], kind=principal.kind.value, member=principal.id
            )
            member = bool(rows)
        if member:
            raise Forbidden(f"you may not create repositories in {repo.namespace}")
        # Outsiders learn nothing about a namespace they do not belong to.
        raise NotFound(f"no namespace {repo.namespace}")

    async def page(
        self,
        principal: Principal,
        *,
        namespace: str = "",
        with_public: bool = False,
        last: str = "",
        limit: int = MAX_PAGE,
    ) -> RepositoryPage:
        """Repositories `principal` can read, by name after `last`. Anonymous callers
        see public repositories; others see theirs, plus public ones if `with_public`."""
        check_text(last, "last")
        limit = max(1, min(limit, MAX_PAGE))
        async with self.db.read() as session:
            rows = await session.all(
                PAGE,
                last=last,
                namespace=namespace,
                limit=limit + 1,
                **visibility_params(principal, with_public=with_public),
            )
        infos = [_info(r) for r in rows[:limit]]
        more = len(rows) > limit
        return RepositoryPage(infos, encode_page(infos[-1].name) if more and infos else None)

    async def set_description(self, name: str, description: str, audit: AuditEntry) -> None:
        check_description(description)

        async def work(session: DbSession) -> None:
            repo = await self._get(session, name)
            await session.run(SET_DESCRIPTION, description=description, id=repo.id)
            audit.repository = name
            await self.audit.write(session, audit)

        await run_write(self.db, work)

    async def set_visibility(self, name: str, public: bool, audit: AuditEntry) -> None:
        async def work(session: DbSession) -> None:
            repo = await self._get(session, name)
            await session.run(SET_PUBLIC, public=public, id=repo.id)
            audit.repository = name
            audit.details.update({"public": public, "was_public": repo.public})
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.permissions_changed()

    async def delete(self, name: str, audit: AuditEntry) -> None:
        """Delete a repository with its content (see the module's docstring)."""

        async def work(session: DbSession) -> None:
            repo = await self._get(session, name)
            await session.run(LOCK, id=repo.id)
            # Unique (the id) and within the column's 255 characters whatever the name.
            gone = f"{repo.namespace}/.deleted-{repo.id}"[-255:]
            await session.run(MARK_DELETED, gone=gone, now=utcnow(), id=repo.id)
            await session.run(DELETE_GRANTS, id=repo.id)
            await session.run(DELETE_STARS, id=repo.id)
            audit.repository = name
            await self.audit.write(session, audit)

        await run_write(self.db, work)
        self.content_changed()
        self.permissions_changed()
