"""Wiring for tests that drive services directly, without a server."""

from __future__ import annotations

from cargohold.auth.principal import Method, Principal, PrincipalKind
from cargohold.db.session import Database
from cargohold.services.audit import AuditLog
from cargohold.services.repositories import RepositoryCreator

# A superuser may create repositories (and their namespaces) on first push.
SUPERUSER = Principal(
    kind=PrincipalKind.USER, name="admin", id=1, superuser=True, method=Method.PASSWORD
)


def creator(db: Database) -> RepositoryCreator:
    return RepositoryCreator(db, AuditLog(db), public_by_default=False)
