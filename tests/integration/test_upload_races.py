"""Two worker processes writing one upload: the bytes under a digest are always the bytes
that hash to it. Two UploadService instances with their own Database and hasher cache,
sharing the SQLite file and the storage root, stand for two granian workers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cargohold.db.migrate import upgrade
from cargohold.db.session import Database
from cargohold.domain.digests import parse_digest
from cargohold.domain.errors import BlobUploadUnknown
from cargohold.domain.names import parse_repository
from cargohold.services.uploads import UploadService
from cargohold.storage import layout
from cargohold.storage.driver import ObjectInfo
from cargohold.storage.filesystem import FilesystemDriver
from tests.support.services import SUPERUSER, creator


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_patch_from_another_worker_cannot_change_a_finishing_blob(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    storage_a, storage_b = FilesystemDriver(tmp_path / "st"), FilesystemDriver(tmp_path / "st")
    db_a, db_b = Database(url), Database(url)
    worker_a = UploadService(db_a, storage_a, creator(db_a), max_blob_bytes=1 << 30)
    worker_b = UploadService(db_b, storage_b, creator(db_b), max_blob_bytes=1 << 30)
    repo = parse_repository("ns/app")
    upload = await worker_a.start(repo, principal=SUPERUSER)
    mine, theirs = b"X" * 1000, b"Y" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(mine).hexdigest())

    # When A's finishing PUT first looks at the upload's file, B sends a PATCH with other
    # bytes to the same upload, as another worker process could at that moment.
    stat, injected = storage_a.stat, []

    async def stat_with_intruder(key: str) -> ObjectInfo:
        if key == layout.upload_key(upload.id) and not injected:
            injected.append(
                asyncio.ensure_future(
                    worker_b.append(repo, upload.id, _body(theirs), content_length=len(theirs))
                )
            )
            await asyncio.sleep(0.3)  # B reaches the upload's lock and waits there
        return await stat(key)

    storage_a.stat = stat_with_intruder  # type: ignore[method-assign]
    try:
        blob = await worker_a.finish(repo, upload.id, digest, _body(mine), content_length=1000)
        assert injected, "the intruding PATCH was never sent"
        with pytest.raises(BlobUploadUnknown):  # B waited, then found the upload finished
            await injected[0]
        stored = (tmp_path / "st" / blob.key).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == digest.hex
        assert stored == mine
    finally:
        await db_a.dispose()
        await db_b.dispose()
