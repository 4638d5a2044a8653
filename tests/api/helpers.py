"""Small helpers shared by the protocol tests (on top of tests/support/oci.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.support.oci import OCI_EMPTY, OCI_MANIFEST, descriptor, push_blob, sha256
from tests.support.server import RegistryProcess

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
LINK_RE = re.compile(r'<(?P<url>[^>]+)>;\s*rel="next"')


def http_client(server: RegistryProcess) -> httpx.Client:
    """A client for a test server: plain HTTP, so no TLS context (verify=False)."""
    return server.client()


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is `status` with an OCI error body whose first error is `code`.

    The error tables of the coverage check in test_errors.py are read from these calls,
    so every error assertion in this suite goes through here with literal arguments."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers[API_VERSION[0]] == API_VERSION[1]
    assert resp.headers["Content-Type"].split(";")[0] == "application/json"
    body = resp.json()
    assert isinstance(body["errors"], list) and body["errors"], body
    error: dict[str, Any] = body["errors"][0]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"]
    assert "detail" in error
    return error


def start_upload(client: httpx.Client, repo: str) -> str:
    """POST an upload session; returns its Location."""
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    return location


def put_manifest(
    client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str | None
) -> httpx.Response:
    headers = {"Content-Type": media_type} if media_type else {}
    return client.put(f"/v2/{repo}/manifests/{reference}", content=body, headers=headers)


def push_empty_config(client: httpx.Client, repo: str) -> dict[str, Any]:
    """Push the `{}` blob; returns its descriptor with the empty media type."""
    assert push_blob(client, repo, EMPTY_JSON) == EMPTY_DIGEST
    return descriptor(OCI_EMPTY, EMPTY_JSON)


def artifact_manifest(
    *,
    config: dict[str, Any],
    layers: list[dict[str, Any]] | None = None,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config
    doc["layers"] = layers if layers is not None else []
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc).encode()


def subject_of(manifest: bytes, media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(manifest), "size": len(manifest)}


def next_link(resp: httpx.Response) -> str | None:
    """The target of a `Link: <...>; rel="next"` header, or None."""
    header = resp.headers.get("Link")
    if header is None:
        return None
    m = LINK_RE.fullmatch(header.strip())
    assert m is not None, f"malformed Link header: {header!r}"
    return m.group("url")


def follow_pages(client: httpx.Client, url: str, key: str) -> list[list[Any]]:
    """GET `url` and every `rel="next"` link after it; returns each page's `key` list."""
    pages: list[list[Any]] = []
    next_url: str | None = url
    while next_url is not None:
        assert len(pages) < 1000, "pagination does not end"
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        pages.append(r.json()[key])
        next_url = next_link(r)
    return pages
