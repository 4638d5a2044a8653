"""A manifest as the API shows it (layers, sizes, config, platforms, labels, referrers,
live tags), and the labels added or removed through the API.

Labels from the content (source "manifest") describe the bytes and cannot be deleted;
labels added through the API (source "api") can. Adding `quay.expires-after` through the
API sets the expiry of the manifest's live tags that are not immutable, as a push with
that label does for the tag it points."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cargohold.auth.principal import Principal
from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.domain import mediatypes as mt
from cargohold.domain.errors import RegistryError
from cargohold.domain.manifests import parse_manifest
from cargohold.services import immutability, labels
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.problems import Conflict, Invalid, NotFound
from cargohold.services.tags import Repo, check_digest, find_repository

MAX_API_LABELS = 256  # per manifest
MAX_REFERRERS = 100  # shown in the details (the referrers API pages through all)
MAX_TAGS = 1000  # live tags shown in the details
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")

MANIFEST = sql(
    """SELECT id, digest, media_type, artifact_type, subject_digest, size, payload, created_at
       FROM manifest WHERE repository_id = :repository_id AND digest = :digest"""
)
LABELS = sql(
    "SELECT id, key, value, source FROM manifest_label WHERE manifest_id = :id ORDER BY id"
)
LABEL = sql(
    "SELECT id, key, value, source FROM manifest_label WHERE manifest_id = :manifest_id "
    "AND id = :id"
)
API_LABEL_COUNT = sql(
    "SELECT COUNT(*) FROM manifest_label WHERE manifest_id = :id AND source = 'api'"
)
INSERT_LABEL = sql(
    """INSERT INTO manifest_label (manifest_id, key, value, source, created_at)
       VALUES (:manifest_id, :key, :value, 'api', :now) RETURNING id"""
)
DELETE_LABEL = sql("DELETE FROM manifest_label WHERE id = :id")
LIVE_TAGS = sql(
    f"""SELECT t.id, t.name, t.expires_at FROM tag t WHERE t.manifest_id = :id
        AND {queries.LIVE} ORDER BY t.name LIMIT :limit"""
)
# Every live tag of the manifest, a chunk at a time (by row id) for a label's expiry.
LIVE_TAGS_AFTER = sql(
    f"""SELECT t.id, t.name, t.expires_at FROM tag t WHERE t.manifest_id = :id
        AND {queries.LIVE} AND t.id > :after ORDER BY t.id LIMIT :limit"""
)
SET_EXPIRY = sql(
    "UPDATE tag SET expires_at = :expires_at WHERE id IN (SELECT value FROM json_each(:ids))",
    postgres="UPDATE tag SET expires_at = :expires_at WHERE id = ANY(:ids)",
)
# The referrers shown in the details: their descriptors only, not their payloads.
REFERRERS = sql(
    """SELECT digest, media_type, size, artifact_type FROM manifest
       WHERE repository_id = :repository_id AND subject_digest = :subject
       ORDER BY digest LIMIT :limit"""
)
BLOB_SIZES = sql(
    "SELECT COALESCE(SUM(b.size), 0) FROM manifest_blob mb JOIN blob b ON b.id = mb.blob_id "
    "WHERE mb.manifest_id = :id"
)


@dataclass(frozen=True, slots=True)
class LabelRow:
    id: int
    key: str
    value: str
    source: str

    def json(self) -> dict[str, Any]:
        """Quay's label fields (values are plain text here: no media type is stored)."""
        return {
            "id": str(self.id),
            "key": self.key,
            "value": self.value,
            "source_type": self.source,
            "media_type": "text/plain",
        }


def _label(row: tuple[Any, ...]) -> LabelRow:
    return LabelRow(int(row[0]), str(row[1]), str(row[2]), str(row[3]))


def check_label(key: str, value: str) -> None:
    if not LABEL_KEY.fullmatch(key):
        raise Invalid("a label key matches [A-Za-z0-9][A-Za-z0-9._/-]* (up to 255 characters)")
    if not labels.usable(key, value):
        raise Invalid(f"a label value has at most {labels.MAX_VALUE} characters and no NUL")


