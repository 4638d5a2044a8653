"""Roles and what they allow: the rules, with no I/O."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """Repository roles, ordered: each includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        return cls[value.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


class TeamRole(enum.StrEnum):
    MEMBER = "member"  # only what repository permissions grant
    CREATOR = "creator"  # may also create repositories in the organization
    ADMIN = "admin"  # administers the organization and every repository in it


class NamespaceRight(enum.IntEnum):
    NONE = 0
    CREATE = 1  # create repositories
    ADMIN = 2  # everything in the namespace


ROLE_NAMES = ("read", "write", "admin")
TEAM_ROLE_NAMES = tuple(r.value for r in TeamRole)

# API scopes (OAuth tokens and app tokens), as Quay names them.
API_SCOPES = (
    "repo:read",
    "repo:write",
    "repo:admin",
    "repo:create",
    "user:read",
    "user:admin",
    "org:admin",
    "super:user",
)
