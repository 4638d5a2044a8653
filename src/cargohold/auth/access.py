"""The one authorization check every registry route goes through.

`Action` is what a route needs; `AccessService.check` decides from the principal's
role on the repository (or, for a registry token, from the grants it carries) and
raises Unauthorized (no or insufficient credentials: the client should authenticate)
or Denied (authenticated, and not allowed)."""

from __future__ import annotations

import enum
from dataclasses import replace

from cargohold.auth.permissions import Permissions, RepositoryAccess
from cargohold.auth.principal import ANONYMOUS, Method, Principal, PrincipalKind
from cargohold.auth.roles import NamespaceRight, Role
from cargohold.domain.errors import Denied, Unauthorized
from cargohold.domain.names import RepositoryName
from cargohold.services.audit import Origin

__all__ = ["ANONYMOUS", "Action", "Principal", "PrincipalKind", "needed_role", "token_actions"]


class Action(enum.StrEnum):
    LOGIN = "login"  # any authenticated principal (GET /v2/: how clients test a login)
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"
    CATALOG = "catalog"  # list repositories (filtered by what the caller can see)


def needed_role(action: Action) -> Role:
    return Role.READ if action is Action.PULL else Role.WRITE


def token_actions(role: Role | None, right: NamespaceRight, exists: bool) -> set[str]:
    """The registry token actions (pull, push, delete, *) a role allows on a repository.
    Pushing to a repository that does not exist yet needs the right to create it."""
    actions: set[str] = set()
    if role is not None and role >= Role.READ:
        actions.add("pull")
    if (role is not None and role >= Role.WRITE) or (not exists and right >= NamespaceRight.CREATE):
        actions.update(("push", "delete"))
    if role is Role.ADMIN:
        actions.add("*")
    return actions


def limited_by_scopes(principal: Principal, access: RepositoryAccess) -> RepositoryAccess:
    """An OAuth token acts for its user on the registry only within its scopes
    (repo:read to pull, repo:write to push, repo:create to create). App tokens and the
    CLI password act with the user's full registry rights, as in Quay."""
    if principal.method is not Method.OAUTH or principal.scopes is None:
        return access
    scopes = principal.scopes
    cap: Role | None = None
    if "repo:admin" in scopes:
        cap = Role.ADMIN
    elif "repo:write" in scopes:
        cap = Role.WRITE
    elif "repo:read" in scopes:
        cap = Role.READ
    role = None if access.role is None or cap is None else min(access.role, cap)
    right = access.right if "repo:create" in scopes else NamespaceRight.NONE
    if not access.exists and right is NamespaceRight.NONE:
        role = None  # pushing into a repository that does not exist creates it
    return replace(access, role=role, right=right)


class AccessService:
    """Decides registry access."""

    def __init__(self, permissions: Permissions) -> None:
        self.permissions = permissions

    async def check(
        self,
        principal: Principal,
        action: Action,
        repository: RepositoryName | None,
        origin: Origin = Origin(),
    ) -> None:
        if action is Action.LOGIN:
            if principal.is_anonymous:
                raise Unauthorized("authentication required")
            return
        if action is Action.CATALOG:
            # Anonymous callers are challenged (clients then fetch a token, which may
            # list the public repositories), as Distribution and Harbor do.
            if principal.is_anonymous and principal.grants is None:
                raise Unauthorized("authentication required")
            # A token must grant `*` on registry:catalog (an entry without actions, as
            # for `registry:catalog:pull`, grants nothing).
            if principal.grants is not None and "*" not in principal.grants.get("", ()):
                raise Unauthorized("the token does not grant registry:catalog:*", detail=None)
            return
        assert repository is not None
        name = repository.value
        if principal.grants is not None:
            granted = principal.grants.get(name, frozenset())
            if action.value not in granted and "*" not in granted:
                raise Unauthorized("the token does not grant this access")
            return
        access = limited_by_scopes(principal, await self.permissions.repository(principal, name))
        role = needed_role(action)
        if access.role is not None and access.role >= role:
            return
        if not access.exists and access.right >= NamespaceRight.CREATE:
            # Whoever may create the repository may push into it (its first content
            # creates it: services/repositories.py) and look for what is not there yet.
            return
        if principal.is_anonymous:
            raise Unauthorized("authentication required")
        raise Denied(f"{action.value} on {name} is not allowed")

    async def may(self, principal: Principal, action: Action, repository: str) -> bool:
        """A yes/no answer for an existing repository, with no side effects."""
        if principal.grants is not None:
            granted = principal.grants.get(repository, frozenset())
            return action.value in granted or "*" in granted
        access = limited_by_scopes(
            principal, await self.permissions.repository(principal, repository)
        )
        return access.role is not None and access.role >= needed_role(action)

    async def token_access(
        self, principal: Principal, scope_type: str, name: str, requested: frozenset[str]
    ) -> set[str]:
        """The actions of one requested scope that `principal` gets in a registry token."""
        if scope_type == "registry":
            return set(requested & {"*"}) if name == "catalog" else set()
        access = limited_by_scopes(principal, await self.permissions.repository(principal, name))
        allowed = token_actions(access.role, access.right, access.exists)
        if "*" in allowed:
            allowed |= {"pull", "push", "delete"}
        if not access.exists and "push" in allowed:
            allowed.add("pull")  # the pusher may check for blobs it is about to push
        return allowed & requested
