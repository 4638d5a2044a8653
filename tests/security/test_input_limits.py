"""Unbounded inputs (SECURITY.md 1.5): every size and count a client controls is bounded.

Page sizes are clamped, manifests are capped at 4 MiB (refused before the body is read
when Content-Length says so) and at 4096 descriptors, names, tags and digests have
maximum lengths, deep JSON nesting is a 400, and blobs respect the configured maximum
even when the client does not declare a length. On both databases unless a test needs a
server with small limits of its own."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from tests.security.helpers import assert_oci_error, catalog, storage_problems
from tests.support.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    make_image,
    push_blob,
    push_image,
    sha256,
    unique_repo,
)
from tests.support.server import RegistryProcess

MAX_MANIFEST = 4 * 1024 * 1024
TIGHT_PAGE = 3
TIGHT_BLOB = 64 * 1024


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A server with a page size of 3 and a blob limit of 64 KiB."""
    server = RegistryProcess(
        tmp_path_factory.mktemp("registry-tight"),
        env={
            "CARGOHOLD_REGISTRY__MAX_PAGE_SIZE": str(TIGHT_PAGE),
            "CARGOHOLD_REGISTRY__MAX_BLOB_BYTES": str(TIGHT_BLOB),
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture
def tight_client(tight: RegistryProcess) -> Iterator[httpx.Client]:
    with tight.client() as c:
        yield c


def _link_n(resp: httpx.Response) -> int:
    link = resp.headers["link"]
    query = link.split("?", 1)[1].split(">", 1)[0]
    return int(parse_qs(query)["n"][0])


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), body


def _manifest_with(layers: list[dict[str, object]], config: bytes = b"{}") -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": layers,
        }
    ).encode()


def _random_layers(count: int) -> list[dict[str, object]]:
    return [
        {"mediaType": OCI_LAYER, "digest": sha256(os.urandom(8)), "size": 8} for _ in range(count)
    ]


# -- page sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", ["1000000000", str(2**63), "9" * 40])
def test_a_huge_n_is_clamped_to_the_page_size(tight_client: httpx.Client, n: str) -> None:
    repo = unique_repo("clamp")
    image = make_image()
    for i in range(TIGHT_PAGE + 2):
        push_image(tight_client, repo, image, f"v{i}")
        tight_client.post(f"/v2/{unique_repo('clamp')}/blobs/uploads/")  # one more repository

    r = tight_client.get("/v2/_catalog", params={"n": n})
    assert r.status_code == 200, r.text
    assert len(r.json()["repositories"]) == TIGHT_PAGE
    assert _link_n(r) == TIGHT_PAGE

    r = tight_client.get(f"/v2/{repo}/tags/list", params={"n": n})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["v0", "v1", "v2"]
    assert _link_n(r) == TIGHT_PAGE


def test_without_n_tags_come_whole_and_the_catalog_in_pages(tight_client: httpx.Client) -> None:
    # The whole tag list up to registry.max_tag_list, as clients that never follow Link expect.
    repo = unique_repo("whole")
    image = make_image()
    for i in range(TIGHT_PAGE + 2):
        push_image(tight_client, repo, image, f"v{i}")
    r = tight_client.get(f"/v2/{repo}/tags/list")
    assert r.json()["tags"] == [f"v{i}" for i in range(TIGHT_PAGE + 2)]
    assert "link" not in r.headers
    r = tight_client.get("/v2/_catalog")
    assert len(r.json()["repositories"]) == TIGHT_PAGE
    assert _link_n(r) == TIGHT_PAGE


@pytest.mark.parametrize("n", ["1000000000", "9" * 40])
def test_a_huge_n_is_answered_on_both_databases(client: httpx.Client, n: str) -> None:
    repo = unique_repo("hugen")
    push_image(client, repo, make_image(), "latest")
    r = client.get("/v2/_catalog", params={"n": n})
    assert r.status_code == 200, r.text
    assert len(r.json()["repositories"]) <= 1000
    r = client.get(f"/v2/{repo}/tags/list", params={"n": n})
    assert r.status_code == 200 and r.json()["tags"] == ["latest"]


@pytest.mark.parametrize("n", ["-1", "abc", "1e3", "0x10", " 5", "²", "١٢", "5.0"])
def test_n_must_be_a_plain_number(client: httpx.Client, n: str) -> None:
    repo = unique_repo("badn")
    push_blob(client, repo, b"x")
    for url in ("/v2/_catalog", f"/v2/{repo}/tags/list"):
        assert_oci_error(client.get(url, params={"n": n}), 400, {"PAGINATION_NUMBER_INVALID"})


