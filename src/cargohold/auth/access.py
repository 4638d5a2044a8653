"""The one authorization check every route goes through.

Until identity and roles land, the registry is open: every principal may do every
action. Routes must still call `authorize`, so that filling in this module is all
it takes to protect them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cargohold.domain.errors import Denied


class Action(enum.StrEnum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"
    CATALOG = "catalog"  # list every repository


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making the request. `None` username means anonymous."""

    username: str | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.username is None


ANONYMOUS = Principal()


def may(principal: Principal, action: Action, repository: str | None) -> bool:
    """May `principal` do `action` on `repository` (None: registry-wide actions)?"""
    return True


def authorize(principal: Principal, action: Action, repository: str | None) -> None:
    if not may(principal, action, repository):
        raise Denied(f"{action} on {repository or 'registry'} is not allowed")
