"""Who calls the API, and the one way routes state what they need.

Every route declares exactly one policy dependency from this module (`Anyone`,
`SignedIn`, `Superuser`, `UserAccess`, `OrgAccess`, `RepoAccess`). The policy
authenticates the caller (session cookie + CSRF header for changes, or a bearer app
token or OAuth token), checks the token's API scopes, then the caller's rights on the
object named in the path, and hands the handler a `Caller`. tests/api_v1 checks that
every route has one (and the authorization matrix exercises them all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from cargohold.auth.credentials import AuthenticationFailed, Context
from cargohold.auth.principal import ANONYMOUS, Method, Principal, PrincipalKind
from cargohold.auth.roles import NamespaceRight, Role
from cargohold.db.sql import sql
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import RepositoryName, parse_namespace, parse_repository
from cargohold.services.audit import AuditEntry, Origin
from cargohold.services.runtime import Runtime
from cargohold.services.sessions import COOKIE, CSRF_HEADER
from cargohold.web.api.errors import forbidden, not_found, unauthorized
from cargohold.web.context import origin_of as origin
from cargohold.web.context import runtime_of as runtime

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A broader scope includes the narrower ones.
IMPLIED = {
    "repo:admin": {"repo:write", "repo:read"},
    "repo:write": {"repo:read"},
    "user:admin": {"user:read"},
}

NAMESPACE = sql("SELECT id, kind FROM namespace WHERE name = :name")


@dataclass(frozen=True)
class Caller:
    """What a handler gets: the principal, the runtime, and where the request came from."""

    principal: Principal
    runtime: Runtime
    origin: Origin
    request: Request

    def audit(self, kind: str, **fields: Any) -> AuditEntry:
        """An audit entry for this caller (write it in the change's transaction)."""
        return AuditEntry(kind, self.principal, self.origin, **fields)

    @property
    def user_id(self) -> int:
        if self.principal.kind is not PrincipalKind.USER or self.principal.id is None:
            raise forbidden("only a user can do this")
        return self.principal.id


async def authenticate(request: Request) -> Principal:
    """The caller, or ANONYMOUS. Credentials that are present and wrong are a 401."""
    rt = runtime(request)
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("use a bearer token (an app token or an OAuth token)")
        try:
            return await rt.authenticator.bearer(value.strip(), Context(origin(request), False))
        except AuthenticationFailed as exc:
            raise unauthorized("invalid or expired token") from exc
    cookie = request.cookies.get(COOKIE)
    if cookie:
        session = await rt.sessions.find(cookie)
        if session is None:
            return ANONYMOUS
        if request.method not in SAFE_METHODS:
            import hmac

            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, session.csrf_token):
                raise forbidden("missing or wrong CSRF token")
        principal = await rt.authenticator.user_by_id(session.user_id)
        if principal is None:
            return ANONYMOUS
        from dataclasses import replace

        return replace(principal, method=Method.SESSION)
    return ANONYMOUS


def has_scope(principal: Principal, scope: str | None) -> bool:
    if scope is None or principal.scopes is None:
        return True
    granted = set(principal.scopes)
    for s in principal.scopes:
        granted |= IMPLIED.get(s, set())
    return scope in granted


def _caller(request: Request, principal: Principal) -> Caller:
    return Caller(principal, runtime(request), origin(request), request)


# -- the policies ----------------------------------------------------------------------


class Anyone:
    """Anonymous callers too (public information)."""

    async def __call__(self, request: Request) -> Caller:
        return _caller(request, await authenticate(request))


class SignedIn:
    """Any signed-in principal whose token carries `scope`."""

    def __init__(self, scope: str | None = None, *, users_only: bool = True) -> None:
        self.scope = scope
        self.users_only = users_only

    async def __call__(self, request: Request) -> Caller:
        principal = await authenticate(request)
        if principal.is_anonymous:
            raise unauthorized()
        if self.users_only and principal.kind is not PrincipalKind.USER:
            raise forbidden("only users can do this")
        if not has_scope(principal, self.scope):
            raise forbidden(f"the token lacks the {self.scope} scope")
        return _caller(request, principal)


class Superuser(SignedIn):
    def __init__(self) -> None:
        super().__init__("super:user")

    async def __call__(self, request: Request) -> Caller:
        caller = await super().__call__(request)
        if not caller.principal.superuser:
            raise forbidden("superusers only")
        return caller


class OrgAccess(SignedIn):
    """The organization (or user namespace) named by path parameter `param`:
    `admin=True` needs the right to administer it; otherwise membership of a team
    (or administration) suffices. A namespace the caller may not see is a 404 for
    anyone but its admins, so names of private organizations do not leak."""

    def __init__(self, param: str = "orgname", *, admin: bool = True, scope: str = "org:admin"):
        super().__init__(scope if admin else None)
        self.param = param
        self.admin = admin

    async def __call__(self, request: Request) -> Caller:
        caller = await super().__call__(request)
        name = request.path_params[self.param]
        try:
            parse_namespace(name)
        except NameInvalid as exc:
            raise not_found("no such organization") from exc
        right, member = await namespace_standing(caller, name)
        if right is NamespaceRight.ADMIN:
            return caller
        if not self.admin and member:
            return caller
        if member:
            raise forbidden("organization administrators only")
        raise not_found("no such organization")


async def namespace_standing(caller: Caller, name: str) -> tuple[NamespaceRight, bool]:
    """(the caller's right in namespace `name`, whether they belong to it). 404 if missing."""
    from cargohold.auth.permissions import TEAM_ROLES, namespace_right

    rt = caller.runtime
    async with rt.db.read() as session:
        row = await session.one(NAMESPACE, name=name)
        if row is None or row[1] != "org":  # a user's namespace is not an organization
            raise not_found("no such organization")
        right = await namespace_right(session, caller.principal, row[0], row[1])
        member = right is not NamespaceRight.NONE
        if not member and caller.principal.id is not None and row[1] == "org":
            rows = await session.all(
                TEAM_ROLES, org=row[0], kind=caller.principal.kind.value, member=caller.principal.id
            )
            member = bool(rows)
    return right, member


class RepoAccess:
    """The repository named by path parameter `param` (namespace/name), with at least
    `role`. Missing and forbidden answer alike (404) unless the caller can read it."""

    def __init__(self, role: Role, param: str = "repository") -> None:
        self.role = role
        self.param = param
        self.scope = {Role.READ: "repo:read", Role.WRITE: "repo:write", Role.ADMIN: "repo:admin"}[
            role
        ]

    async def __call__(self, request: Request) -> Caller:
        principal = await authenticate(request)
        if not has_scope(principal, self.scope):
            raise forbidden(f"the token lacks the {self.scope} scope")
        try:
            name = parse_repository(request.path_params[self.param])
        except NameInvalid as exc:
            raise not_found("no such repository") from exc
        access = await runtime(request).permissions.repository(principal, name.value)
        if access.role is not None and access.role >= self.role and access.exists:
            return _caller(request, principal)
        if access.role is not None and access.exists:
            raise forbidden(f"{self.role.label} access to {name} is needed")
        if principal.is_anonymous:
            raise unauthorized()
        raise not_found("no such repository")


def repository_name(request: Request, param: str = "repository") -> RepositoryName:
    return parse_repository(request.path_params[param])


# Handy annotated types for handlers.
AnyoneDep = Annotated[Caller, Depends(Anyone())]
