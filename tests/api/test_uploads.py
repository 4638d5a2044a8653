"""Blob uploads: monolithic, single POST, streamed, chunked; status, cancel, mounts."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import assert_error, start_upload
from tests.support.oci import push_blob, sha256, unique_repo

OCTET = {"Content-Type": "application/octet-stream"}


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def assert_blob(client: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest


def assert_created(r: httpx.Response, repo: str, digest: str) -> None:
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.content == b""


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- starting an upload -------------------------------------------------------------------


def test_post_starts_an_upload_session(client: httpx.Client) -> None:
    repo = unique_repo()
    r = client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202
    location = r.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    uuid.UUID(upload_id(location))  # the session id is a UUID
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    assert r.headers["Range"] == "0-0"
    assert r.content == b""


def test_post_without_trailing_slash(client: httpx.Client) -> None:
    repo = unique_repo()
    r = client.post(f"/v2/{repo}/blobs/uploads")
    assert r.status_code == 202
    assert r.headers["Location"].startswith(f"/v2/{repo}/blobs/uploads/")


def test_sessions_are_distinct(client: httpx.Client) -> None:
    repo = unique_repo()
    assert start_upload(client, repo) != start_upload(client, repo)


# -- monolithic ---------------------------------------------------------------------------


def test_post_then_put_monolithic(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(1000)
    digest = sha256(data)
    location = start_upload(client, repo)
    r = client.put(location, params={"digest": digest}, content=data, headers=OCTET)
    assert_created(r, repo, digest)
    assert_blob(client, repo, digest, data)
    # The session is finished: its URL is gone.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_single_post_with_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(500)
    digest = sha256(data)
    r = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data, headers=OCTET
    )
    assert_created(r, repo, digest)
    assert_blob(client, repo, digest, data)


def test_single_post_with_wrong_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(500)
    wrong = sha256(b"something else")
    r = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=data, headers=OCTET
    )
    assert_error(r, 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404


def test_pushing_a_blob_twice_is_idempotent(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(300)
    assert push_blob(client, repo, data) == push_blob(client, repo, data)
    assert_blob(client, repo, sha256(data), data)


def test_the_finishing_put_sent_again_answers_the_same_201(client: httpx.Client) -> None:
    """A load balancer sends a PUT again to another replica when the first died before
    answering, perhaps after it finished the upload: the same PUT answers 201 again, while
    the finished upload is otherwise gone (status, PATCH, another digest, DELETE)."""
    repo = unique_repo()
    data = os.urandom(2000)
    digest = sha256(data)
    location = start_upload(client, repo)
    assert client.patch(location, content=data, headers=OCTET).status_code == 202
    first = client.put(location, params={"digest": digest})
    assert_created(first, repo, digest)
    again = client.put(location, params={"digest": digest})
    assert_created(again, repo, digest)
    assert again.headers["Location"] == first.headers["Location"]
    assert_blob(client, repo, digest, data)

    other = sha256(b"something else")
    assert_error(client.put(location, params={"digest": other}), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    patch = client.patch(location, content=b"more", headers=OCTET)
    assert_error(patch, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_created(client.put(location, params={"digest": digest}), repo, digest)


# -- streamed and chunked ------------------------------------------------------------------


def test_streamed_patch_without_content_range(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(3000)
    location = start_upload(client, repo)
    # Transfer-Encoding: chunked, no Content-Length and no Content-Range.
    r = client.patch(location, content=chunks(data[:2000], 512), headers=OCTET)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-1999"
    assert r.headers["Location"] == location
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    # A second streamed PATCH, this one with a Content-Length, appends.
    r = client.patch(r.headers["Location"], content=data[2000:], headers=OCTET)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-2999"
    r = client.put(r.headers["Location"], params={"digest": sha256(data)})
    assert_created(r, repo, sha256(data))
    assert_blob(client, repo, sha256(data), data)


def test_streamed_put_body_completes_an_upload(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(2048)
    location = start_upload(client, repo)
    r = client.patch(location, content=data[:1024], headers=OCTET)
    assert r.status_code == 202
    r = client.put(location, params={"digest": sha256(data)}, content=chunks(data[1024:], 100))
    assert_created(r, repo, sha256(data))
    assert_blob(client, repo, sha256(data), data)


def test_chunked_upload_with_content_range(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(256)
    location = start_upload(client, repo)
    for start, end in [(0, 99), (100, 199)]:
        r = client.patch(
            location,
            content=data[start : end + 1],
            headers={**OCTET, "Content-Range": f"{start}-{end}"},
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{end}"
        assert r.headers["Location"] == location
        assert r.content == b""
        location = r.headers["Location"]
    # The final chunk travels with the closing PUT.
    r = client.put(
        location,
        params={"digest": sha256(data)},
        content=data[200:],
        headers={**OCTET, "Content-Range": "200-255"},
    )
    assert_created(r, repo, sha256(data))
    assert_blob(client, repo, sha256(data), data)


def test_chunked_upload_closed_by_an_empty_put(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(64)
    location = start_upload(client, repo)
    for start in range(0, 64, 16):
        r = client.patch(
            location,
            content=data[start : start + 16],
            headers={"Content-Range": f"{start}-{start + 15}"},
        )
        assert r.status_code == 202
    r = client.put(location, params={"digest": sha256(data)}, headers={"Content-Length": "0"})
    assert_created(r, repo, sha256(data))
    assert_blob(client, repo, sha256(data), data)


@pytest.mark.parametrize(("content_range", "body_len"), [("150-199", 50), ("0-99", 100)])
def test_out_of_order_or_repeated_chunk_is_416(
    client: httpx.Client, content_range: str, body_len: int
) -> None:
    repo = unique_repo()
    data = os.urandom(300)
    location = start_upload(client, repo)
    r = client.patch(location, content=data[:100], headers={"Content-Range": "0-99"})
    assert r.status_code == 202
    r = client.patch(
        location, content=os.urandom(body_len), headers={"Content-Range": content_range}
    )
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["Range"] == "0-99"
    # Nothing was recorded: the status is unchanged and the upload resumes from there.
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-99"
    r = client.patch(location, content=data[100:], headers={"Content-Range": "100-299"})
    assert r.status_code == 202
    r = client.put(location, params={"digest": sha256(data)})
    assert_created(r, repo, sha256(data))
    assert_blob(client, repo, sha256(data), data)


def test_first_chunk_not_starting_at_zero_is_416(client: httpx.Client) -> None:
    location = start_upload(client, unique_repo())
    r = client.patch(location, content=b"x" * 10, headers={"Content-Range": "10-19"})
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["Range"] == "0-0"


def test_final_put_chunk_out_of_order_is_416(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(200)
    location = start_upload(client, repo)
    assert (
        client.patch(location, content=data[:100], headers={"Content-Range": "0-99"}).status_code
        == 202
    )
    r = client.put(
        location,
        params={"digest": sha256(data)},
        content=data[100:],
        headers={"Content-Range": "120-219"},
    )
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["Range"] == "0-99"
    assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404


def test_content_length_not_matching_content_range_is_size_invalid(client: httpx.Client) -> None:
    location = start_upload(client, unique_repo())
    r = client.patch(location, content=b"y" * 50, headers={"Content-Range": "0-99"})
    assert_error(r, 400, "SIZE_INVALID")
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"


@pytest.mark.parametrize("content_range", ["abc", "10-5", "0-", "-5", "bytes=0-9,20-29"])
def test_malformed_content_range_is_400(client: httpx.Client, content_range: str) -> None:
    location = start_upload(client, unique_repo())
    r = client.patch(location, content=b"z" * 10, headers={"Content-Range": content_range})
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")


# -- status and cancel ---------------------------------------------------------------------


def test_upload_status(client: httpx.Client) -> None:
    location = start_upload(client, unique_repo())
    r = client.get(location)
    assert r.status_code == 204
    assert r.headers["Range"] == "0-0"
    assert r.headers["Location"] == location
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    client.patch(location, content=b"a" * 42)
    r = client.get(location)
    assert r.status_code == 204
    assert r.headers["Range"] == "0-41"
    assert r.headers["Location"] == location
    assert r.content == b""


def test_cancel_upload(client: httpx.Client) -> None:
    repo = unique_repo()
    data = b"cancelled bytes"
    location = start_upload(client, repo)
    assert client.patch(location, content=data).status_code == 202
    r = client.delete(location)
    assert r.status_code == 204
    assert r.content == b""
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.patch(location, content=b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    r = client.put(location, params={"digest": sha256(data)})
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404


def test_upload_session_is_bound_to_its_repository(client: httpx.Client) -> None:
    repo, other = unique_repo(), unique_repo()
    start_upload(client, other)  # both repositories exist
    data = os.urandom(128)
    location = start_upload(client, repo)
    foreign = f"/v2/{other}/blobs/uploads/{upload_id(location)}"
    assert_error(client.get(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.patch(foreign, content=data), 404, "BLOB_UPLOAD_UNKNOWN")
    r = client.put(foreign, params={"digest": sha256(data)}, content=data)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert client.head(f"/v2/{other}/blobs/{sha256(data)}").status_code == 404
    # The session still works where it was started.
    r = client.put(location, params={"digest": sha256(data)}, content=data)
    assert_created(r, repo, sha256(data))


@pytest.mark.parametrize("bad_id", ["not-a-uuid", str(uuid.uuid4()), "x" * 300])
def test_unknown_upload_id(client: httpx.Client, bad_id: str) -> None:
    repo = unique_repo()
    start_upload(client, repo)
    url = f"/v2/{repo}/blobs/uploads/{bad_id}"
    assert_error(client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.patch(url, content=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.put(url, params={"digest": sha256(b"")}), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(client.delete(url), 404, "BLOB_UPLOAD_UNKNOWN")


# -- digests -------------------------------------------------------------------------------


def test_wrong_digest_on_put(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(200)
    wrong = sha256(b"not these bytes")
    location = start_upload(client, repo)
    r = client.put(location, params={"digest": wrong}, content=data, headers=OCTET)
    error = assert_error(r, 400, "DIGEST_INVALID")
    assert error["detail"] == {"digest": wrong}
    for digest in (wrong, sha256(data)):
        assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    # The failed session is discarded.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("params", [{}, {"digest": ""}])
def test_put_without_digest(client: httpx.Client, params: dict[str, str]) -> None:
    repo = unique_repo()
    data = os.urandom(20)
    location = start_upload(client, repo)
    assert client.patch(location, content=data).status_code == 202
    assert_error(client.put(location, params=params), 400, "DIGEST_INVALID")
    # Nothing is lost: the session can still be finished properly.
    assert client.get(location).headers["Range"] == "0-19"
    r = client.put(location, params={"digest": sha256(data)})
    assert_created(r, repo, sha256(data))


@pytest.mark.parametrize(
    ("digest", "code"),
    [
        ("sha256:1234", "DIGEST_INVALID"),
        ("sha256:" + "Z" * 64, "DIGEST_INVALID"),
        ("not a digest", "DIGEST_INVALID"),
        ("md5:" + "a" * 32, "UNSUPPORTED"),
    ],
)
def test_malformed_or_unsupported_digest_on_put(
    client: httpx.Client, digest: str, code: str
) -> None:
    location = start_upload(client, unique_repo())
    r = client.put(location, params={"digest": digest}, content=b"data")
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == code


def test_sha512_digest_monolithic(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(4096)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = start_upload(client, repo)
    r = client.put(location, params={"digest": digest}, content=data, headers=OCTET)
    assert_created(r, repo, digest)
    assert_blob(client, repo, digest, data)
    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.headers["Content-Length"] == str(len(data))


def test_sha512_digest_chunked(client: httpx.Client) -> None:
    repo = unique_repo()
    data = os.urandom(300)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest-algorithm": "sha512"})
    assert r.status_code == 202
    location = r.headers["Location"]
    assert (
        client.patch(location, content=data[:150], headers={"Content-Range": "0-149"}).status_code
        == 202
    )
    r = client.put(
        location,
        params={"digest": digest},
        content=data[150:],
        headers={"Content-Range": "150-299"},
    )
    assert_created(r, repo, digest)
    assert_blob(client, repo, digest, data)


def test_sha512_wrong_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    location = start_upload(client, repo)
    assert_error(
        client.put(location, params={"digest": wrong}, content=b"mine"), 400, "DIGEST_INVALID"
    )
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404


# -- zero-length ---------------------------------------------------------------------------


def test_zero_length_blob_post_then_put(client: httpx.Client) -> None:
    repo = unique_repo()
    digest = sha256(b"")
    location = start_upload(client, repo)
    r = client.put(location, params={"digest": digest}, headers={"Content-Length": "0"})
    assert_created(r, repo, digest)
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == "0"
    assert r.headers["Docker-Content-Digest"] == digest
    assert client.head(f"/v2/{repo}/blobs/{digest}").headers["Content-Length"] == "0"


def test_zero_length_blob_single_post(client: httpx.Client) -> None:
    repo = unique_repo()
    digest = sha256(b"")
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=b"")
    assert_created(r, repo, digest)
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == b""


# -- mounts --------------------------------------------------------------------------------


def test_mount_from_another_repository(client: httpx.Client) -> None:
    source, target = unique_repo(), unique_repo()
    data = os.urandom(512)
    digest = push_blob(client, source, data)
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert_created(r, target, digest)
    assert_blob(client, target, digest, data)
    # Mounting again is harmless.
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert_created(r, target, digest)


@pytest.mark.parametrize("source_kind", ["without-blob", "unknown-repo", "invalid-name"])
def test_mount_that_cannot_be_done_falls_back_to_an_upload(
    client: httpx.Client, source_kind: str
) -> None:
    target = unique_repo()
    data = os.urandom(128)
    digest = push_blob(client, unique_repo(), data)  # known to the registry, elsewhere
    if source_kind == "without-blob":
        source = unique_repo()
        push_blob(client, source, os.urandom(8))
    elif source_kind == "unknown-repo":
        source = unique_repo()
    else:
        source = "Not/Valid"
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    assert location.startswith(f"/v2/{target}/blobs/uploads/")
    assert client.head(f"/v2/{target}/blobs/{digest}").status_code == 404
    r = client.put(location, params={"digest": digest}, content=data)
    assert_created(r, target, digest)
    assert_blob(client, target, digest, data)


def test_automatic_mount_without_from(client: httpx.Client) -> None:
    target = unique_repo()
    data = os.urandom(256)
    digest = push_blob(client, unique_repo(), data)
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
    assert_created(r, target, digest)
    assert_blob(client, target, digest, data)


def test_mount_of_a_blob_nobody_has_starts_an_upload(client: httpx.Client) -> None:
    target = unique_repo()
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": "sha256:" + "1" * 64})
    assert r.status_code == 202
    assert r.headers["Location"].startswith(f"/v2/{target}/blobs/uploads/")


def test_mount_with_invalid_digest(client: httpx.Client) -> None:
    r = client.post(
        f"/v2/{unique_repo()}/blobs/uploads/", params={"mount": "sha256:xyz", "from": unique_repo()}
    )
    assert_error(r, 400, "DIGEST_INVALID")


def test_mounted_blob_survives_deletion_at_the_source(client: httpx.Client) -> None:
    source, target = unique_repo(), unique_repo()
    data = os.urandom(64)
    digest = push_blob(client, source, data)
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert r.status_code == 201
    assert client.delete(f"/v2/{source}/blobs/{digest}").status_code == 202
    assert_blob(client, target, digest, data)
    # And a mount from the source, which no longer has it, now falls back to an upload.
    r = client.post(f"/v2/{unique_repo()}/blobs/uploads/", params={"mount": digest, "from": source})
    assert r.status_code == 202
