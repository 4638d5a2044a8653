"""Wiring for the garbage-collection tests: a Runtime on a real database (SQLite or
PostgreSQL) and filesystem storage, pushes through the services, and time moved forward
for the collector only (Collector.clock)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cargohold.app import build_runtime, make_collector
from cargohold.db.base import utcnow
from cargohold.db.migrate import upgrade
from cargohold.db.sql import sql
from cargohold.domain.digests import parse_digest
from cargohold.domain.names import RepositoryName, parse_repository
from cargohold.services.gc import Collector
from cargohold.services.manifests import Reference
from cargohold.services.runtime import Runtime
from cargohold.settings import Settings
from cargohold.storage import layout
from tests.support.services import SUPERUSER

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def make_image(*, layers: list[bytes] | None = None, subject: bytes | None = None) -> Image:
    config = json.dumps({"os": "linux", "nonce": uuid.uuid4().hex}).encode()
    layers = layers if layers is not None else [os.urandom(300)]
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    if subject is not None:
        doc["subject"] = descriptor(OCI_MANIFEST, subject)
    return Image(config, layers, json.dumps(doc).encode())


def make_index(children: list[Image]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, c.manifest) for c in children],
        }
    ).encode()


def settings_for(data_dir: Path, url: str, **gc: Any) -> Settings:
    return Settings(
        data_dir=str(data_dir),
        database={"url": url},  # type: ignore[arg-type]
        gc={"grace_seconds": 3600, **gc},  # type: ignore[arg-type]
    )


class Registry:
    """A Runtime plus the collector, driven step by step."""

    def __init__(self, data_dir: Path, url: str, **gc: Any) -> None:
        upgrade(url)
        self.settings = settings_for(data_dir, url, **gc)
        self.rt: Runtime = build_runtime(self.settings)
        self.gc: Collector = make_collector(self.rt)
        self.root = Path(self.settings.storage.filesystem.root)

    async def close(self) -> None:
        await self.rt.close()

    def later(self, delta: timedelta) -> None:
        """The collector judges grace and windows as if `delta` had passed."""
        self.gc.clock = lambda: utcnow() + delta

    # -- pushing -------------------------------------------------------------------------

    async def push_blob(self, repo: str, data: bytes) -> str:
        name = parse_repository(repo)
        upload = await self.rt.uploads.start(name, principal=SUPERUSER)
        digest = sha256(data)
        await self.rt.uploads.finish(
            name, upload.id, parse_digest(digest), _body(data), content_length=len(data)
        )
        return digest

    async def push_manifest(
        self, repo: str, payload: bytes, tag: str | None = None, media_type: str = OCI_MANIFEST
    ) -> str:
        reference = Reference(tag=tag) if tag else Reference(digest=parse_digest(sha256(payload)))
        record = await self.rt.manifests.put(
            parse_repository(repo), reference, payload, media_type, principal=SUPERUSER
        )
        return record.digest

    async def push_image(self, repo: str, image: Image, tag: str | None = None) -> str:
        for blob in image.blobs:
            await self.push_blob(repo, blob)
        return await self.push_manifest(repo, image.manifest, tag)

    async def untag(self, repo: str, tag: str) -> None:
        await self.rt.manifests.delete(parse_repository(repo), Reference(tag=tag))

    # -- looking -------------------------------------------------------------------------

    async def value(self, query: str, **params: Any) -> Any:
        async with self.rt.db.read() as session:
            return await session.value(sql(query), **params)

    async def run(self, query: str, **params: Any) -> int:
        async with self.rt.db.write() as session:
            return await session.run(sql(query), **params)

    async def has_manifest(self, repo: str, digest: str) -> bool:
        found = await self.value(
            """SELECT COUNT(*) FROM manifest m JOIN repository r ON r.id = m.repository_id
               WHERE r.name = :repo AND m.digest = :digest""",
            repo=repo,
            digest=digest,
        )
        return bool(found)

    async def has_blob_row(self, data: bytes) -> bool:
        return bool(await self.value("SELECT COUNT(*) FROM blob WHERE digest = :d", d=sha256(data)))

    def has_bytes(self, data: bytes) -> bool:
        path = self.root / layout.blob_key(parse_digest(sha256(data)))
        return path.exists() and path.read_bytes() == data

    async def blob_kept(self, data: bytes) -> bool:
        """Row and bytes both there (never one without the other)."""
        row, stored = await self.has_blob_row(data), self.has_bytes(data)
        assert row == stored, f"row {row} but bytes {stored}"
        return row

    async def linked(self, repo: str, data: bytes) -> bool:
        found = await self.value(
            """SELECT COUNT(*) FROM repository_blob rb JOIN repository r ON r.id = rb.repository_id
               JOIN blob b ON b.id = rb.blob_id WHERE r.name = :repo AND b.digest = :digest""",
            repo=repo,
            digest=sha256(data),
        )
        return bool(found)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def repo_name(text: str) -> RepositoryName:
    return parse_repository(text)


def unique(prefix: str) -> str:
    return f"{prefix}/r{uuid.uuid4().hex[:10]}"


def at(delta: timedelta) -> Callable[[], datetime]:
    return lambda: utcnow() + delta


async def age(reg: Registry, data: bytes | None = None, *, by: timedelta = 2 * HOUR) -> None:
    """Make rows look `by` older: the blob of `data` (and its links), or every row."""
    past = utcnow() - by
    if data is None:
        await reg.run("UPDATE blob SET touched_at = :t, created_at = :t", t=past)
        await reg.run("UPDATE repository_blob SET created_at = :t", t=past)
        await reg.run("UPDATE manifest SET created_at = :t", t=past)
        return
    digest = sha256(data)
    await reg.run(
        "UPDATE blob SET touched_at = :t, created_at = :t WHERE digest = :d", t=past, d=digest
    )
    await reg.run(
        "UPDATE repository_blob SET created_at = :t "
        "WHERE blob_id = (SELECT id FROM blob WHERE digest = :d)",
        t=past,
        d=digest,
    )
