"""What a principal may do on a repository or in a namespace, from the database.

Answers are cached per process for a short time and dropped at once when this host
changes a permission (a shared generation counter); other hosts see a change within
`auth.credential_cache_seconds`, or at once with Redis (shared/state.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.auth.roles import NamespaceRight, Role, TeamRole
from cargohold.db.session import Database, DbSession
from cargohold.db.sql import sql
from cargohold.db.values import as_bool
from cargohold.services.cache import Generation

REPOSITORY = sql(
    """SELECT r.id, r.public, n.id, n.kind FROM repository r
       JOIN namespace n ON n.id = r.namespace_id WHERE r.name = :name"""
)
NAMESPACE = sql("SELECT id, kind FROM namespace WHERE name = :name")
TEAM_ROLES = sql(
    """SELECT t.role FROM team t JOIN team_member m ON m.team_id = t.id
       WHERE t.org_id = :org AND m.kind = :kind AND m.member_id = :member"""
)
EXPLICIT_ROLES = sql(
    """SELECT role FROM repository_permission WHERE repository_id = :repo AND (
         (kind = :kind AND grantee_id = :member)
         OR (kind = 'team' AND grantee_id IN
             (SELECT team_id FROM team_member WHERE kind = :kind AND member_id = :member)))"""
)


@dataclass(frozen=True, slots=True)
class RepositoryAccess:
    exists: bool
    role: Role | None  # the principal's role on the repository (None: no access)
    right: NamespaceRight  # the principal's right in the repository's namespace
    public: bool = False
    repository_id: int | None = None


async def namespace_right(
    session: DbSession, principal: Principal, namespace_id: int, namespace_kind: str
) -> NamespaceRight:
    if principal.superuser:
        return NamespaceRight.ADMIN
    if principal.kind is PrincipalKind.ANONYMOUS or principal.id is None:
        return NamespaceRight.NONE
    if principal.kind is PrincipalKind.USER and principal.namespace_id == namespace_id:
        return NamespaceRight.ADMIN
    if namespace_kind != "org":
        return NamespaceRight.NONE
    rows = await session.all(
        TEAM_ROLES, org=namespace_id, kind=principal.kind.value, member=principal.id
    )
    roles = {r[0] for r in rows}
    if TeamRole.ADMIN.value in roles:
        return NamespaceRight.ADMIN
    if TeamRole.CREATOR.value in roles:
        return NamespaceRight.CREATE
    return NamespaceRight.NONE


async def repository_access(
    session: DbSession, principal: Principal, repository: str
) -> RepositoryAccess:
    namespace = repository.split("/", 1)[0]
    row = await session.one(REPOSITORY, name=repository)
    if row is None:
        ns = await session.one(NAMESPACE, name=namespace)
        if ns is None:
            # Only a superuser may push into a namespace that does not exist (it becomes
            # an organization).
            if principal.superuser:
                return RepositoryAccess(False, Role.ADMIN, NamespaceRight.ADMIN)
            return RepositoryAccess(False, None, NamespaceRight.NONE)
        right = await namespace_right(session, principal, ns[0], ns[1])
        # Whoever administers the namespace may learn what is not in it (404s); others
        # get the same denial for a missing repository as for a private one.
        owner_role = Role.ADMIN if right is NamespaceRight.ADMIN else None
        return RepositoryAccess(False, owner_role, right)
    repo_id, public, ns_id, ns_kind = row[0], as_bool(row[1]), row[2], row[3]
    right = await namespace_right(session, principal, ns_id, ns_kind)
    role: Role | None = None
    if right is NamespaceRight.ADMIN:
        role = Role.ADMIN
    elif principal.id is not None and principal.kind is not PrincipalKind.ANONYMOUS:
        rows = await session.all(
            EXPLICIT_ROLES, repo=repo_id, kind=principal.kind.value, member=principal.id
        )
        if rows:
            role = max(Role.parse(r[0]) for r in rows)
    if public and role is None:
        role = Role.READ
    return RepositoryAccess(True, role, right, public, repo_id)


class PermissionCache:
    """(principal, repository) -> RepositoryAccess, with a lifetime and a generation."""

    def __init__(self, generation: Generation, ttl: float, max_entries: int = 100_000) -> None:
        self.generation = generation
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen = generation.current()
        self._entries: dict[tuple[object, str], tuple[float, RepositoryAccess]] = {}

    def get(self, principal: Principal, repository: str) -> RepositoryAccess | None:
        now = self.generation.current()
        if now != self._seen:
            self._entries.clear()
            self._seen = now
            return None
        hit = self._entries.get((principal.key, repository))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(
        self, snapshot: int, principal: Principal, repository: str, a: RepositoryAccess
    ) -> None:
        if snapshot != self._seen or self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[(principal.key, repository)] = (time.monotonic() + self.ttl, a)

    def invalidate(self) -> None:
        self.generation.bump()
        self._entries.clear()
        self._seen = self.generation.current()


class Permissions:
    def __init__(self, db: Database, cache: PermissionCache) -> None:
        self.db = db
        self.cache = cache

    async def repository(self, principal: Principal, repository: str) -> RepositoryAccess:
        hit = self.cache.get(principal, repository)
        if hit is not None:
            return hit
        snapshot = self.cache.generation.current()
        async with self.db.read() as session:
            access = await repository_access(session, principal, repository)
        if access.exists:  # a repository that does not exist yet may be created any moment
            self.cache.put(snapshot, principal, repository, access)
        return access

    def changed(self) -> None:
        """Call after any change to permissions, teams, robots, users or visibility."""
        self.cache.invalidate()
