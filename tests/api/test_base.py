"""The API version check, and what unknown endpoints and wrong methods answer."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import API_VERSION, assert_error
from tests.support.oci import unique_repo


@pytest.mark.parametrize("path", ["/v2/", "/v2"])
def test_api_version_check(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {}


def test_api_version_check_head(client: httpx.Client) -> None:
    r = client.head("/v2/")
    assert r.status_code == 200
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
    assert r.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/v2/team/app/nonsense",
        "/v2/team/app/blobs",
        "/v2/team/app/manifests/",
        "/v2/team/app/tags/list/extra",
        "/v2/_catalog/extra",
    ],
)
def test_unknown_endpoint_is_404_with_json_error(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert_error(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v2/", "GET, HEAD"),
        ("POST", "/v2/_catalog", "GET"),
        ("PUT", "/v2/{repo}/tags/list", "GET"),
        ("POST", "/v2/{repo}/manifests/latest", "DELETE, GET, HEAD, PUT"),
        ("PUT", "/v2/{repo}/blobs/sha256:" + "a" * 64, "DELETE, GET, HEAD"),
        ("GET", "/v2/{repo}/blobs/uploads/", "POST"),
        ("POST", "/v2/{repo}/referrers/sha256:" + "a" * 64, "GET"),
    ],
)
def test_wrong_method_is_405_with_json_error(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path.format(repo=unique_repo()))
    assert_error(r, 405, "UNSUPPORTED")
    # RFC 9110 15.5.6: a 405 lists the methods the resource supports.
    assert r.headers["Allow"] == allow


def test_every_success_response_carries_the_api_version(client: httpx.Client) -> None:
    repo = unique_repo()
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
    r = client.get("/v2/_catalog", params={"n": 1})
    assert r.status_code == 200
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
