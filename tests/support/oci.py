"""Helpers that speak the OCI distribution API over HTTP, for protocol tests."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


# The error codes of distribution-spec 1.1 ("Error Codes"), and the ones cargohold adds where
# that table has none that fits (docs/protocol.md): Docker's TAG_INVALID and
# PAGINATION_NUMBER_INVALID, RANGE_INVALID for an unsatisfiable blob Range, and NOT_FOUND
# for a path under /v2 that is no endpoint.
SPEC_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)
EXTENSION_CODES = frozenset({"TAG_INVALID", "PAGINATION_NUMBER_INVALID", "RANGE_INVALID"})
ALL_CODES = SPEC_CODES | EXTENSION_CODES | {"NOT_FOUND"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_repo(prefix: str = "test") -> str:
    return f"{prefix}/r{uuid.uuid4().hex[:12]}"


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def error_codes(resp: httpx.Response) -> list[str]:
    return [e["code"] for e in resp.json()["errors"]]


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """Monolithic POST + PUT; returns the digest."""
    digest = sha256(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = client.put(
        r.headers["Location"],
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    return digest


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(
    *, layers: int = 1, media_type: str = OCI_MANIFEST, extra: dict[str, Any] | None = None
) -> Image:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "nonce": uuid.uuid4().hex,
        }
    ).encode()
    blobs = [os.urandom(256) for _ in range(layers)]
    docker = media_type == DOCKER_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, b) for b in blobs],
        **(extra or {}),
    }
    return Image(config, blobs, json.dumps(doc, indent=1).encode(), media_type)


def push_image(client: httpx.Client, repo: str, image: Image, reference: str) -> httpx.Response:
    push_blob(client, repo, image.config)
    for layer in image.layers:
        push_blob(client, repo, layer)
    r = client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert r.status_code == 201, r.text
    return r


def make_index(children: list[Image], media_type: str = OCI_INDEX) -> bytes:
    platforms = [("amd64", "linux"), ("arm64", "linux")]
    manifests = []
    for i, child in enumerate(children):
        arch, os_ = platforms[i % len(platforms)]
        manifests.append(
            descriptor(child.media_type, child.manifest, platform={"architecture": arch, "os": os_})
        )
    return json.dumps(
        {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
    ).encode()
