"""The error table: every declared code is provoked over HTTP somewhere in this suite,
and error bodies have the shape the specification requires."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx

from cargohold.web.registry.errors import ERROR_TABLE
from tests.api.helpers import API_VERSION, assert_error
from tests.support.oci import EXTENSION_CODES, SPEC_CODES, sha256, unique_repo

HERE = Path(__file__).parent

# Authentication and rate limits arrive later; nothing can provoke these yet.
NOT_YET_REACHABLE = {(401, "UNAUTHORIZED"), (403, "DENIED"), (429, "TOOMANYREQUESTS")}


def asserted_errors() -> set[tuple[int, str]]:
    """(status, code) of every `assert_error(resp, <status>, "<code>")` in tests/api."""
    found: set[tuple[int, str]] = set()
    for path in HERE.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "assert_error"
                and len(node.args) == 3
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[2], ast.Constant)
            ):
                found.add((node.args[1].value, node.args[2].value))
    return found


def test_every_declared_error_is_provoked_by_some_test() -> None:
    declared = {(status, code) for _cls, status, code in ERROR_TABLE}
    missing = declared - NOT_YET_REACHABLE - asserted_errors()
    assert not missing, f"no test provokes {sorted(missing)}"


def test_declared_codes_are_spec_codes() -> None:
    codes = {code for _cls, _status, code in ERROR_TABLE}
    assert codes <= SPEC_CODES | EXTENSION_CODES, codes - SPEC_CODES - EXTENSION_CODES


def test_error_body_shape(client: httpx.Client) -> None:
    repo = unique_repo()
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.status_code == 404
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.json() == {
        "errors": [
            {
                "code": "NAME_UNKNOWN",
                "message": "repository name not known to registry",
                "detail": {"name": repo},
            }
        ]
    }


def test_error_codes_are_upper_case_identifiers(client: httpx.Client) -> None:
    repo = unique_repo()
    responses = [
        client.get(f"/v2/{repo}/blobs/sha256:{'0' * 64}"),
        client.get(f"/v2/{repo}/blobs/uploads/{'0' * 8}"),
        client.get(f"/v2/{repo}/referrers/nope"),
        client.get("/v2/Bad/Name/tags/list"),
        client.get("/v2/_catalog", params={"n": "x"}),
        client.put(f"/v2/{repo}/manifests/{sha256(b'')}", content=b"{}"),
    ]
    for r in responses:
        assert 400 <= r.status_code < 500
        for error in r.json()["errors"]:
            assert error["code"].replace("_", "").isalpha()
            assert error["code"].isupper()


def test_head_errors_have_no_body(client: httpx.Client) -> None:
    repo = unique_repo()
    for url in (f"/v2/{repo}/manifests/latest", f"/v2/{repo}/blobs/{sha256(b'')}"):
        r = client.head(url)
        assert r.status_code == 404
        assert r.content == b""
        assert r.headers[API_VERSION[0]] == API_VERSION[1]


def test_unsupported_digest_algorithm(client: httpx.Client) -> None:
    repo = unique_repo()
    error = assert_error(client.get(f"/v2/{repo}/manifests/sha1:{'a' * 40}"), 400, "UNSUPPORTED")
    assert "sha256" in error["message"]
