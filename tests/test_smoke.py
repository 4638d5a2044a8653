"""A first end-to-end push and pull over HTTP on both databases."""

from __future__ import annotations

import httpx

from tests.support.oci import make_image, push_image, unique_repo


def test_push_then_pull_image(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image(layers=2)
    r = push_image(client, repo, image, "v1")
    assert r.headers["Docker-Content-Digest"] == image.digest
    got = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": image.media_type})
    assert got.status_code == 200
    assert got.content == image.manifest
    assert got.headers["Content-Type"] == image.media_type
    for layer in image.layers:
        from tests.support.oci import sha256

        blob = client.get(f"/v2/{repo}/blobs/{sha256(layer)}")
        assert blob.status_code == 200
        assert blob.content == layer