def test_n_zero_is_an_empty_page(client: httpx.Client) -> None:
    r = client.get("/v2/_catalog", params={"n": "0"})
    assert r.status_code == 200 and r.json()["repositories"] == []


@pytest.mark.parametrize("last", ["z" * 513, "a\x00b", "\x00"])
def test_last_is_bounded_and_never_reaches_the_database_raw(
    client: httpx.Client, last: str
) -> None:
    repo = unique_repo("last")
    image = make_image()
    push_image(client, repo, image, "latest")
    for url in ("/v2/_catalog", f"/v2/{repo}/tags/list"):
        assert_oci_error(client.get(url, params={"last": last}), 400, {"PAGINATION_NUMBER_INVALID"})
    r = client.get(f"/v2/{repo}/referrers/{image.digest}", params={"last": last})
    assert_oci_error(r, 400, {"PAGINATION_NUMBER_INVALID"})


def test_odd_but_harmless_last_and_artifact_type_values_are_answered(client: httpx.Client) -> None:
    repo = unique_repo("last")
    image = make_image()
    push_image(client, repo, image, "latest")
    for last in ("\u00e9\u4e2d", "\ud7ff", "z" * 512, "%00"):
        assert client.get("/v2/_catalog", params={"last": last}).status_code == 200
        assert client.get(f"/v2/{repo}/tags/list", params={"last": last}).status_code == 200
    for artifact_type in ("a\x00b", "\t", "x" * 10_000):
        r = client.get(
            f"/v2/{repo}/referrers/{image.digest}", params={"artifactType": artifact_type}
        )
        assert r.status_code == 200, r.text
        assert r.json()["manifests"] == []


# -- manifest size and descriptor counts --------------------------------------------------


def _padded_manifest(config: bytes, layer: bytes, size: int) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
        "annotations": {"pad": ""},
    }
    short = json.dumps(doc).encode()
    doc["annotations"] = {"pad": "x" * (size - len(short))}
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


