"""Helpers for the tag, time machine, label and immutability tests: images with labels,
pushes over /v2, and calls to the tag API as the superuser."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.api_v1.access_helpers import admin_api
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    descriptor,
    push_image,
    unique_repo,
)
from tests.support.server import RegistryProcess

POLL_SECONDS = 60.0  # generous: expiry is checked every second, the machine is shared


def labelled_image(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    layers: int = 1,
) -> Image:
    """An OCI image whose config carries `config.Labels` and whose manifest carries
    `annotations`."""
    config_doc: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "nonce": uuid.uuid4().hex,
    }
    if labels is not None:
        config_doc["config"] = {"Labels": labels}
    config = json.dumps(config_doc).encode()
    blobs = [os.urandom(200 + i) for i in range(layers)]
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, b) for b in blobs],
    }
    if annotations is not None:
        doc["annotations"] = annotations
    return Image(config, blobs, json.dumps(doc).encode())


def push(server: RegistryProcess, repo: str, image: Image, reference: str) -> str:
    with server.client() as c:
        push_image(c, repo, image, reference)
    return image.digest


def put_manifest(client: httpx.Client, repo: str, image: Image, reference: str) -> httpx.Response:
    """A manifest PUT whose blobs are already in the repository."""
    return client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )


def new_repository(server: RegistryProcess, prefix: str = "tags") -> str:
    """A repository of the superuser's namespace `prefix` (created by the first push)."""
    return unique_repo(prefix)


def tag_page(server: RegistryProcess, repo: str, **params: Any) -> dict[str, Any]:
    with admin_api(server) as c:
        r = c.get(f"/repository/{repo}/tag/", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def live_tags(server: RegistryProcess, repo: str) -> dict[str, str]:
    """tag -> digest of the live tags, through the API."""
    page = tag_page(server, repo, onlyActiveTags="true", limit=100)
    return {t["name"]: t["manifest_digest"] for t in page["tags"]}


def registry_tags(server: RegistryProcess, repo: str) -> list[str]:
    with server.client() as c:
        r = c.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    return list(r.json()["tags"] or [])


def manifest_status(server: RegistryProcess, repo: str, reference: str) -> int:
    with server.client() as c:
        return c.get(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        ).status_code


def wait_until(check: Callable[[], bool], what: str, timeout: float = POLL_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
