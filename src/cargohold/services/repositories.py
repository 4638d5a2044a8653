"""Creating repositories with their initial permissions (the organization's default
permissions, and admin for a creator who has only the right to create)."""

from __future__ import annotations

from cargohold.auth.permissions import namespace_right
from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.auth.roles import NamespaceRight
from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession
from cargohold.db.sql import sql
from cargohold.domain.errors import Denied
from cargohold.domain.names import RepositoryName
from cargohold.services.audit import AuditEntry, AuditLog, Origin

NAMESPACE = sql("SELECT id, kind FROM namespace WHERE name = :name")
INSERT_ORG = sql("INSERT INTO namespace (name, kind, created_at) VALUES (:name, 'org', :now)")
INSERT_REPOSITORY = sql(
    """INSERT INTO repository (namespace_id, name, public, description, created_at)
       VALUES (:ns, :name, :public, '', :now)"""
)
PROTOTYPES = sql(
    """SELECT kind, grantee_id, role FROM default_permission WHERE org_id = :org
       AND (activating_user_id IS NULL OR activating_user_id = :user)"""
)
GRANT = sql(
    """INSERT INTO repository_permission (repository_id, kind, grantee_id, role)
       VALUES (:repo, :kind, :grantee, :role)
       ON CONFLICT (repository_id, kind, grantee_id) DO UPDATE SET role = :role"""
)
ROLE_ORDER = {"read": 1, "write": 2, "admin": 3}


class RepositoryCreator:
    def __init__(self, db: Database, audit: AuditLog, *, public_by_default: bool) -> None:
        self.db = db
        self.audit = audit
        self.public_by_default = public_by_default

    async def ensure(
        self, session: DbSession, principal: Principal, name: RepositoryName, origin: Origin
    ) -> int:
        """The id of `name`, created now (with its first content, in the caller's
        transaction) when it does not exist yet. The caller was authorized to push; the
        namespace right decides whether the creator also becomes the repository's admin."""
        existing = await queries.repository_id(session, name.value)
        if existing is not None:
            return existing
        ns = await session.one(NAMESPACE, name=name.namespace)
        if ns is None:
            right = NamespaceRight.ADMIN if principal.superuser else NamespaceRight.NONE
        else:
            right = await namespace_right(session, principal, ns[0], ns[1])
        return await self.create_in(session, principal, name, right, origin)

    async def create_in(
        self,
        session: DbSession,
        principal: Principal,
        name: RepositoryName,
        right: NamespaceRight,
        origin: Origin,
        public: bool | None = None,
    ) -> int:
        existing = await queries.repository_id(session, name.value)
        if existing is not None:
            return existing
        now = utcnow()
        ns = await session.one(NAMESPACE, name=name.namespace)
        if ns is None:
            if not principal.superuser:
                raise Denied("the namespace does not exist")
            await session.run(INSERT_ORG, name=name.namespace, now=now)
            ns = await session.one(NAMESPACE, name=name.namespace)
            assert ns is not None
        visibility = self.public_by_default if public is None else public
        await session.run(INSERT_REPOSITORY, ns=ns[0], name=name.value, public=visibility, now=now)
        repo_id = await queries.repository_id(session, name.value)
        assert repo_id is not None
        grants: dict[tuple[str, int], str] = {}
        if ns[1] == "org":
            user_id = principal.id if principal.kind is PrincipalKind.USER else -1
            for kind, grantee, role in await session.all(PROTOTYPES, org=ns[0], user=user_id):
                key = (str(kind), int(grantee))
                if ROLE_ORDER[role] > ROLE_ORDER.get(grants.get(key, ""), 0):
                    grants[key] = role
        if right is NamespaceRight.CREATE and principal.id is not None:
            grants[(principal.kind.value, principal.id)] = "admin"
        for (kind, grantee), role in grants.items():
            await session.run(GRANT, repo=repo_id, kind=kind, grantee=grantee, role=role)
        await self.audit.write(
            session,
            AuditEntry(
                "create_repo",
                principal,
                origin,
                repository=name.value,
                details={"public": visibility, "granted": len(grants)},
            ),
        )
        return int(repo_id)
