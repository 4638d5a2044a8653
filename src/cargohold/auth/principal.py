"""Who is making a request, as every layer sees it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class PrincipalKind(enum.StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    ROBOT = "robot"


class Method(enum.StrEnum):
    """How the principal proved who it is."""

    NONE = "none"
    PASSWORD = "password"
    APP_TOKEN = "app_token"
    CLI_KEY = "cli_key"
    ROBOT_TOKEN = "robot_token"
    OAUTH = "oauth"
    REGISTRY_TOKEN = "registry_token"  # a JWT from our token endpoint
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind = PrincipalKind.ANONYMOUS
    name: str | None = None  # username, or "<namespace>+<robot>"
    id: int | None = None  # user_account.id or robot.id
    namespace_id: int | None = None  # the user's own namespace, or the robot's
    superuser: bool = False
    method: Method = Method.NONE
    credential_id: int | None = None  # the app token, CLI key or OAuth token used
    # API scopes of a token (None: everything the principal may do; the API checks them).
    scopes: frozenset[str] | None = None
    # A registry token's grants: repository -> actions ("registry:catalog" under "").
    # None: not authenticated by a registry token, so look permissions up.
    grants: Mapping[str, frozenset[str]] | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.kind is PrincipalKind.ANONYMOUS

    @property
    def key(self) -> tuple[str, int | None, bool]:
        """What permission answers depend on: cache key."""
        return (self.kind.value, self.id, self.superuser)


ANONYMOUS = Principal()
