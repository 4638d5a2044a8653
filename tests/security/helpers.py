"""Checks shared by the security and crash-safety tests.

* `assert_oci_error`: a 4xx answer carrying the OCI error JSON.
* `storage_problems`: every file in a server's data directory is one cargohold may write,
  and every blob file holds exactly the bytes its name (the digest) says.
* `raw_request`: an HTTP request whose path reaches the server byte for byte (httpx
  normalises `..` segments, which would hide what a hostile client can send).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.oci import ALL_CODES

OCI_CODES = ALL_CODES  # every code a 4xx of this server may carry

HEX_LENGTH = {"sha256": 64, "sha512": 128}
DB_FILES = {"cargohold.db", "cargohold.db-wal", "cargohold.db-shm", "cargohold.db-journal"}
# Files outside storage/ that the server (or the test harness) keeps in a data directory.
OTHER_FILES = {
    "server.log",
    "run/cache-gen",
    "run/auth-gen",
    "run/secret-key",
    "run/gc.lock",
    "initial-admin-password",
}


def error_codes_of(status: int, body: bytes, content_type: str | None) -> list[str]:
    """The codes of an OCI error answer; fails the test if it is not one."""
    assert 400 <= status < 500, f"expected a 4xx, got {status}: {body[:300]!r}"
    assert (content_type or "").startswith("application/json"), (status, content_type, body[:200])
    doc = httpx.Response(status, content=body).json()
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], doc
    codes = []
    for err in doc["errors"]:
        assert isinstance(err, dict) and isinstance(err.get("code"), str), doc
        assert isinstance(err.get("message"), str), doc
        assert err["code"] in OCI_CODES, doc
        codes.append(err["code"])
    return codes


def assert_oci_error(
    resp: httpx.Response, status: int | set[int] | None = None, codes: set[str] | None = None
) -> str:
    """A 4xx (one of `status`) whose body is the OCI error JSON with a code in `codes`.

    HEAD answers have no body: only the status is checked. Returns the first code."""
    if status is not None:
        wanted = {status} if isinstance(status, int) else status
        assert resp.status_code in wanted, (resp.status_code, wanted, resp.text[:300])
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.request.method == "HEAD":
        assert resp.content == b""
        return ""
    found = error_codes_of(resp.status_code, resp.content, resp.headers.get("content-type"))
    if codes is not None:
        assert found[0] in codes, (found, codes, resp.text[:300])
    return found[0]


def assert_no_server_error(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.request.method, resp.request.url, resp.text[:500])


# -- what may be on disk ------------------------------------------------------------------


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


def storage_problems(data_dir: Path, *, verify_blobs: bool = True) -> list[str]:
    """What in `data_dir` is not a file cargohold may write, or not what its name says.

    Allowed: storage/blobs/<algorithm>/<first two hex>/<hex> whose content hashes to
    <hex> (and `.<hex>.<pid>.tmp` beside it), storage/uploads/<canonical uuid>, the
    SQLite database files, the server log and the cache counter. No symlinks anywhere."""
    problems: list[str] = []
    # storage/health holds GET /health/endtoend's sentinel.
    allowed_dirs = {"", "storage", "storage/blobs", "storage/uploads", "storage/health", "run"}
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir).as_posix()
        if path.is_symlink():
            problems.append(f"symlink {rel}")
            continue
        parts = rel.split("/")
        if parts[:2] == ["run", "metrics"]:
            # Prometheus' per-process sample files: run/metrics/<pid of serve>/<kind>_<pid>.db
            ok = len(parts) == 2 or (len(parts) >= 3 and parts[2].isdigit())
            if len(parts) == 4:
                ok = (
                    ok and path.is_file() and re.fullmatch(r"[a-z_]+_\d+\.db", parts[3]) is not None
                )
            if not ok or len(parts) > 4:
                problems.append(f"unexpected metrics file {rel}")
            continue
        if path.is_dir():
            ok = rel in allowed_dirs or (
                parts[:2] == ["storage", "blobs"]
                and len(parts) in (3, 4)
                and parts[2] in HEX_LENGTH
                and (len(parts) == 3 or re.fullmatch(r"[0-9a-f]{2}", parts[3]) is not None)
            )
            if not ok:
                problems.append(f"unexpected directory {rel}")
            continue
        if rel in DB_FILES or rel in OTHER_FILES or rel == "storage/health/sentinel":
            continue
        if parts[:2] == ["storage", "uploads"] and len(parts) == 3:
            try:
                canonical = str(uuid.UUID(parts[2])) == parts[2]
            except ValueError:
                canonical = False
            if not canonical:
                problems.append(f"upload file with a non-uuid name {rel}")
            continue
        if parts[:2] == ["storage", "blobs"] and len(parts) == 5:
            algorithm, prefix, hexname = parts[2], parts[3], parts[4]
            if re.fullmatch(rf"\.{prefix}[0-9a-f]+\.\d+\.tmp", hexname):
                continue  # a small blob's write-then-rename file, left by a crash
            if (
                algorithm not in HEX_LENGTH
                or re.fullmatch(rf"[0-9a-f]{{{HEX_LENGTH[algorithm]}}}", hexname) is None
                or hexname[:2] != prefix
            ):
                problems.append(f"blob file with a bad name {rel}")
            elif verify_blobs and _file_digest(path, algorithm) != hexname:
                problems.append(f"blob file whose bytes do not match its digest {rel}")
            continue
        problems.append(f"unexpected file {rel}")
    return problems


def files_under(root: Path) -> dict[str, int]:
    """Relative path -> size of every file below `root`."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


# -- HTTP ---------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def codes(self) -> list[str]:
        return error_codes_of(self.status, self.body, self.headers.get("content-type"))


def raw_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """Send `path` exactly as given (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def catalog(client: httpx.Client) -> list[str]:
    """Every repository, following the Link header page by page."""
    names: list[str] = []
    url: str | None = "/v2/_catalog?n=1000"
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        names += r.json()["repositories"]
        link = r.headers.get("link")
        url = link.split(">", 1)[0].lstrip("<") if link else None
    return names
