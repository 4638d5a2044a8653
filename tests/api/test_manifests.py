"""Manifests: push, pull, HEAD and delete by tag and by digest, for every manifest type."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api.helpers import (
    EMPTY_DIGEST,
    artifact_manifest,
    assert_error,
    push_empty_config,
    put_manifest,
    start_upload,
)
from tests.support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    make_image,
    make_index,
    push_blob,
    push_image,
    sha256,
    unique_repo,
)

MIB = 1024 * 1024


@dataclass
class Pushed:
    repo: str
    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.body)


def push_kind(client: httpx.Client, kind: str, reference: str | None = None) -> Pushed:
    """Push one manifest of `kind` (with everything it needs) under `reference`."""
    repo = unique_repo()
    if kind in (OCI_MANIFEST, DOCKER_MANIFEST):
        image = make_image(layers=2, media_type=kind)
        push_image(client, repo, image, reference or image.digest)
        return Pushed(repo, image.manifest, kind)
    child_type = OCI_MANIFEST if kind == OCI_INDEX else DOCKER_MANIFEST
    children = [make_image(media_type=child_type) for _ in range(2)]
    for child in children:
        push_image(client, repo, child, child.digest)
    body = make_index(children, kind)
    r = put_manifest(client, repo, reference or sha256(body), body, kind)
    assert r.status_code == 201, r.text
    return Pushed(repo, body, kind)


ALL_KINDS = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]


def assert_manifest(client: httpx.Client, pushed: Pushed, reference: str) -> None:
    url = f"/v2/{pushed.repo}/manifests/{reference}"
    r = client.get(url, headers={"Accept": pushed.media_type})
    assert r.status_code == 200, r.text
    assert r.content == pushed.body
    assert r.headers["Content-Type"] == pushed.media_type
    assert r.headers["Docker-Content-Digest"] == pushed.digest
    assert r.headers["Content-Length"] == str(len(pushed.body))
    r = client.head(url, headers={"Accept": pushed.media_type})
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Type"] == pushed.media_type
    assert r.headers["Docker-Content-Digest"] == pushed.digest
    assert r.headers["Content-Length"] == str(len(pushed.body))


# -- push and pull -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_push_and_pull_by_digest_and_by_tag(client: httpx.Client, kind: str) -> None:
    pushed = push_kind(client, kind)  # by digest: no tag
    assert_manifest(client, pushed, pushed.digest)
    r = client.get(f"/v2/{pushed.repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": pushed.repo, "tags": []}
    # The same bytes again, under a tag.
    r = put_manifest(client, pushed.repo, "v1", pushed.body, kind)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == pushed.digest
    assert r.headers["Location"] == f"/v2/{pushed.repo}/manifests/{pushed.digest}"
    assert_manifest(client, pushed, "v1")
    assert_manifest(client, pushed, pushed.digest)
    assert client.get(f"/v2/{pushed.repo}/tags/list").json()["tags"] == ["v1"]


def test_put_response_headers(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    r = push_image(client, repo, image, "latest")
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{image.digest}"
    assert r.headers["Docker-Content-Digest"] == image.digest
    assert "OCI-Subject" not in r.headers
    assert r.content == b""
    # The Location is pullable.
    assert client.get(r.headers["Location"]).content == image.manifest


def test_push_by_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    r = push_image(client, repo, image, image.digest)
    assert r.headers["Docker-Content-Digest"] == image.digest
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{image.digest}"


def test_push_by_sha512_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    digest = "sha512:" + hashlib.sha512(image.manifest).hexdigest()
    r = push_image(client, repo, image, digest)
    assert r.headers["Docker-Content-Digest"] == digest
    got = client.get(f"/v2/{repo}/manifests/{digest}")
    assert got.status_code == 200
    assert got.content == image.manifest
    assert got.headers["Docker-Content-Digest"] == digest


def test_push_same_manifest_twice_and_under_two_tags(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_image(client, repo, image, "a")
    push_image(client, repo, image, "a")
    push_image(client, repo, image, "b")
    for tag in ("a", "b"):
        assert client.get(f"/v2/{repo}/manifests/{tag}").content == image.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


def test_retag_moves_the_tag(client: httpx.Client) -> None:
    repo = unique_repo()
    first, second = make_image(), make_image()
    push_image(client, repo, first, "latest")
    push_image(client, repo, second, "latest")
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.content == second.manifest
    assert r.headers["Docker-Content-Digest"] == second.digest
    # The first image is still there by digest.
    assert client.get(f"/v2/{repo}/manifests/{first.digest}").content == first.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]


def test_same_manifest_in_two_repositories(client: httpx.Client) -> None:
    image = make_image()
    first, second = unique_repo(), unique_repo()
    push_image(client, first, image, "v1")
    push_image(client, second, image, "v2")
    assert client.get(f"/v2/{first}/manifests/{image.digest}").status_code == 200
    assert client.get(f"/v2/{second}/manifests/{image.digest}").status_code == 200
    assert client.delete(f"/v2/{first}/manifests/{image.digest}").status_code == 202
    assert client.get(f"/v2/{second}/manifests/v2").content == image.manifest


def test_content_type_parameters_are_ignored(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_blob(client, repo, image.config)
    push_blob(client, repo, image.layers[0])
    r = put_manifest(client, repo, "v1", image.manifest, f"{OCI_MANIFEST}; charset=utf-8")
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/manifests/v1").headers["Content-Type"] == OCI_MANIFEST


def test_manifest_without_media_type_field_takes_the_content_type(client: httpx.Client) -> None:
    repo = unique_repo()
    config = push_empty_config(client, repo)
    layer = os.urandom(32)
    push_blob(client, repo, layer)
    body = json.dumps(
        {"schemaVersion": 2, "config": config, "layers": [descriptor(OCI_LAYER, layer)]}
    ).encode()
    assert put_manifest(client, repo, "v1", body, OCI_MANIFEST).status_code == 201
    r = client.get(f"/v2/{repo}/manifests/v1")
    assert r.content == body
    assert r.headers["Content-Type"] == OCI_MANIFEST


def test_get_ignores_accept_and_returns_the_stored_type(client: httpx.Client) -> None:
    """No conversion between formats: the manifest comes back as pushed."""
    pushed = push_kind(client, DOCKER_MANIFEST, "v1")
    r = client.get(f"/v2/{pushed.repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.content == pushed.body
    assert r.headers["Content-Type"] == DOCKER_MANIFEST


def test_unknown_fields_are_preserved_byte_for_byte(client: httpx.Client) -> None:
    repo = unique_repo()
    config = os.urandom(40)
    layer = os.urandom(70)
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    doc = {
        "schemaVersion": 2,
        "x-vendor": {"nested": [1, 2.50, None, True], "unicode": "café ☃"},
        "mediaType": OCI_MANIFEST,
        "config": {**descriptor(OCI_CONFIG, config), "x-extra": "config field"},
        "layers": [{**descriptor(OCI_LAYER, layer), "x-layer": {"a": 1}}],
        "annotations": {"org.example.key": "value"},
        "zzz-last": [],
    }
    # Unusual but valid JSON: tabs, CRLF, non-ASCII unescaped, a trailing newline.
    body = json.dumps(doc, indent="\t", ensure_ascii=False).replace("\n", "\r\n").encode() + b"\n"
    r = put_manifest(client, repo, "v1", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    for ref in ("v1", sha256(body)):
        got = client.get(f"/v2/{repo}/manifests/{ref}")
        assert got.content == body
        assert got.headers["Docker-Content-Digest"] == sha256(body)


# -- artifacts -----------------------------------------------------------------------------


def test_oci_artifact_with_empty_config(client: httpx.Client) -> None:
    repo = unique_repo()
    config = push_empty_config(client, repo)
    assert config == {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}
    payload = b"an arbitrary artifact payload"
    push_blob(client, repo, payload)
    body = artifact_manifest(
        config=config,
        layers=[descriptor("application/vnd.example.payload.v1", payload)],
        artifact_type="application/vnd.example.thing.v1",
        annotations={"org.opencontainers.image.title": "thing"},
    )
    r = put_manifest(client, repo, "artifact", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    got = client.get(f"/v2/{repo}/manifests/artifact")
    assert got.content == body
    assert got.headers["Content-Type"] == OCI_MANIFEST


def test_oci_artifact_with_custom_config_and_no_layers(client: httpx.Client) -> None:
    repo = unique_repo()
    config = b'{"custom": "config"}'
    push_blob(client, repo, config)
    body = artifact_manifest(
        config=descriptor("application/vnd.example.config.v1+json", config), layers=[]
    )
    assert put_manifest(client, repo, "cfg", body, OCI_MANIFEST).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/cfg").content == body


def test_oci_index_artifact_with_artifact_type(client: httpx.Client) -> None:
    repo = unique_repo()
    child = make_image()
    push_image(client, repo, child, child.digest)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle.v1",
            "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
        }
    ).encode()
    assert put_manifest(client, repo, "bundle", body, OCI_INDEX).status_code == 201
    r = client.get(f"/v2/{repo}/manifests/bundle")
    assert r.content == body
    assert r.headers["Content-Type"] == OCI_INDEX


def test_empty_index_is_accepted(client: httpx.Client) -> None:
    repo = unique_repo()
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert put_manifest(client, repo, "empty", body, OCI_INDEX).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/empty").content == body


def test_foreign_layer_with_urls_needs_no_blob(client: httpx.Client) -> None:
    repo = unique_repo()
    config = os.urandom(16)
    push_blob(client, repo, config)
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": "sha256:" + "f" * 64,
        "size": 1234,
        "urls": ["https://example.com/layer.tar.gz"],
    }
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", config),
            "layers": [foreign],
        }
    ).encode()
    r = put_manifest(client, repo, "win", body, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text


# -- invalid manifests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ],
)
def test_docker_schema1_is_refused(client: httpx.Client, content_type: str) -> None:
    repo = unique_repo()
    body = json.dumps(
        {
            "schemaVersion": 1,
            "name": repo,
            "tag": "old",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
            "history": [{"v1Compatibility": "{}"}],
        }
    ).encode()
    r = put_manifest(client, repo, "old", body, content_type)
    assert_error(r, 400, "MANIFEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/old"), 404, "NAME_UNKNOWN")


def test_manifest_with_missing_layer_is_manifest_blob_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image(layers=2)
    push_blob(client, repo, image.config)
    push_blob(client, repo, image.layers[0])  # not the second layer
    r = put_manifest(client, repo, "v1", image.manifest, OCI_MANIFEST)
    error = assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": sha256(image.layers[1])}
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_manifest_with_missing_config_is_manifest_blob_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image(layers=1)
    push_blob(client, repo, image.layers[0])
    r = put_manifest(client, repo, "v1", image.manifest, OCI_MANIFEST)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


def test_manifest_blob_in_another_repository_only_is_unknown(client: httpx.Client) -> None:
    image = make_image()
    push_image(client, unique_repo(), image, "v1")
    r = put_manifest(client, unique_repo(), "v1", image.manifest, OCI_MANIFEST)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_with_missing_child_is_manifest_blob_unknown(client: httpx.Client) -> None:
    repo = unique_repo()
    present, missing = make_image(), make_image()
    push_image(client, repo, present, present.digest)
    for blob in (missing.config, *missing.layers):
        push_blob(client, repo, blob)  # the child's blobs are there, the child is not
    body = make_index([present, missing])
    error = assert_error(
        put_manifest(client, repo, "idx", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert error["detail"] == {"digest": missing.digest}


def test_index_child_in_another_repository_only_is_unknown(client: httpx.Client) -> None:
    child = make_image()
    push_image(client, unique_repo(), child, child.digest)
    r = put_manifest(client, unique_repo(), "idx", make_index([child]), OCI_INDEX)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")


def test_put_by_mismatching_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_blob(client, repo, image.config)
    push_blob(client, repo, image.layers[0])
    wrong = sha256(b"another manifest")
    r = put_manifest(client, repo, wrong, image.manifest, OCI_MANIFEST)
    assert_error(r, 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/{wrong}"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")


def test_put_by_malformed_digest(client: httpx.Client) -> None:
    r = put_manifest(client, unique_repo(), "sha256:abc", b"{}", OCI_MANIFEST)
    assert_error(r, 400, "DIGEST_INVALID")


def _padded_manifest(client: httpx.Client, repo: str, size: int) -> bytes:
    """A valid artifact manifest of exactly `size` bytes (padding in an annotation)."""
    config = push_empty_config(client, repo)
    empty = artifact_manifest(config=config, annotations={"pad": ""})
    pad = size - len(empty)
    body = artifact_manifest(config=config, annotations={"pad": "x" * pad})
    assert len(body) == size
    return body


def test_manifest_of_4_mib_is_accepted(client: httpx.Client) -> None:
    repo = unique_repo()
    body = _padded_manifest(client, repo, 4 * MIB)
    r = put_manifest(client, repo, "big", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    got = client.get(f"/v2/{repo}/manifests/big")
    assert got.headers["Content-Length"] == str(4 * MIB)
    assert got.content == body


@pytest.mark.parametrize("streamed", [False, True])
def test_manifest_over_4_mib_is_413(client: httpx.Client, streamed: bool) -> None:
    repo = unique_repo()
    body = _padded_manifest(client, repo, 4 * MIB + 1)
    content: Any = body
    if streamed:  # no Content-Length: the limit is enforced while reading
        content = iter([body[i : i + MIB] for i in range(0, len(body), MIB)])
    r = client.put(
        f"/v2/{repo}/manifests/big", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_error(r, 413, "SIZE_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/big"), 404, "MANIFEST_UNKNOWN")


def test_media_type_and_content_type_mismatch(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_blob(client, repo, image.config)
    push_blob(client, repo, image.layers[0])
    for content_type in (OCI_INDEX, DOCKER_MANIFEST):
        r = put_manifest(client, repo, "v1", image.manifest, content_type)
        assert_error(r, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"}', OCI_MANIFEST),
        (b'{"schemaVersion": 3, "config": {}, "layers": []}', OCI_MANIFEST),
        (b'{"schemaVersion": 2, "manifests": [], "manifests": []}', OCI_INDEX),
        (b'{"schemaVersion": 2, "config": {}, "layers": []}', None),
        (b'{"schemaVersion": 2, "mediaType": "text/plain", "config": {}}', "text/plain"),
        (b'{"schemaVersion": 2, "config": {"mediaType": "a/b", "size": -1}}', OCI_MANIFEST),
        (b'{"schemaVersion": 2, "manifests": [], "layers": []}', OCI_INDEX),
        (b"\xff\xfe", OCI_MANIFEST),
    ],
)
def test_invalid_manifest_documents(
    client: httpx.Client, body: bytes, content_type: str | None
) -> None:
    r = put_manifest(client, unique_repo(), "bad", body, content_type)
    assert_error(r, 400, "MANIFEST_INVALID")


def test_descriptor_size_must_match_the_blob(client: httpx.Client) -> None:
    repo = unique_repo()
    config = push_empty_config(client, repo)
    layer = os.urandom(50)
    push_blob(client, repo, layer)
    wrong = {**descriptor(OCI_LAYER, layer), "size": 49}
    body = artifact_manifest(config=config, layers=[wrong])
    assert_error(put_manifest(client, repo, "v1", body, OCI_MANIFEST), 400, "MANIFEST_INVALID")


# -- delete --------------------------------------------------------------------------------


def test_delete_tag_keeps_the_manifest(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_image(client, repo, image, "v1")
    push_image(client, repo, image, "v2")
    r = client.delete(f"/v2/{repo}/manifests/v1")
    assert r.status_code == 202
    assert r.content == b""
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert client.head(f"/v2/{repo}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{image.digest}").content == image.manifest
    assert client.get(f"/v2/{repo}/manifests/v2").status_code == 200
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v2"]
    assert_error(client.delete(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_by_digest_removes_its_tags(client: httpx.Client) -> None:
    repo = unique_repo()
    image, other = make_image(), make_image()
    push_image(client, repo, image, "a")
    push_image(client, repo, image, "b")
    push_image(client, repo, other, "c")
    r = client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 202
    assert r.content == b""
    for ref in (image.digest, "a", "b"):
        assert_error(client.get(f"/v2/{repo}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["c"]
    assert_error(client.delete(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    # It can be pushed again, and the tag reused.
    push_image(client, repo, image, "a")
    assert client.get(f"/v2/{repo}/manifests/a").content == image.manifest


def test_delete_manifest_referenced_by_an_index_is_409(client: httpx.Client) -> None:
    repo = unique_repo()
    child = make_image()
    push_image(client, repo, child, child.digest)
    index = make_index([child])
    assert put_manifest(client, repo, "multi", index, OCI_INDEX).status_code == 201
    assert_error(client.delete(f"/v2/{repo}/manifests/{child.digest}"), 409, "DENIED")
    assert client.get(f"/v2/{repo}/manifests/{child.digest}").status_code == 200
    # Index first, then the child.
    assert client.delete(f"/v2/{repo}/manifests/{sha256(index)}").status_code == 202
    assert client.delete(f"/v2/{repo}/manifests/{child.digest}").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/{child.digest}").status_code == 404


def test_delete_in_unknown_repository(client: httpx.Client) -> None:
    repo = unique_repo()
    assert_error(client.delete(f"/v2/{repo}/manifests/latest"), 404, "NAME_UNKNOWN")
    assert_error(client.delete(f"/v2/{repo}/manifests/{sha256(b'x')}"), 404, "NAME_UNKNOWN")


# -- missing and invalid references --------------------------------------------------------


def test_missing_manifest_and_missing_repository(client: httpx.Client) -> None:
    repo = unique_repo()
    start_upload(client, repo)  # the repository exists, with no manifest
    missing = sha256(b"missing")
    for ref in ("latest", missing):
        error = assert_error(client.get(f"/v2/{repo}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert error["detail"] == {"reference": ref}
        r = client.head(f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 404
        assert r.content == b""
    nowhere = unique_repo()
    for ref in ("latest", missing):
        error = assert_error(client.get(f"/v2/{nowhere}/manifests/{ref}"), 404, "NAME_UNKNOWN")
        assert error["detail"] == {"name": nowhere}


def test_invalid_tag(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_image(client, repo, image, "ok")  # everything the manifest needs is there
    for tag in ["-leading-dash", ".leading-dot", "a" * 129, "sp%20ace", "a+b"]:
        r = put_manifest(client, repo, tag, image.manifest, OCI_MANIFEST)
        assert_error(r, 400, "TAG_INVALID")
        assert_error(client.get(f"/v2/{repo}/manifests/{tag}"), 400, "TAG_INVALID")
        assert_error(client.delete(f"/v2/{repo}/manifests/{tag}"), 400, "TAG_INVALID")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["ok"]


def test_valid_tag_edge_cases(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    tags = ["a" * 128, "_underscore", "V1.2.3-rc_4", "0", "UPPER"]
    push_image(client, repo, image, tags[0])
    for tag in tags[1:]:
        assert put_manifest(client, repo, tag, image.manifest, OCI_MANIFEST).status_code == 201
    for tag in tags:
        assert client.get(f"/v2/{repo}/manifests/{tag}").content == image.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == sorted(tags)


@pytest.mark.parametrize(
    "name",
    [
        "Upper/case",
        "team/App",
        "single",
        "team/a..b",
        "team/app-",
        "team/-app",
        "team//app",
        "team/app_",
        "team/a___b",
        "t/" + "a" * 254,  # 256 characters
        "/".join(["a"] * 17),  # 17 components
    ],
)
def test_invalid_repository_name(client: httpx.Client, name: str) -> None:
    image = make_image()
    assert_error(client.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")
    assert_error(
        put_manifest(client, name, "v1", image.manifest, OCI_MANIFEST), 400, "NAME_INVALID"
    )
    assert_error(client.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")
    assert_error(client.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(client.get(f"/v2/{name}/blobs/{sha256(b'')}"), 400, "NAME_INVALID")


@pytest.mark.parametrize("target", ["/v2/team/../app/tags/list", "/v2/team/./app/tags/list"])
def test_dot_segments_in_repository_name(client: httpx.Client, target: str) -> None:
    """Sent verbatim (httpx would resolve them), they are not a valid name."""
    r = client.get("/v2/", extensions={"target": target.encode()})
    assert_error(r, 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "name",
    ["t/" + "a" * 253, "a0/b.c/d_e/f__g/h-i/j--k", "/".join(["a"] * 16), "0/9"],
)
def test_valid_repository_name_edge_cases(client: httpx.Client, name: str) -> None:
    assert len(name) <= 255
    digest = push_blob(client, name, b"named")
    assert client.get(f"/v2/{name}/blobs/{digest}").content == b"named"
    assert client.get(f"/v2/{name}/tags/list").json() == {"name": name, "tags": []}