def _descriptor(d: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": str(d.digest), "size": d.size, "media_type": d.media_type}
    if d.artifact_type:
        out["artifact_type"] = d.artifact_type
    if d.urls:
        out["urls"] = list(d.urls)
    return out


def _platforms(payload: bytes) -> list[dict[str, Any] | None]:
    """The `platform` object of each child of an index, in order (None where absent)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return []
    children = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(children, list):
        return []
    out: list[dict[str, Any] | None] = []
    for child in children:
        platform = child.get("platform") if isinstance(child, dict) else None
        out.append(platform if isinstance(platform, dict) else None)
    return out


class ManifestAdmin:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        time_machine_seconds: int,
        content_changed: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.time_machine_seconds = time_machine_seconds
        self.content_changed = content_changed

    async def _manifest(
        self, session: DbSession, repository: str, digest: str
    ) -> tuple[Repo, tuple[Any, ...]]:
        repo = await find_repository(session, repository, self.time_machine_seconds)
        row = await session.one(MANIFEST, repository_id=repo.id, digest=check_digest(digest))
        if row is None:
            raise NotFound(f"no manifest {digest} in {repository}")
        return repo, row

    async def details(self, repository: str, digest: str) -> dict[str, Any]:
        async with self.db.read() as session:
            repo, row = await self._manifest(session, repository, digest)
            manifest_id = int(row[0])
            found = [_label(r) for r in await session.all(LABELS, id=manifest_id)]
            referrers = await session.all(
                REFERRERS, repository_id=repo.id, subject=str(row[1]), limit=MAX_REFERRERS + 1
            )
            tags = await session.all(LIVE_TAGS, id=manifest_id, now=utcnow(), limit=MAX_TAGS)
            blob_bytes = int(await session.value(BLOB_SIZES, id=manifest_id) or 0)
        media_type, payload = str(row[2]), bytes(row[6])
        body: dict[str, Any] = {
            "digest": str(row[1]),
            "media_type": media_type,
            "is_manifest_list": media_type in mt.INDEXES,
            "artifact_type": row[3],
            "subject": row[4],
            "manifest_size": int(row[5]),
            "created": _iso(as_datetime(row[7])),
            "manifest_data": payload.decode("utf-8", errors="replace"),
            "labels": [label.json() for label in found],
            "referrers": [
                {"digest": r[0], "media_type": r[1], "size": r[2], "artifact_type": r[3]}
                for r in referrers[:MAX_REFERRERS]
            ],
            "referrers_truncated": len(referrers) > MAX_REFERRERS,
            "tags": [{"name": t[1], "expiration": _iso(as_datetime(t[2]))} for t in tags],
        }
        try:
            parsed = parse_manifest(payload, media_type)
        except RegistryError:
            parsed = None  # stored bytes were checked at push; be safe all the same
        if parsed is not None and parsed.is_index:
            platforms = _platforms(payload)
            body["manifests"] = [
                {**_descriptor(c), "platform": platforms[i] if i < len(platforms) else None}
                for i, c in enumerate(parsed.children)
            ]
        elif parsed is not None:
            layers = [_descriptor(layer) for layer in parsed.layers]
            for index, layer in enumerate(layers):
                layer["index"] = index
            body["config"] = _descriptor(parsed.config) if parsed.config else None
            body["config_media_type"] = parsed.config.media_type if parsed.config else None
            body["layers"] = layers
            body["size"] = blob_bytes  # config and layers stored here (foreign layers not)
        body["annotations"] = dict(parsed.annotations or {}) if parsed else {}
        return body

    # -- labels --------------------------------------------------------------------------

    async def labels(
        self, repository: str, digest: str, prefix: str | None = None
    ) -> list[LabelRow]:
        async with self.db.read() as session:
            _, row = await self._manifest(session, repository, digest)
            found = [_label(r) for r in await session.all(LABELS, id=row[0])]
        return [label for label in found if prefix is None or label.key.startswith(prefix)]

    async def label(self, repository: str, digest: str, label_id: int) -> LabelRow:
        async with self.db.read() as session:
            _, row = await self._manifest(session, repository, digest)
            found = await session.one(LABEL, manifest_id=row[0], id=label_id)
        if found is None:
            raise NotFound("no such label on this manifest")
        return _label(found)

    async def add_label(
        self,
        repository: str,
        digest: str,
        key: str,
        value: str,
        *,
        principal: Principal,
        origin: Origin,
    ) -> LabelRow:
        check_label(key, value)
        duration = labels.expires_after([(key, value)]) if key == labels.EXPIRES_AFTER else None
        if key == labels.EXPIRES_AFTER and duration is None:
            raise Invalid(f"{labels.EXPIRES_AFTER} takes a duration such as 12h, 2w or 30m")

        async def work(session: DbSession) -> tuple[LabelRow, bool]:
            repo, row = await self._manifest(session, repository, digest)
            manifest_id = int(row[0])
            if int(await session.value(API_LABEL_COUNT, id=manifest_id)) >= MAX_API_LABELS:
                raise Invalid(f"a manifest has at most {MAX_API_LABELS} labels added by the API")
            label_id = int(
                await session.value(
                    INSERT_LABEL, manifest_id=manifest_id, key=key, value=value, now=utcnow()
                )
            )
            details = {"digest": str(row[1]), "id": label_id, "key": key, "value": value}
            await self._write(session, "manifest_label_add", principal, origin, repo, details)
            expired = False
            if duration is not None:
                expired = await self._expire_tags(
                    session, repo, manifest_id, str(row[1]), utcnow() + duration, principal, origin
                )
            return LabelRow(label_id, key, value, "api"), expired

        label, changed = await run_write(self.db, work)
        if changed:
            self.content_changed()
        return label

    async def _expire_tags(
        self,
        session: DbSession,
        repo: Repo,
        manifest_id: int,
        digest: str,
        expires_at: datetime,
        principal: Principal,
        origin: Origin,
    ) -> bool:
        """Set the expiry of all the manifest's live tags (immutable ones excepted), a
        chunk of them per statement, each with its entry."""
        rules = await immutability.rules(session, repo.id)
        changed = False
        after = 0
        now = utcnow()
        while True:
            rows = await session.all(
                LIVE_TAGS_AFTER, id=manifest_id, now=now, after=after, limit=immutability.CHUNK
            )
            if not rows:
                return changed
            after = int(rows[-1][0])
            chosen = [r for r in rows if immutability.matching(rules, str(r[1])) is None]
            if not chosen:
                continue
            ids = immutability.id_list(session, [int(r[0]) for r in chosen])
            await session.run(SET_EXPIRY, expires_at=expires_at, ids=ids)
            for _, name, old in chosen:
                details = {
                    "tag": name,
                    "digest": digest,
                    "expiration": expires_at.isoformat(),
                    "old_expiration": _iso(as_datetime(old)),
                    "label": labels.EXPIRES_AFTER,
                }
                await self._write(
                    session, "change_tag_expiration", principal, origin, repo, details
                )
            changed = True

    async def delete_label(
        self,
        repository: str,
        digest: str,
        label_id: int,
        *,
        principal: Principal,
        origin: Origin,
    ) -> None:
        async def work(session: DbSession) -> None:
            repo, row = await self._manifest(session, repository, digest)
            found = await session.one(LABEL, manifest_id=row[0], id=label_id)
            if found is None:
                raise NotFound("no such label on this manifest")
            label = _label(found)
            if label.source != "api":
                raise Conflict("labels of the manifest's content cannot be deleted")
            await session.run(DELETE_LABEL, id=label_id)
            details = {"digest": str(row[1]), "id": label_id, "key": label.key}
            await self._write(session, "manifest_label_delete", principal, origin, repo, details)

        await run_write(self.db, work)

    async def _write(
        self,
        session: DbSession,
        kind: str,
        principal: Principal,
        origin: Origin,
        repo: Repo,
        details: dict[str, Any],
    ) -> None:
        entry = AuditEntry(kind, principal, origin, repository=repo.name, details=details)
        await self.audit.write(session, entry)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()
