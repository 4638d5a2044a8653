"""The upload service on S3: two replicas (each its own UploadService, database handle and
S3Driver, sharing only the database file and the bucket) never mix their bytes, and the
stale upload purge removes an abandoned upload's pieces from the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
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
from tests.contract.conftest import BUCKET, make_s3_driver
from tests.support.oci import error_codes, push_blob, unique_repo
from tests.support.s3 import SeaweedS3
from tests.support.server import RegistryProcess
from tests.support.services import SUPERUSER, creator


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_patch_from_another_replica_cannot_change_a_finishing_blob(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    prefix = f"race-{uuid.uuid4().hex[:8]}"
    storage_a, storage_b = (
        make_s3_driver(seaweed, prefix=prefix),
        make_s3_driver(seaweed, prefix=prefix),
    )
    db_a, db_b = Database(url), Database(url)
    replica_a = UploadService(db_a, storage_a, creator(db_a), max_blob_bytes=1 << 30)
    replica_b = UploadService(db_b, storage_b, creator(db_b), max_blob_bytes=1 << 30)
    repo = parse_repository("ns/app")
    upload = await replica_a.start(repo, principal=SUPERUSER)
    mine, theirs = b"X" * 1000, b"Y" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(mine).hexdigest())

    # When A's finishing PUT first looks at the upload, B sends a PATCH with other bytes to
    # the same upload, as another replica behind the load balancer could at that moment.
    stat, injected = storage_a.stat, list[asyncio.Future[object]]()

    async def stat_with_intruder(key: str) -> ObjectInfo:
        if key == layout.upload_key(upload.id) and not injected:
            injected.append(
                asyncio.ensure_future(
                    replica_b.append(repo, upload.id, _body(theirs), content_length=len(theirs))
                )
            )
            await asyncio.sleep(0.5)  # B reaches the upload's lease and waits there
        return await stat(key)

    storage_a.stat = stat_with_intruder  # type: ignore[method-assign]
    try:
        blob = await replica_a.finish(repo, upload.id, digest, _body(mine), content_length=1000)
        assert injected, "the intruding PATCH was never sent"
        with pytest.raises(BlobUploadUnknown):  # B waited, then found the upload finished
            await injected[0]
        stored = await storage_b.get_bytes(blob.key)
        assert stored == mine
    finally:
        await db_a.dispose()
        await db_b.dispose()
        storage_a.close()
        storage_b.close()


@pytest.fixture
def quick_purge(seaweed: SeaweedS3, tmp_path: Path) -> Iterator[tuple[RegistryProcess, str]]:
    prefix = f"purge-{uuid.uuid4().hex[:8]}"
    env = seaweed.settings_env(BUCKET, prefix=prefix)
    env["CARGOHOLD_REGISTRY__UPLOAD_MAX_AGE_SECONDS"] = "2"
    env["CARGOHOLD_REGISTRY__UPLOAD_PURGE_INTERVAL_SECONDS"] = "1"
    server = RegistryProcess(tmp_path / "data", env=env).start()
    yield server, prefix
    server.stop()


def test_stale_uploads_are_purged_from_the_bucket(
    seaweed: SeaweedS3, quick_purge: tuple[RegistryProcess, str]
) -> None:
    server, prefix = quick_purge
    s3 = seaweed.client()
    repo = unique_repo()

    def pieces(upload_id: str) -> list[str]:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/uploads/{upload_id}")
        return [item["Key"] for item in listed.get("Contents", [])]

    with server.client() as client:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        location = r.headers["Location"]
        upload_id = r.headers["Docker-Upload-UUID"]
        assert client.patch(location, content=b"x" * 1000).status_code == 202
        assert pieces(upload_id)
        finished = push_blob(client, repo, b"kept")  # a finished blob is never purged
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pieces(upload_id):
            time.sleep(0.5)
        assert not pieces(upload_id)
        status = client.get(location)
        assert status.status_code == 404
        assert error_codes(status) == ["BLOB_UPLOAD_UNKNOWN"]
        assert client.get(f"/v2/{repo}/blobs/{finished}").content == b"kept"