def test_a_manifest_of_exactly_4_mib_is_accepted_and_one_byte_more_is_not(
    client: httpx.Client,
) -> None:
    repo = unique_repo("big")
    config, layer = b"{}", os.urandom(64)
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    ok = _padded_manifest(config, layer, MAX_MANIFEST)
    r = client.put(f"/v2/{repo}/manifests/max", content=ok, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text[:300]
    assert client.get(f"/v2/{repo}/manifests/max").content == ok

    over = _padded_manifest(config, layer, MAX_MANIFEST + 1)
    r = client.put(
        f"/v2/{repo}/manifests/over", content=over, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_oci_error(r, 413, {"SIZE_INVALID"})
    assert_oci_error(client.get(f"/v2/{repo}/manifests/over"), 404, {"MANIFEST_UNKNOWN"})
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{sha256(over)}"), 404, {"MANIFEST_UNKNOWN"})


def test_an_oversized_manifest_is_refused_before_its_body_is_read(
    any_registry: RegistryProcess, client: httpx.Client
) -> None:
    """Content-Length over the cap: the answer comes without the client sending a byte."""
    repo = unique_repo("early")
    head = (
        f"PUT /v2/{repo}/manifests/latest HTTP/1.1\r\nHost: {any_registry.host}\r\n"
        f"Authorization: {any_registry.authorization}\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {64 * MAX_MANIFEST}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", any_registry.port), timeout=10) as sock:
        sock.sendall(head.encode())
        status, body = _read_response(sock)
    assert status == 413, body[:300]
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"
    # nothing stored, and no repository created
    assert repo not in catalog(client)
    assert_oci_error(client.get(f"/v2/{repo}/tags/list"), 404, {"NAME_UNKNOWN"})


def test_an_oversized_manifest_without_content_length_is_cut_off(client: httpx.Client) -> None:
    repo = unique_repo("chunked")
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"schemaVersion":2,"annotations":{"pad":"'
        for _ in range(40):  # 10 MiB in all, unless the server stops reading
            sent += 256 * 1024
            yield b"x" * (256 * 1024)
        yield b'"}}'

    # A connection of its own: the server may close it mid-body, and a pooled connection
    # closed that way must not be reused by the checks below.
    with httpx.Client(
        base_url=client.base_url, auth=client.auth, headers=client.headers, timeout=30
    ) as once:
        try:
            r = once.put(
                f"/v2/{repo}/manifests/latest",
                content=body(),
                headers={"Content-Type": OCI_MANIFEST},
            )
        except httpx.TransportError:
            pass  # the server answered and closed while the body was still being sent
        else:
            assert_oci_error(r, 413, {"SIZE_INVALID"})
    assert_oci_error(client.get(f"/v2/{repo}/tags/list"), 404, {"NAME_UNKNOWN"})
    assert repo not in catalog(client)


@pytest.mark.parametrize("count", [4096, 4097])
def test_at_most_4096_layers(client: httpx.Client, count: int) -> None:
    repo = unique_repo("layers")
    push_blob(client, repo, b"{}")
    body = _manifest_with(_random_layers(count))
    r = client.put(
        f"/v2/{repo}/manifests/many", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    if count <= 4096:  # the count is fine; the (random) layers are just not there
        assert_oci_error(r, 400, {"MANIFEST_BLOB_UNKNOWN"})
    else:
        assert_oci_error(r, 400, {"MANIFEST_INVALID"})
        assert "4096" in r.json()["errors"][0]["message"]


def test_at_most_4096_index_children(client: httpx.Client) -> None:
    repo = unique_repo("children")
    children = [
        {"mediaType": OCI_MANIFEST, "digest": sha256(os.urandom(8)), "size": 10}
        for _ in range(4097)
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    r = client.put(f"/v2/{repo}/manifests/idx", content=body, headers={"Content-Type": OCI_INDEX})
    assert_oci_error(r, 400, {"MANIFEST_INVALID"})


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"schemaVersion":2,"annotations":{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}}",
        b'{"schemaVersion":2,"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","config":'
        + b'{"x":' * 50_000
        + b"{}"
        + b"}" * 50_000
        + b"}",
    ],
    ids=["arrays", "objects", "in-annotations", "in-config"],
)
def test_deeply_nested_json_is_invalid_not_a_crash(client: httpx.Client, body: bytes) -> None:
    repo = unique_repo("deep")
    r = client.put(
        f"/v2/{repo}/manifests/deep", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_oci_error(r, 400, {"MANIFEST_INVALID"})
    assert client.get("/v2/").status_code == 200  # and the server is still there


def test_huge_numbers_in_a_manifest_are_invalid(client: httpx.Client) -> None:
    repo = unique_repo("numbers")
    push_blob(client, repo, b"{}")
    for size in ("1" * 5000, "1e400", "-1", "1.5", "true"):
        body = (
            f'{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":'
            f'"{OCI_CONFIG}","digest":"{sha256(b"{}")}","size":{size}}},"layers":[]}}'
        ).encode()
        r = client.put(
            f"/v2/{repo}/manifests/n", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert_oci_error(r, 400, {"MANIFEST_INVALID"})


# -- names, tags and digests --------------------------------------------------------------


def test_repository_names_longer_than_255_are_invalid(client: httpx.Client) -> None:
    longest = "lim/" + uuid.uuid4().hex + "a" * (255 - 4 - 32)
    assert len(longest) == 255
    digest = push_blob(client, longest, b"fits")
    assert client.get(f"/v2/{longest}/blobs/{digest}").content == b"fits"
    for name in (longest + "b", "lim/" + "a" * 10_000):
        assert_oci_error(client.get(f"/v2/{name}/tags/list"), 400, {"NAME_INVALID"})
        assert_oci_error(client.post(f"/v2/{name}/blobs/uploads/"), 400, {"NAME_INVALID"})
        assert_oci_error(
            client.put(
                f"/v2/{name}/manifests/x", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
            ),
            400,
            {"NAME_INVALID"},
        )
        assert name not in catalog(client)


def test_repository_names_with_more_than_16_components_are_invalid(client: httpx.Client) -> None:
    sixteen = "/".join(["c"] * 15 + [uuid.uuid4().hex[:8]])
    push_blob(client, sixteen, b"ok")
    for name in (sixteen + "/x", "/".join(["a"] * 255), "/".join(["a"] * 4000)):
        assert_oci_error(client.get(f"/v2/{name}/tags/list"), 400, {"NAME_INVALID"})
        assert_oci_error(client.post(f"/v2/{name}/blobs/uploads/"), 400, {"NAME_INVALID"})


def test_tags_longer_than_128_are_invalid(client: httpx.Client) -> None:
    repo = unique_repo("tags")
    image = make_image()
    longest = "t" * 128
    push_image(client, repo, image, longest)
    assert client.get(f"/v2/{repo}/manifests/{longest}").content == image.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == [longest]
    for tag in ("t" * 129, "t" * 5000):
        r = client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert_oci_error(r, 400, {"TAG_INVALID"})
        assert_oci_error(client.get(f"/v2/{repo}/manifests/{tag}"), 400, {"TAG_INVALID"})
        assert_oci_error(client.delete(f"/v2/{repo}/manifests/{tag}"), 400, {"TAG_INVALID"})
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == [longest]


LONG_DIGESTS = [
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 10_000,
    "sha512:" + "a" * 129,
    "sha256:" + "a" * 63,
    "x" * 10_000 + ":" + "a" * 64,
]


@pytest.mark.parametrize("digest", LONG_DIGESTS, ids=["65", "10000", "sha512-129", "63", "alg"])
def test_digests_of_the_wrong_length_are_invalid(client: httpx.Client, digest: str) -> None:
    repo = unique_repo("digest")
    push_blob(client, repo, b"x")
    assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 400, {"DIGEST_INVALID"})
    assert_oci_error(client.head(f"/v2/{repo}/blobs/{digest}"), 400)
    assert_oci_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 400, {"DIGEST_INVALID"})
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{digest}"), 400, {"DIGEST_INVALID"})
    assert_oci_error(client.get(f"/v2/{repo}/referrers/{digest}"), 400, {"DIGEST_INVALID"})
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=b"x")
    assert_oci_error(r, 400, {"DIGEST_INVALID"})
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert_oci_error(r, 400, {"DIGEST_INVALID"})
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    assert_oci_error(
        client.put(loc, params={"digest": digest}, content=b"x"), 400, {"DIGEST_INVALID"}
    )


