"""Paginated listings: tags of a repository, the catalog, and referrers of a manifest.

Pages are keyset-paginated (`name > last ORDER BY name LIMIT n+1`), so each page costs
O(page) whatever the total, and the extra row tells whether there is a next page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from cargohold.db.models import Manifest, Repository, Tag
from cargohold.db.queries import repository_id
from cargohold.db.session import Database
from cargohold.domain.digests import Digest
from cargohold.domain.errors import NameUnknown
from cargohold.domain.names import RepositoryName


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
    def __init__(self, db: Database) -> None:
        self.db = db

    async def tags(self, repository: RepositoryName, n: int, last: str | None) -> Page:
        async with self.db.read() as session:
            repo_id = await repository_id(session, repository.value)
            if repo_id is None:
                raise NameUnknown(detail={"name": repository.value})
            if n == 0:
                return Page([], False)
            query = select(Tag.name).where(Tag.repository_id == repo_id, Tag.ended_at.is_(None))
            if last:
                query = query.where(Tag.name > last)
            rows = (await session.execute(query.order_by(Tag.name).limit(n + 1))).scalars()
            return _page(list(rows), n)

    async def repositories(self, n: int, last: str | None) -> Page:
        if n == 0:
            return Page([], False)
        query = select(Repository.name)
        if last:
            query = query.where(Repository.name > last)
        async with self.db.read() as session:
            rows = (await session.execute(query.order_by(Repository.name).limit(n + 1))).scalars()
            return _page(list(rows), n)

    async def referrers(
        self,
        repository: RepositoryName,
        subject: Digest,
        artifact_type: str | None,
        n: int,
        last: str | None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Descriptors of the manifests whose subject is `subject`, ordered by digest."""
        query = (
            select(
                Manifest.digest,
                Manifest.media_type,
                Manifest.size,
                Manifest.artifact_type,
                Manifest.payload,
            )
            .join(Repository, Repository.id == Manifest.repository_id)
            .where(Repository.name == repository.value, Manifest.subject_digest == str(subject))
        )
        if artifact_type is not None:
            query = query.where(Manifest.artifact_type == artifact_type)
        if last:
            query = query.where(Manifest.digest > last)
        async with self.db.read() as session:
            rows = (await session.execute(query.order_by(Manifest.digest).limit(n + 1))).all()
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
