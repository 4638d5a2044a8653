"""`database.sqlite_synchronous: full` (an fsync per commit, off the event loop) works end to
end: pushes are acknowledged, visible, and still there after the server is killed."""

from __future__ import annotations

from pathlib import Path

from tests.support.oci import make_image, push_image, unique_repo
from tests.support.server import RegistryProcess


def test_full_synchronous_mode(tmp_path: Path) -> None:
    env = {"CARGOHOLD_DATABASE__SQLITE_SYNCHRONOUS": "full"}
    server = RegistryProcess(tmp_path / "data", env=env).start()
    repo, image = unique_repo(), make_image(layers=2)
    try:
        with server.client() as client:
            for i in range(5):
                push_image(client, repo, image, f"v{i}")
    finally:
        server.kill()  # SIGKILL: nothing gets flushed on the way out
    server = RegistryProcess(tmp_path / "data", env=env).start()
    try:
        with server.client() as client:
            tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
            assert tags == [f"v{i}" for i in range(5)]
            assert client.get(f"/v2/{repo}/manifests/v4").content == image.manifest
    finally:
        server.stop()