# -- blob sizes ---------------------------------------------------------------------------


def test_blobs_over_the_limit_are_refused_however_they_are_sent(
    tight: RegistryProcess, tight_client: httpx.Client
) -> None:
    repo = unique_repo("limit")
    fits = os.urandom(TIGHT_BLOB)
    too_big = os.urandom(TIGHT_BLOB + 1)
    assert push_blob(tight_client, repo, fits) == sha256(fits)

    # monolithic, length declared
    r = tight_client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(too_big)}, content=too_big
    )
    assert_oci_error(r, 400, {"SIZE_INVALID"})

    # chunked: the chunk that crosses the limit is refused, the upload stays usable
    loc = tight_client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    r = tight_client.patch(
        loc, content=too_big[:TIGHT_BLOB], headers={"Content-Range": f"0-{TIGHT_BLOB - 1}"}
    )
    assert r.status_code == 202, r.text
    r = tight_client.patch(
        loc, content=b"!", headers={"Content-Range": f"{TIGHT_BLOB}-{TIGHT_BLOB}"}
    )
    assert_oci_error(r, 400, {"SIZE_INVALID"})
    assert tight_client.get(loc).headers["range"] == f"0-{TIGHT_BLOB - 1}"

    # streamed without any length (chunked transfer encoding)
    def stream() -> Iterator[bytes]:
        for i in range(0, len(too_big), 4096):
            yield too_big[i : i + 4096]

    loc = tight_client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    r = tight_client.patch(loc, content=stream())
    assert_oci_error(r, 400, {"SIZE_INVALID"})
    assert tight_client.get(loc).headers["range"] == "0-0"

    for digest in (sha256(too_big), sha256(too_big[:TIGHT_BLOB])):
        assert_oci_error(tight_client.head(f"/v2/{repo}/blobs/{digest}"), 404)
    assert storage_problems(Path(tight.data_dir)) == []


@pytest.mark.parametrize(
    "content_range",
    ["0-9223372036854775807", "9223372036854775807-9223372036854775807", "0-99999999999999999999"],
)
def test_huge_content_ranges_are_refused(client: httpx.Client, content_range: str) -> None:
    repo = unique_repo("cr")
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    r = client.patch(loc, content=b"0123456789", headers={"Content-Range": content_range})
    assert_oci_error(r, {400, 416}, {"BLOB_UPLOAD_INVALID", "SIZE_INVALID"})
    assert client.get(loc).headers["range"] == "0-0"
