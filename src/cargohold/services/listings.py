"""Paginated listings: tags of a repository, the catalog, and referrers of a manifest.

Pages are keyset-paginated (`name > last ORDER BY name LIMIT n+1`), so each page costs
O(page) whatever the total, and the extra row tells whether there is a next page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cargohold.auth.principal import Principal, PrincipalKind
from cargohold.db import queries
from cargohold.db.session import Database
from cargohold.domain.digests import Digest
from cargohold.domain.errors import NameUnknown
from cargohold.domain.names import RepositoryName
from cargohold.services.cache import MetadataCache


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    has_more: bool

    @property
    def last(self) -> str | None:
        return self.items[-1] if self.items else None


def _page(rows: list[str], n: int) -> Page:
    return Page(rows[:n], len(rows) > n)


class ListingService:
    def __init__(self, db: Database, cache: MetadataCache) -> None:
        self.db = db
        self.cache = cache

    async def tags(self, repository: RepositoryName, n: int, last: str | None) -> Page:
        async with self.db.read() as session:
            repo_id = self.cache.repository_id(repository.value)
            if repo_id is None:
                repo_id = await queries.repository_id(session, repository.value)
                if repo_id is None:
                    raise NameUnknown(detail={"name": repository.value})
                self.cache.remember_repository(repository.value, repo_id)
            if n == 0:
                return Page([], False)
            return _page(await queries.tags_page(session, repo_id, last or "", n + 1), n)

    async def repositories(self, n: int, last: str | None, viewer: Principal) -> Page:
        """Repository names `viewer` may see (all of them for a superuser)."""
        if n == 0:
            return Page([], False)
        async with self.db.read() as session:
            if viewer.superuser:
                rows = await queries.repositories_page(session, last or "", n + 1)
            else:
                rows = await queries.visible_repositories_page(
                    session,
                    last or "",
                    n + 1,
                    kind=viewer.kind.value,
                    member=viewer.id if viewer.id is not None else -1,
                    own_namespace=(
                        viewer.namespace_id
                        if viewer.kind is PrincipalKind.USER and viewer.namespace_id is not None
                        else -1
                    ),
                )
            return _page(rows, n)

    async def referrers(
        self,
        repository: RepositoryName,
        subject: Digest,
        artifact_type: str | None,
        n: int,
        last: str | None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Descriptors of the manifests whose subject is `subject`, ordered by digest."""
        if artifact_type is not None and not artifact_type.isprintable():
            # No stored type has control characters (domain.manifests refuses them), and
            # PostgreSQL cannot even compare text holding a NUL.
            return [], False
        async with self.db.read() as session:
            rows = await queries.referrers_page(
                session, repository.value, str(subject), artifact_type or "", last or "", n + 1
            )
        out = []
        for digest, media_type, size, art_type, payload in rows[:n]:
            desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
            if art_type:
                desc["artifactType"] = art_type
            annotations = json.loads(payload).get("annotations")
            if annotations:
                desc["annotations"] = annotations
            out.append(desc)
        return out, len(rows) > n
