"""Upload session bookkeeping that HTTP cannot show directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cargohold.db.migrate import upgrade
from cargohold.db.session import Database
from cargohold.domain.errors import BlobUploadUnknown
from cargohold.domain.names import parse_repository
from cargohold.services.uploads import UploadService
from cargohold.storage.memory import MemoryDriver
from tests.support.oci import error_codes, unique_repo
from tests.support.server import RegistryProcess
from tests.support.services import SUPERUSER, creator


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_lock_table_does_not_grow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    db = Database(url)
    service = UploadService(db, MemoryDriver(), creator(db), max_blob_bytes=1 << 20)
    repo = parse_repository("team/app")
    try:
        for _ in range(50):  # made-up upload ids never get a lock
            with pytest.raises(BlobUploadUnknown):
                await service.append(repo, str(uuid.uuid4()), _body(b"x"))
        state = await service.start(repo, principal=SUPERUSER)
        for _ in range(5):
            await service.append(repo, state.id, _body(b"abc"))
        assert service._locks == {}
        assert (await service.status(repo, state.id)).size == 15
    finally:
        await db.dispose()


def test_patch_after_lost_upload_bytes_is_a_clear_error(registry: RegistryProcess) -> None:
    repo = unique_repo()
    with registry.client() as client:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        location, upload_id = r.headers["Location"], r.headers["Docker-Upload-UUID"]
        assert client.patch(location, content=b"a" * 100).status_code == 202
        # What a crash between publishing the bytes and recording it leaves behind.
        (registry.data_dir / "storage" / "uploads" / upload_id).unlink()
        r = client.patch(location, content=b"b" * 100)
        assert r.status_code == 400
        assert error_codes(r) == ["BLOB_UPLOAD_INVALID"]
        assert client.get(location).status_code == 404  # the session is gone, not stuck
