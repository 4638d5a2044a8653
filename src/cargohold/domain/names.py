"""Repository and tag grammar: the only name validator in cargohold.

Names follow the OCI distribution-spec grammar. cargohold also requires at
least two path components, because the first one is the namespace (the unit of
ownership and access control, as in Quay and Harbor)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cargohold.domain.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

MAX_REPOSITORY_LENGTH = 255
MAX_COMPONENTS = 16


@dataclass(frozen=True, slots=True)
class RepositoryName:
    """A validated repository name such as ``team/app/web``."""

    value: str

    @property
    def namespace(self) -> str:
        return self.value.split("/", 1)[0]

    def __str__(self) -> str:
        return self.value


def parse_repository(name: str) -> RepositoryName:
    """Validate `name` against the grammar; raise NameInvalid with the reason."""
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise NameInvalid(f"repository name longer than {MAX_REPOSITORY_LENGTH} characters")
    if not _REPOSITORY_RE.fullmatch(name):
        raise NameInvalid("repository name must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*(/...)*")
    components = name.count("/") + 1
    if components < 2:
        raise NameInvalid("repository name must be <namespace>/<name>")
    if components > MAX_COMPONENTS:
        raise NameInvalid(f"repository name has more than {MAX_COMPONENTS} components")
    return RepositoryName(name)


# The words of the API's `/api/v1/repository/{repository:path}/<word>` routes (web/api):
# a repository with one of them as a component after the namespace would make those URLs
# ambiguous (`DELETE .../repository/org/a/tag/v1`: tag v1 of org/a, or repository
# org/a/tag/v1?), so no push or API create makes one. Reads of such names simply find no
# repository. A test walks the API's routes so that a new word cannot be forgotten here.
RESERVED_COMPONENTS = frozenset(
    {
        "changevisibility",
        "exportlogs",
        "immutability",
        "logs",
        "manifest",
        "permissions",
        "tag",
    }
)


def check_creatable(name: RepositoryName) -> RepositoryName:
    """`name`, if a push or create may make it; NameInvalid naming the reserved word."""
    for component in name.value.split("/")[1:]:
        if component in RESERVED_COMPONENTS:
            raise NameInvalid(
                f"repository name component {component!r} is reserved (after the namespace, "
                f"none of {', '.join(sorted(RESERVED_COMPONENTS))} may be used)"
            )
    return name


def is_tag(reference: str) -> bool:
    return _TAG_RE.fullmatch(reference) is not None


def parse_tag(tag: str) -> str:
    if not is_tag(tag):
        raise TagInvalid("tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
    return tag


# Users and organizations share one space of namespace names: a repository name's first
# component. Robots are `<namespace>+<shortname>`; teams are named within an organization.
_NAMESPACE_RE = re.compile(_COMPONENT)
_SHORTNAME_RE = re.compile(r"[a-z][a-z0-9_]{0,254}")
MAX_NAMESPACE_LENGTH = 255
MIN_NAMESPACE_LENGTH = 2


def parse_namespace(name: str) -> str:
    """Validate a user or organization name; raise NameInvalid with the reason."""
    if not MIN_NAMESPACE_LENGTH <= len(name) <= MAX_NAMESPACE_LENGTH:
        raise NameInvalid(
            f"names are {MIN_NAMESPACE_LENGTH} to {MAX_NAMESPACE_LENGTH} characters long"
        )
    if not _NAMESPACE_RE.fullmatch(name):
        raise NameInvalid("names must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*")
    return name


def parse_shortname(name: str, what: str = "name") -> str:
    """Validate a robot's or team's short name."""
    if not _SHORTNAME_RE.fullmatch(name):
        raise NameInvalid(f"{what} must match [a-z][a-z0-9_]{{0,254}}")
    return name
