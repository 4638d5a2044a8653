"""Stale upload sessions are removed by the background job after a configurable age."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.audit import execute, query
from tests.support.oci import error_codes, push_blob, unique_repo
from tests.support.server import RegistryProcess


@pytest.fixture
def quick_purge(tmp_path: Path) -> Iterator[RegistryProcess]:
    server = RegistryProcess(
        tmp_path / "data",
        env={
            "CARGOHOLD_REGISTRY__UPLOAD_MAX_AGE_SECONDS": "2",
            "CARGOHOLD_REGISTRY__UPLOAD_PURGE_INTERVAL_SECONDS": "1",
        },
    ).start()
    yield server
    server.stop()


def test_stale_uploads_are_purged(quick_purge: RegistryProcess) -> None:
    repo = unique_repo()
    with quick_purge.client() as client:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        location = r.headers["Location"]
        upload_id = r.headers["Docker-Upload-UUID"]
        assert client.patch(location, content=b"x" * 1000).status_code == 202
        upload_file = quick_purge.data_dir / "storage" / "uploads" / upload_id
        assert upload_file.exists()
        finished = push_blob(client, repo, b"kept")  # a finished blob is never purged
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and upload_file.exists():
            time.sleep(0.5)
        assert not upload_file.exists()
        status = client.get(location)
        assert status.status_code == 404
        assert error_codes(status) == ["BLOB_UPLOAD_UNKNOWN"]
        assert client.get(f"/v2/{repo}/blobs/{finished}").content == b"kept"


def test_finished_uploads_are_forgotten_after_a_while(quick_purge: RegistryProcess) -> None:
    """A finished upload's row answers its PUT again for a while (FINISHED_KEPT), then the
    purge removes it like any other."""
    repo = unique_repo()
    with quick_purge.client() as client:
        push_blob(client, repo, b"finished once")
    rows = query(quick_purge, "SELECT id FROM upload WHERE finished_digest IS NOT NULL")
    assert len(rows) == 1
    execute(
        quick_purge,
        "UPDATE upload SET finished_at = :t WHERE id = :id",
        [{"t": "2000-01-01 00:00:00", "id": rows[0][0]}],
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and query(quick_purge, "SELECT id FROM upload"):
        time.sleep(0.5)
    assert query(quick_purge, "SELECT id FROM upload") == []
