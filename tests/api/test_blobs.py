"""Blob GET, HEAD (with byte ranges) and DELETE."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.api.helpers import assert_error, http_client, start_upload
from tests.support.oci import make_image, push_blob, push_image, sha256, unique_repo
from tests.support.server import RegistryProcess

MISSING = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def shared(any_registry: RegistryProcess) -> tuple[str, bytes, str]:
    """A 256-byte blob that this module's read-only tests share: (repo, data, digest)."""
    repo = unique_repo()
    data = os.urandom(256)
    with http_client(any_registry) as client:
        return repo, data, push_blob(client, repo, data)


@pytest.fixture
def blob(client: httpx.Client) -> tuple[str, bytes, str]:
    """A 256-byte blob in a fresh repository, for tests that change it."""
    repo = unique_repo()
    data = os.urandom(256)
    return repo, data, push_blob(client, repo, data)


def test_get_blob(client: httpx.Client, shared: tuple[str, bytes, str]) -> None:
    repo, data, digest = shared
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in r.headers


def test_head_blob(client: httpx.Client, shared: tuple[str, bytes, str]) -> None:
    repo, data, digest = shared
    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == "application/octet-stream"


def test_get_blob_larger_than_one_read(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = push_blob(client, repo, data)
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(r.content).hexdigest() == digest.split(":")[1]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, 255),
        ("bytes=200-100000", 200, 255),  # an end past the blob is clamped
        ("bytes=-16", 240, 255),  # suffix: the last 16 bytes
        ("bytes=-1000", 0, 255),  # a suffix longer than the blob is the whole blob
        ("bytes=255-255", 255, 255),
    ],
)
def test_range_request(
    client: httpx.Client, shared: tuple[str, bytes, str], header: str, start: int, end: int
) -> None:
    repo, data, digest = shared
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert r.headers["Content-Length"] == str(end - start + 1)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.content == data[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=256-", "bytes=1000-2000", "bytes=-0", "bytes=5-2"])
def test_unsatisfiable_range_is_416(
    client: httpx.Client, shared: tuple[str, bytes, str], header: str
) -> None:
    repo, data, digest = shared
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize("header", ["bytes=0-1,4-5", "items=0-3", "nonsense"])
def test_range_syntax_not_served_returns_whole_blob(
    client: httpx.Client, shared: tuple[str, bytes, str], header: str
) -> None:
    """RFC 9110 14.2: other units are ignored; several ranges this server does not serve."""
    repo, data, digest = shared
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 200
    assert r.content == data
    assert "Content-Range" not in r.headers


def test_range_on_zero_length_blob_is_416(client: httpx.Client) -> None:
    repo = unique_repo()
    digest = push_blob(client, repo, b"")
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */0"


def test_resume_a_download_with_ranges(
    client: httpx.Client, shared: tuple[str, bytes, str]
) -> None:
    repo, data, digest = shared
    got = b""
    while len(got) < len(data):
        r = client.get(
            f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={len(got)}-{len(got) + 99}"}
        )
        assert r.status_code == 206
        got += r.content
    assert got == data


def test_unknown_blob_is_404(client: httpx.Client, shared: tuple[str, bytes, str]) -> None:
    repo, _, _ = shared
    error = assert_error(client.get(f"/v2/{repo}/blobs/{MISSING}"), 404, "BLOB_UNKNOWN")
    assert error["detail"] == {"digest": MISSING}
    r = client.head(f"/v2/{repo}/blobs/{MISSING}")
    assert r.status_code == 404
    assert r.content == b""


def test_blob_in_unknown_repository_is_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/v2/{unique_repo()}/blobs/{MISSING}"), 404, "BLOB_UNKNOWN")


def test_blob_of_another_repository_is_not_visible(
    client: httpx.Client, shared: tuple[str, bytes, str]
) -> None:
    repo, _, digest = shared
    other = unique_repo()
    start_upload(client, other)  # the other repository exists
    assert_error(client.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{other}/blobs/{digest}").status_code == 404
    assert_error(client.delete(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.get(f"/v2/{repo}/blobs/{digest}").status_code == 200


@pytest.mark.parametrize(
    "digest", ["sha256:abc", "sha256:" + "A" * 64, "sha256:" + "g" * 64, "sha256", "nodigest"]
)
def test_invalid_digest_is_400(client: httpx.Client, digest: str) -> None:
    repo = unique_repo()
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")
    assert_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")


def test_unsupported_digest_algorithm_is_400(client: httpx.Client) -> None:
    repo = unique_repo()
    r = client.get(f"/v2/{repo}/blobs/md5:{'a' * 32}")
    assert_error(r, 400, "UNSUPPORTED")


def test_delete_blob(client: httpx.Client, blob: tuple[str, bytes, str]) -> None:
    repo, _, digest = blob
    r = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202
    assert r.content == b""
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_only_unlinks_it_from_that_repository(client: httpx.Client) -> None:
    data = os.urandom(64)
    first, second = unique_repo(), unique_repo()
    digest = push_blob(client, first, data)
    push_blob(client, second, data)
    assert client.delete(f"/v2/{first}/blobs/{digest}").status_code == 202
    assert client.get(f"/v2/{first}/blobs/{digest}").status_code == 404
    r = client.get(f"/v2/{second}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data


def test_deleted_blob_can_be_pushed_again(
    client: httpx.Client, blob: tuple[str, bytes, str]
) -> None:
    repo, data, digest = blob
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    assert push_blob(client, repo, data) == digest
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_delete_blob_referenced_by_a_manifest_is_409(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image(layers=1)
    push_image(client, repo, image, "v1")
    layer = sha256(image.layers[0])
    config = sha256(image.config)
    for digest in (layer, config):
        assert_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 409, "DENIED")
        assert client.get(f"/v2/{repo}/blobs/{digest}").status_code == 200
    # Once the manifest is gone, the blob may go.
    assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert client.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
    assert client.get(f"/v2/{repo}/blobs/{layer}").status_code == 404


def test_blob_referenced_in_another_repository_can_be_deleted_here(
    client: httpx.Client,
) -> None:
    image = make_image(layers=1)
    first, second = unique_repo(), unique_repo()
    push_image(client, first, image, "v1")
    layer = push_blob(client, second, image.layers[0])
    assert client.delete(f"/v2/{second}/blobs/{layer}").status_code == 202
    assert client.get(f"/v2/{first}/blobs/{layer}").status_code == 200


def test_sha512_blob(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(100)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = start_upload(client, repo)
    r = client.put(location, params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest
