"""Path traversal, unsafe storage paths and side effects of reads (SECURITY.md 1.8).

Hostile repository names, digests and upload ids are sent byte for byte (raw HTTP, no
client-side normalisation) to a server of its own, whose data directory sits next to an
empty canary directory: every request is refused with a 4xx OCI error, nothing appears
outside storage/, and the canary stays empty. Then, on both databases: reads never
write (Zot#511): looking at a repository that does not exist creates neither it nor a
file, and looking at another repository's blob or upload from one does not link it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.security.helpers import (
    RawResponse,
    assert_oci_error,
    catalog,
    files_under,
    raw_request,
    storage_problems,
)
from tests.support.oci import (
    OCI_MANIFEST,
    make_image,
    push_blob,
    push_image,
    sha256,
    unique_repo,
)
from tests.support.server import RegistryProcess

ZERO = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Path]]:
    """A server whose data directory is <root>/data, beside an empty <root>/canary."""
    root = tmp_path_factory.mktemp("traversal")
    (root / "canary").mkdir()
    server = RegistryProcess(root / "data").start()
    yield server, root
    server.stop()


@pytest.fixture
def contained(jail: tuple[RegistryProcess, Path]) -> Iterator[RegistryProcess]:
    """The jailed server; after the test, nothing exists outside its storage."""
    server, root = jail
    yield server
    assert sorted(p.name for p in root.iterdir()) == ["canary", "data"]
    assert list((root / "canary").iterdir()) == []
    assert storage_problems(root / "data") == []


def _refused(resp: RawResponse, method: str, codes: set[str]) -> None:
    assert 400 <= resp.status < 500, (method, resp.status, resp.body[:300])
    if method != "HEAD":
        found = resp.codes()
        assert found[0] in codes, (method, found, codes)


# -- names --------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../x",
    "a/../../etc",
    "a/b/..",
    "./a/b",
    "a/./b",
    "%2e%2e/x",
    "a/%2e%2e/%2e%2e/etc",
    "a/..%2f..%2fetc",
    "a%2f..%2f..%2f..%2fcanary",
    "..%5c..%5cetc/x",
    "a/b%5c..%5c..",
    "%252e%252e/x",
    "%c0%ae%c0%ae/x",
    "a/%00/b",
    "a%00/b",
    "/etc/passwd",
    "a//b",
    "A/B",
    "%EF%BD%81/b",  # fullwidth a
    "%D0%B0/b",  # Cyrillic a
    "a/b%E2%88%95c",  # division slash
    "a/%E2%80%A4%E2%80%A4/x",  # one dot leader, twice
    "a/%EF%BC%8E%EF%BC%8E/x",  # fullwidth full stops
    "a/b%C4%B1",  # dotless i
    "a/b%CC%81",  # combining accent
    "/".join(["a"] * 255),
    "a/" + "b" * 300,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_repository_names_are_refused(contained: RegistryProcess, name: str) -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    requests = [
        ("GET", f"/v2/{name}/tags/list", None),
        ("HEAD", f"/v2/{name}/manifests/latest", None),
        ("GET", f"/v2/{name}/manifests/{ZERO}", None),
        ("PUT", f"/v2/{name}/manifests/latest", manifest),
        ("DELETE", f"/v2/{name}/manifests/latest", None),
        ("POST", f"/v2/{name}/blobs/uploads/", None),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(b'x')}", b"x"),
        ("GET", f"/v2/{name}/blobs/{ZERO}", None),
        ("HEAD", f"/v2/{name}/blobs/{ZERO}", None),
        ("DELETE", f"/v2/{name}/blobs/{ZERO}", None),
        ("GET", f"/v2/{name}/blobs/uploads/{uuid.uuid4()}", None),
        ("GET", f"/v2/{name}/referrers/{ZERO}", None),
    ]
    for method, path, body in requests:
        headers = {"Authorization": contained.authorization}
        if method == "PUT":
            headers["Content-Type"] = OCI_MANIFEST
        resp = raw_request(contained.port, method, path, body=body, headers=headers)
        _refused(resp, method, {"NAME_INVALID", "NOT_FOUND", "UNSUPPORTED"})
    with contained.client() as c:
        assert not [n for n in catalog(c) if not n.startswith("jail/")]


# -- digests ------------------------------------------------------------------------------

HOSTILE_DIGESTS = [
    "sha256:../..",
    "sha256:..%2F..%2F..%2F..%2Fcanary%2Fpwned",
    "sha256:%2e%2e",
    "sha256:..",
    "sha256:.",
    "..%2F..%2Fcanary",
    "sha256%3A..%2F..",
    "sha256:" + "0" * 62 + "%2F..",
    "sha256:" + "0" * 64 + "%00",
    "sha256:" + "0" * 64 + "%2F..%2F..",
    "sha512:" + "..%2F" * 32,
    "sha256:%30%30" + "0" * 62,  # an encoded valid digest is still just that digest
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_hostile_digests_are_refused(contained: RegistryProcess, digest: str) -> None:
    repo = "jail/repo"
    with contained.client() as c:
        push_blob(c, repo, b"present")
        location = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    query = quote(digest.replace("%2F", "/").replace("%00", "\x00"), safe="")
    requests = [
        ("GET", f"/v2/{repo}/blobs/{digest}", None),
        ("HEAD", f"/v2/{repo}/blobs/{digest}", None),
        ("DELETE", f"/v2/{repo}/blobs/{digest}", None),
        ("GET", f"/v2/{repo}/manifests/{digest}", None),
        ("PUT", f"/v2/{repo}/manifests/{digest}", b"{}"),
        ("DELETE", f"/v2/{repo}/manifests/{digest}", None),
        ("GET", f"/v2/{repo}/referrers/{digest}", None),
        ("POST", f"/v2/{repo}/blobs/uploads/?digest={query}", b"data"),
        ("POST", f"/v2/{repo}/blobs/uploads/?mount={query}&from={repo}", None),
        ("PUT", f"{location}?digest={query}", b"data"),
    ]
    codes = {
        "DIGEST_INVALID",
        "UNSUPPORTED",
        "NOT_FOUND",
        "BLOB_UNKNOWN",
        "MANIFEST_UNKNOWN",
        "MANIFEST_INVALID",
    }
    for method, path, body in requests:
        resp = raw_request(
            contained.port,
            method,
            path,
            body=body,
            headers={"Authorization": contained.authorization},
        )
        if digest.startswith("sha256:%30%30") and resp.status in (200, 201, 202):
            continue  # the valid (unknown) digest in disguise: an ordinary answer
        _refused(resp, method, codes)


# -- upload ids ---------------------------------------------------------------------------


def test_hostile_upload_ids_are_refused_and_never_alias_a_real_upload(
    contained: RegistryProcess,
) -> None:
    repo = "jail/uploads"
    with contained.client() as c:
        real = c.post(f"/v2/{repo}/blobs/uploads/").headers["docker-upload-uuid"]
    hostile = [
        "..",
        ".",
        "%2e%2e",
        "..%2F..%2Fx",
        "..%2F..%2F..%2Fcanary%2Fpwned",
        "..%5C..%5Ccanary%5Cpwned",
        f"{real}%2F..%2F..%2F..%2Fcanary%2Fpwned",
        f"{real}%00",
        real.upper(),
        real.replace("-", ""),
        "{" + real + "}",
        f"urn:uuid:{real}",
        "x" * 5000,
    ]
    codes = {
        "BLOB_UPLOAD_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "NOT_FOUND",
        "UNSUPPORTED",
        "DIGEST_INVALID",
    }
    for upload in hostile:
        base = f"/v2/{repo}/blobs/uploads/{upload}"
        for method, path, body, headers in [
            ("GET", base, None, {}),
            ("PATCH", base, b"evil", {"Content-Type": "application/octet-stream"}),
            ("PATCH", base, b"evil", {"Content-Range": "0-3"}),
            ("PUT", f"{base}?digest={sha256(b'evil')}", b"evil", {}),
            ("DELETE", base, None, {}),
        ]:
            headers["Authorization"] = contained.authorization
            resp = raw_request(contained.port, method, path, body=body, headers=headers)
            _refused(resp, method, codes)
    with contained.client() as c:
        status = c.get(f"/v2/{repo}/blobs/uploads/{real}")
        assert status.status_code == 204 and status.headers["range"] == "0-0"  # untouched
        r = c.put(
            f"/v2/{repo}/blobs/uploads/{real}", params={"digest": sha256(b"ok")}, content=b"ok"
        )
        assert r.status_code == 201, r.text
        assert_oci_error(c.get(f"/v2/{repo}/blobs/{sha256(b'evil')}"), 404, {"BLOB_UNKNOWN"})


# -- reads never write --------------------------------------------------------------------


def test_reads_never_create_a_repository_or_a_file(
    any_registry: RegistryProcess, client: httpx.Client
) -> None:
    source = unique_repo("readonly")
    image = make_image()
    push_image(client, source, image, "latest")
    foreign_upload = client.post(f"/v2/{source}/blobs/uploads/").headers["docker-upload-uuid"]
    layer = sha256(image.layers[0])

    before_catalog = catalog(client)
    before_files = files_under(any_registry.data_dir / "storage")

    ghost_in_known_ns = f"{source.split('/')[0]}/ghost-{uuid.uuid4().hex[:8]}"
    ghost_in_new_ns = f"ghost{uuid.uuid4().hex[:8]}/repo/deep"
    for ghost in (ghost_in_known_ns, ghost_in_new_ns):
        reads = [
            client.head(f"/v2/{ghost}/blobs/{layer}"),  # exists elsewhere (Zot#511)
            client.get(f"/v2/{ghost}/blobs/{layer}"),
            client.get(f"/v2/{ghost}/blobs/{layer}", headers={"Range": "bytes=0-10"}),
            client.head(f"/v2/{ghost}/blobs/{ZERO}"),
            client.head(f"/v2/{ghost}/manifests/latest"),
            client.get(f"/v2/{ghost}/manifests/latest"),
            client.head(f"/v2/{ghost}/manifests/{image.digest}"),  # exists elsewhere
            client.get(f"/v2/{ghost}/manifests/{image.digest}"),
            client.get(f"/v2/{ghost}/tags/list"),
            client.get(f"/v2/{ghost}/tags/list", params={"n": "10", "last": "a"}),
            client.get(f"/v2/{ghost}/blobs/uploads/{foreign_upload}"),  # another repo's
            client.get(f"/v2/{ghost}/blobs/uploads/{uuid.uuid4()}"),
        ]
        for r in reads:
            assert r.status_code == 404, (r.request.method, r.request.url, r.status_code)
            assert_oci_error(r, 404)
        assert client.get(f"/v2/{ghost}/referrers/{image.digest}").json()["manifests"] == []
        # failed writes on what is not there create nothing either
        for r in (
            client.delete(f"/v2/{ghost}/manifests/latest"),
            client.delete(f"/v2/{ghost}/manifests/{image.digest}"),
            client.delete(f"/v2/{ghost}/blobs/{layer}"),
            client.patch(f"/v2/{ghost}/blobs/uploads/{foreign_upload}", content=b"evil"),
            client.put(
                f"/v2/{ghost}/blobs/uploads/{foreign_upload}",
                params={"digest": sha256(b"evil")},
                content=b"evil",
            ),
            client.delete(f"/v2/{ghost}/blobs/uploads/{foreign_upload}"),
            client.put(
                f"/v2/{ghost}/manifests/latest",
                content=image.manifest,
                headers={"Content-Type": OCI_MANIFEST},
            ),  # its blobs are not in the ghost: refused, and rolled back
        ):
            assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.text)
            assert_oci_error(r)
        assert_oci_error(client.get(f"/v2/{ghost}/tags/list"), 404, {"NAME_UNKNOWN"})

    # a mount from a repository that does not exist falls back to an upload, and does
    # not create the source
    ghost_source = f"ghost{uuid.uuid4().hex[:8]}/src"
    r = client.post(f"/v2/{source}/blobs/uploads/", params={"mount": layer, "from": ghost_source})
    assert r.status_code == 202, r.text
    client.delete(r.headers["location"])

    assert catalog(client) == before_catalog
    assert files_under(any_registry.data_dir / "storage") == before_files
    # the other repository's upload was not touched by any of it
    status = client.get(f"/v2/{source}/blobs/uploads/{foreign_upload}")
    assert status.status_code == 204 and status.headers["range"] == "0-0"
    assert client.get(f"/v2/{source}/blobs/{layer}").content == image.layers[0]
