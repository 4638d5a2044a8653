"""Property-based tests over real HTTP against the SQLite server.

Hypothesis generates repository names, digests, Range and Content-Range headers, upload
sequences (random chunkings, out-of-order and repeated chunks, cut-off connections) and
manifest bodies (random JSON, random bytes, mutated valid manifests). Invariants:

* never a 5xx; every error is a 4xx carrying the OCI error JSON;
* names, digests and ranges are accepted exactly when the grammar says so;
* a blob is visible only after a successful finish, with exactly the uploaded bytes;
  after a failed or abandoned upload neither the partial nor the intended digest is;
* an accepted manifest reads back byte for byte and everything it names is present;
  a rejected one is not stored;
* (storage_guard) nothing is written outside storage/, and every blob file holds
  exactly its digest's bytes.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.security.helpers import assert_no_server_error, assert_oci_error
from tests.support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    push_blob,
    sha256,
)
from tests.support.server import RegistryProcess

pytestmark = pytest.mark.usefixtures("storage_guard")

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- oracles: the grammars, written independently of the server's code -------------------

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


def name_is_valid(name: str) -> bool:
    return (
        len(name) <= 255 and _NAME_RE.fullmatch(name) is not None and 2 <= name.count("/") + 1 <= 16
    )


def url_path(text: str) -> str:
    """Percent-encode everything but [a-z0-9_-/], so the server decodes exactly `text`
    (and no client normalises `.` or `..` segments away)."""
    return quote(text, safe="/").replace(".", "%2E")


def url_segment(text: str) -> str:
    return quote(text, safe="").replace(".", "%2E")


# -- strategies ---------------------------------------------------------------------------

COMPONENTS = st.from_regex(_COMPONENT, fullmatch=True).filter(lambda s: len(s) <= 40)
VALID_NAMES = st.lists(COMPONENTS, min_size=2, max_size=5).map("/".join)
NAME_TOKENS = [
    *"abz09._-/",
    "..",
    "/",
    "//",
    "%",
    "%2e",
    "%2f",
    "?",
    "#",
    " ",
    "\\",
    ":",
    "@",
    "A",
    "\x00",
    "\n",
    "\u0430",
    "\uff41",
    "\u2024",
    "\u2215",
    "\uff0e",
    "\u0131",
    "é",
]
NASTY_NAMES = st.lists(st.sampled_from(NAME_TOKENS), min_size=0, max_size=30).map("".join)


@st.composite
def mutated_names(draw: st.DrawFn) -> str:
    name = draw(VALID_NAMES)
    at = draw(st.integers(0, len(name)))
    return name[:at] + draw(st.sampled_from(NAME_TOKENS)) + name[at:]


NAMES = st.one_of(VALID_NAMES, NASTY_NAMES, mutated_names(), st.text(max_size=60))

HEX = "0123456789abcdef"
DIGESTS = st.one_of(
    st.builds(lambda h: "sha256:" + h, st.text(HEX, min_size=64, max_size=64)),
    st.builds(lambda h: "sha512:" + h, st.text(HEX, min_size=128, max_size=128)),
    st.builds(
        lambda a, sep, e: a + sep + e,
        st.sampled_from(["sha256", "sha512", "SHA256", "md5", "sha384", "sha256+b64", "", "a.b"]),
        st.sampled_from([":", "", "::", ":/"]),
        st.one_of(
            st.text(HEX + "ABCDEF", max_size=140),
            st.lists(
                st.sampled_from(["..", "/", "%2e", "%2f", "a", "0", "=", "_"]), max_size=20
            ).map("".join),
        ),
    ),
    st.text(max_size=80),
)


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=12,
    )


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranged_blob(http: httpx.Client) -> tuple[str, bytes]:
    repo = f"sec-props/ranges-{uuid.uuid4().hex[:8]}"
    data = random.Random(7).randbytes(1000)
    push_blob(http, repo, data)
    return repo, data


@pytest.fixture(scope="module")
def image_base(http: httpx.Client) -> dict[str, Any]:
    """A repository holding a config, two layers, a manifest and an index over it."""
    repo = f"sec-props/manifests-{uuid.uuid4().hex[:8]}"
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layers = [random.Random(i).randbytes(300 + i) for i in range(2)]
    for blob in (config, *layers):
        push_blob(http, repo, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, b) for b in layers],
    }
    body = json.dumps(manifest).encode()
    r = http.put(f"/v2/{repo}/manifests/base", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, body, platform={"architecture": "amd64", "os": "linux"})
        ],
    }
    return {
        "repo": repo,
        "manifest": manifest,
        "index": index,
        "accepted": {sha256(body)},
        "blobs": {sha256(b): len(b) for b in (config, *layers)},
    }


# -- names --------------------------------------------------------------------------------


@PROPERTY
@given(name=NAMES)
@example(name="../x")
@example(name="a/../../etc")
@example(name="%2e%2e/x")
@example(name="\uff41/b")
@example(name="/".join(["a"] * 255))
@example(name="a" * 256 + "/b")
def test_names_are_accepted_exactly_when_the_grammar_says_so(http: httpx.Client, name: str) -> None:
    base = f"/v2/{url_path(name)}"
    zero = "sha256:" + "0" * 64
    upload = str(uuid.uuid4())
    before = http.get(f"{base}/tags/list")
    responses = [
        before,
        http.head(f"{base}/manifests/latest"),
        http.get(f"{base}/manifests/{zero}"),
        http.get(f"{base}/blobs/{zero}"),
        http.head(f"{base}/blobs/{zero}"),
        http.get(f"{base}/blobs/uploads/{upload}"),
        http.get(f"{base}/referrers/{zero}"),
    ]
    for r in responses:
        assert_no_server_error(r)
    if name_is_valid(name):
        assert before.status_code in (200, 404)
        if before.status_code == 404:
            assert_oci_error(before, 404, {"NAME_UNKNOWN"})
        for r in responses[1:]:
            assert r.status_code in (200, 404), (r.request.url, r.status_code, r.text)
        assert_oci_error(responses[3], 404, {"BLOB_UNKNOWN"})
        assert_oci_error(responses[5], 404, {"BLOB_UPLOAD_UNKNOWN"})
        if before.status_code == 404:  # reads never create a repository
            assert_oci_error(http.get(f"{base}/tags/list"), 404, {"NAME_UNKNOWN"})
    else:
        refused = {"NAME_INVALID", "NOT_FOUND", "UNSUPPORTED"}  # 405: a path of another route
        for r in responses:
            assert_oci_error(r, {400, 404, 405}, refused)
        # a write is refused the same way
        assert_oci_error(http.post(f"{base}/blobs/uploads/"), {400, 404, 405}, refused)


# -- digests ------------------------------------------------------------------------------


@PROPERTY
@given(digest=DIGESTS)
@example(digest="sha256:../..")
@example(digest="sha256:" + "A" * 64)
@example(digest="sha256:" + "a" * 65)
@example(digest="sha256:" + "a" * 10_000)
def test_digests_are_accepted_exactly_when_the_grammar_says_so(
    http: httpx.Client, ranged_blob: tuple[str, bytes], digest: str
) -> None:
    repo, _ = ranged_blob
    seg = url_segment(digest)
    blob_get = http.get(f"/v2/{repo}/blobs/{seg}")
    blob_head = http.head(f"/v2/{repo}/blobs/{seg}")
    manifest_get = http.get(f"/v2/{repo}/manifests/{seg}")
    for r in (blob_get, blob_head, manifest_get):
        assert_no_server_error(r)
    if _DIGEST_RE.fullmatch(digest):
        assert_oci_error(blob_get, 404, {"BLOB_UNKNOWN"})
        assert_oci_error(blob_head, 404)
        assert_oci_error(manifest_get, 404, {"MANIFEST_UNKNOWN"})
    else:
        bad = {"DIGEST_INVALID", "UNSUPPORTED", "NOT_FOUND"}
        assert_oci_error(blob_get, {400, 404, 405}, bad)
        assert_oci_error(blob_head, {400, 404, 405})
        if ":" in digest:
            assert_oci_error(manifest_get, {400, 404, 405}, bad)
        elif _TAG_RE.fullmatch(digest):  # no colon: it is a tag reference
            assert_oci_error(manifest_get, 404, {"MANIFEST_UNKNOWN"})
        else:
            assert_oci_error(manifest_get, {400, 404}, {"TAG_INVALID", "NOT_FOUND"})

    # Finishing an upload with this digest: only the true digest of the bytes publishes.
    content = uuid.uuid4().bytes
    r = http.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = http.put(r.headers["Location"], params={"digest": digest}, content=content)
    assert_no_server_error(r)
    assert_oci_error(r, 400, {"DIGEST_INVALID", "UNSUPPORTED"})
    assert_oci_error(http.head(f"/v2/{repo}/blobs/{sha256(content)}"), 404)

    r = http.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert_no_server_error(r)
    if _DIGEST_RE.fullmatch(digest):
        assert r.status_code == 202, r.text  # unknown blob: no mount, an upload starts
    else:
        assert_oci_error(r, 400, {"DIGEST_INVALID", "UNSUPPORTED"})


# -- Range on blob GET --------------------------------------------------------------------

NUMBERS = st.one_of(st.none(), st.integers(0, 1100), st.integers(0, 10**25))
STRUCTURED_RANGES = st.builds(
    lambda unit, a, b: f"{unit}{'' if a is None else a}-{'' if b is None else b}",
    st.sampled_from(["bytes=", "bytes=", "bytes=", "bytes =", "items=", "bytes="]),
    NUMBERS,
    NUMBERS,
)
# printable ASCII; h11 refuses to send a header value with surrounding whitespace
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)
RANGES = st.one_of(
    STRUCTURED_RANGES,
    st.lists(STRUCTURED_RANGES, min_size=2, max_size=3).map(",".join),
    HEADER_TEXT,
)


def expected_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The RFC 9110 answer to a simple `bytes=a-b`: (start, end), "416", or None (serve
    the whole blob); "any" where the RFC leaves the server a choice."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if len(first) > 19 or len(last) > 19:
        return "any"
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        return "416" if n == 0 else (max(size - n, 0), size - 1)
    start = int(first)
    if last != "" and int(last) < start:
        return "any"  # an invalid range-spec: ignore it or refuse it
    if start >= size:
        return "416"
    return start, size - 1 if last == "" else min(int(last), size - 1)


@PROPERTY
@given(header=RANGES)
@example(header="bytes=0-")
@example(header="bytes=-0")
@example(header="bytes=999-999")
@example(header="bytes=1000-")
@example(header="bytes=-5000")
@example(header="bytes=0-99999999999999999999")
def test_range_requests_return_exactly_the_asked_bytes(
    http: httpx.Client, ranged_blob: tuple[str, bytes], header: str
) -> None:
    repo, data = ranged_blob
    url = f"/v2/{repo}/blobs/{sha256(data)}"
    r = http.get(url, headers={"Range": header})
    h = http.head(url, headers={"Range": header})
    assert_no_server_error(r)
    assert h.status_code == r.status_code
    assert r.status_code in (200, 206, 416), (r.status_code, r.text)
    if r.status_code == 200:
        assert r.content == data
    elif r.status_code == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers["content-range"])
        assert m is not None, r.headers
        start, end, total = (int(g) for g in m.groups())
        assert total == len(data) and 0 <= start <= end < len(data)
        assert r.content == data[start : end + 1]
        assert int(r.headers["content-length"]) == end - start + 1
    else:
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert_oci_error(r, 416)
    want = expected_range(header, len(data))
    if want == "416":
        assert r.status_code == 416
    elif want is None:
        assert r.status_code == 200
    elif isinstance(want, tuple):
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {want[0]}-{want[1]}/{len(data)}"


# -- uploads ------------------------------------------------------------------------------


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _cut_off_patch(
    registry: RegistryProcess, location: str, declared: int, sent: bytes, chunk: str | None
) -> None:
    """A PATCH that declares `declared` bytes but sends only `sent`, then hangs up."""
    assert len(sent) < declared
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {registry.host}\r\n"
        f"Authorization: {registry.authorization}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n"
        + (f"Content-Range: {chunk}\r\n" if chunk else "")
        + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as sock:
        sock.sendall(head.encode() + sent)
        time.sleep(0.01)


class UploadModel:
    """What the server must hold for one upload: the bytes it accepted, in order."""

    def __init__(self, http: httpx.Client, repo: str) -> None:
        self.http = http
        r = http.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        assert r.headers["range"] == "0-0"
        self.location = r.headers["location"]
        self.accepted = bytearray()

    def check_status(self) -> None:
        r = self.http.get(self.location)
        assert r.status_code == 204, r.text
        assert r.headers["range"] == _range_header(len(self.accepted))

    def patch(self, data: bytes, chunk: tuple[int, int] | None) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if chunk is not None:
            headers["Content-Range"] = f"{chunk[0]}-{chunk[1]}"
        r = self.http.patch(self.location, content=data, headers=headers)
        assert_no_server_error(r)
        in_order = chunk is None or chunk[0] == len(self.accepted)
        if in_order:
            assert r.status_code == 202, r.text
            self.accepted += data
            assert r.headers["range"] == _range_header(len(self.accepted))
            self.location = r.headers["location"]
        else:
            assert_oci_error(r, 416, {"BLOB_UPLOAD_INVALID"})
        self.check_status()


@PROPERTY
@given(seed=st.integers(0, 2**32), size=st.integers(0, 150_000), data=st.data())
@example(seed=1, size=0, data=None)  # the empty blob: data=None means "finish at once"
def test_upload_sequences_publish_exactly_the_uploaded_bytes(
    http: httpx.Client,
    registry: RegistryProcess,
    seed: int,
    size: int,
    data: st.DataObject | None,
) -> None:
    rng = random.Random(seed)
    blob = rng.randbytes(size)
    digest = sha256(blob)
    repo = f"sec-props/up-{uuid.uuid4().hex[:12]}"
    up = UploadModel(http, repo)

    steps = 0 if data is None else data.draw(st.integers(0, 8), label="steps")
    for _ in range(steps):
        assert data is not None
        have = len(up.accepted)
        rest = blob[have:]
        kind = data.draw(
            st.sampled_from(["chunk", "stream", "repeat", "ahead", "junk", "disconnect", "status"]),
            label="kind",
        )
        if kind in ("chunk", "stream") and rest:
            n = data.draw(st.integers(1, len(rest)), label="n")
            up.patch(rest[:n], (have, have + n - 1) if kind == "chunk" else None)
        elif kind == "repeat" and have:
            start = data.draw(st.integers(0, have - 1), label="start")
            end = data.draw(st.integers(start, have - 1), label="end")
            up.patch(bytes(up.accepted[start : end + 1]), (start, end))
        elif kind == "ahead":
            gap = data.draw(st.integers(1, 1000), label="gap")
            piece = rng.randbytes(data.draw(st.integers(1, 100), label="n"))
            up.patch(piece, (have + gap, have + gap + len(piece) - 1))
        elif kind == "junk":  # wrong bytes, in order: accepted, but the digest will differ
            up.patch(rng.randbytes(data.draw(st.integers(1, 50), label="n")), None)
        elif kind == "disconnect":
            declared = data.draw(st.integers(2, 200_000), label="declared")
            sent = rng.randbytes(data.draw(st.integers(0, declared - 1), label="sent"))
            chunk = f"{have}-{have + declared - 1}" if data.draw(st.booleans()) else None
            _cut_off_patch(registry, up.location, declared, sent, chunk)
            up.check_status()
        else:
            up.check_status()

    finish = (
        "as_is"
        if data is None
        else data.draw(
            st.sampled_from(["complete", "complete_chunked", "as_is", "abort", "abandon"]),
            label="finish",
        )
    )
    sent = b""
    if finish in ("complete", "complete_chunked"):
        sent = blob[len(up.accepted) :] if blob.startswith(bytes(up.accepted)) else b""
        headers = {"Content-Type": "application/octet-stream"}
        if finish == "complete_chunked" and sent:
            have = len(up.accepted)
            headers["Content-Range"] = f"{have}-{have + len(sent) - 1}"
        r = http.put(up.location, params={"digest": digest}, content=sent, headers=headers)
    elif finish == "as_is":
        r = http.put(up.location, params={"digest": digest})
    elif finish == "abort":
        r = http.delete(up.location)
        assert r.status_code == 204, r.text
    else:
        r = None
    if r is not None:
        assert_no_server_error(r)
    final = bytes(up.accepted) + sent
    event(f"finish={finish} complete={final == blob}")

    if finish in ("complete", "complete_chunked", "as_is") and final == blob:
        assert r is not None and r.status_code == 201, r and r.text
        assert r.headers["docker-content-digest"] == digest
        got = http.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status_code == 200 and got.content == blob
        assert int(http.head(f"/v2/{repo}/blobs/{digest}").headers["content-length"]) == size
        assert_oci_error(http.get(up.location), 404, {"BLOB_UPLOAD_UNKNOWN"})
        return
    if finish in ("complete", "complete_chunked", "as_is"):
        assert r is not None
        assert_oci_error(r, 400, {"DIGEST_INVALID"})
    if finish != "abandon":  # finished (badly) or cancelled: the session is gone
        assert_oci_error(http.get(up.location), 404, {"BLOB_UPLOAD_UNKNOWN"})
    # Never a partial blob: neither what was uploaded nor what was meant is visible.
    assert_oci_error(http.get(f"/v2/{repo}/blobs/{digest}"), 404, {"BLOB_UNKNOWN"})
    assert_oci_error(http.get(f"/v2/{repo}/blobs/{sha256(final)}"), 404, {"BLOB_UNKNOWN"})


@PROPERTY
@given(seed=st.integers(0, 2**32), size=st.integers(0, 50_000), damage=st.integers(0, 3))
def test_monolithic_uploads_publish_only_matching_bytes(
    http: httpx.Client, seed: int, size: int, damage: int
) -> None:
    rng = random.Random(seed)
    blob = rng.randbytes(size)
    body = blob
    if damage == 1 and size:
        at = rng.randrange(size)
        body = blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]
    elif damage == 2 and size:
        body = blob[: rng.randrange(size)]
    elif damage == 3:
        body = blob + b"\x00"
    repo = f"sec-props/mono-{uuid.uuid4().hex[:12]}"
    r = http.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": sha256(blob)},
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert_no_server_error(r)
    if body == blob:
        assert r.status_code == 201, r.text
        assert http.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob
    else:
        assert_oci_error(r, 400, {"DIGEST_INVALID"})
        assert_oci_error(http.get(f"/v2/{repo}/blobs/{sha256(blob)}"), 404, {"BLOB_UNKNOWN"})
        assert_oci_error(http.get(f"/v2/{repo}/blobs/{sha256(body)}"), 404, {"BLOB_UNKNOWN"})


CONTENT_RANGES = st.one_of(
    st.builds(
        lambda prefix, a, b, suffix: f"{prefix}{a}-{b}{suffix}",
        st.sampled_from(["", "", "bytes ", "bytes=", "items "]),
        st.one_of(st.integers(0, 300), st.integers(0, 10**25)),
        st.one_of(st.integers(0, 300), st.integers(0, 10**25)),
        st.sampled_from(["", "", "/*", "/300", "/x"]),
    ),
    HEADER_TEXT,
)


@PROPERTY
@given(
    seed=st.integers(0, 2**32),
    patches=st.lists(st.tuples(CONTENT_RANGES, st.integers(0, 120)), min_size=1, max_size=6),
)
def test_content_range_headers_never_corrupt_an_upload(
    http: httpx.Client, seed: int, patches: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    repo = f"sec-props/cr-{uuid.uuid4().hex[:12]}"
    up = UploadModel(http, repo)
    for header, n in patches:
        body = rng.randbytes(n)
        have = len(up.accepted)
        r = http.patch(up.location, content=body, headers={"Content-Range": header})
        assert_no_server_error(r)
        m = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?", header.strip())
        consistent = (
            m is not None
            and n > 0
            and int(m.group(1)) == have
            and int(m.group(2)) - int(m.group(1)) + 1 == n
            and len(m.group(2)) <= 19
        )
        # accepted exactly when the header describes these bytes at the upload's end
        assert (r.status_code == 202) == consistent, (header, n, have, r.status_code, r.text)
        if r.status_code == 202:
            up.accepted += body
        else:
            assert_oci_error(r, {400, 416}, {"BLOB_UPLOAD_INVALID", "SIZE_INVALID"})
        up.check_status()
    final = bytes(up.accepted)
    r = http.put(up.location, params={"digest": sha256(final)})
    assert r.status_code == 201, r.text
    assert http.get(f"/v2/{repo}/blobs/{sha256(final)}").content == final


def test_cut_off_patch_leaves_no_stray_bytes_in_the_published_blob(
    http: httpx.Client, registry: RegistryProcess
) -> None:
    """A PATCH cut off after more than the server's write buffer leaves bytes past the
    recorded size in the upload file; finishing without a body must not publish them."""
    repo = f"sec-props/cut-{uuid.uuid4().hex[:12]}"
    first = random.Random(3).randbytes(1000)
    up = UploadModel(http, repo)
    up.patch(first, (0, len(first) - 1))
    _cut_off_patch(registry, up.location, 4 << 20, random.Random(4).randbytes(3 << 20), None)
    time.sleep(0.3)  # let the server notice the hang-up and write what it buffered
    up.check_status()
    r = http.put(up.location, params={"digest": sha256(first)})
    assert r.status_code == 201, r.text
    assert http.get(f"/v2/{repo}/blobs/{sha256(first)}").content == first
    on_disk = registry.data_dir / "storage/blobs/sha256" / sha256(first)[7:9] / sha256(first)[7:]
    assert on_disk.read_bytes() == first


def test_an_empty_blob_can_be_pushed_both_ways(http: httpx.Client) -> None:
    repo = f"sec-props/empty-{uuid.uuid4().hex[:12]}"
    empty = sha256(b"")
    r = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": empty}, content=b"")
    assert r.status_code == 201, r.text
    r = http.post(f"/v2/{repo}-2/blobs/uploads/")
    r = http.put(r.headers["location"], params={"digest": empty})
    assert r.status_code == 201, r.text
    for name in (repo, f"{repo}-2"):
        got = http.get(f"/v2/{name}/blobs/{empty}")
        assert got.status_code == 200 and got.content == b""
        assert http.head(f"/v2/{name}/blobs/{empty}").headers["content-length"] == "0"


# -- manifests ----------------------------------------------------------------------------

CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_LIST,
            "application/json",
            "text/plain",
            OCI_MANIFEST + "; charset=utf-8",
            "",
        ]
    ),
    st.none(),
    HEADER_TEXT,
)


def _mutate(draw: st.DrawFn, doc: Any) -> Any:
    """Replace, delete or add one value somewhere in `doc`."""
    if isinstance(doc, dict) and doc and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc)))
        out = dict(doc)
        action = draw(st.sampled_from(["replace", "delete", "recurse", "recurse"]))
        if action == "delete":
            del out[key]
        elif action == "replace":
            out[key] = draw(
                st.one_of(
                    _json_values(),
                    st.sampled_from([OCI_INDEX, DOCKER_MANIFEST, "sha256:" + "0" * 64, -1, 2**63]),
                )
            )
        else:
            out[key] = _mutate(draw, doc[key])
        return out
    if isinstance(doc, list) and doc and draw(st.booleans()):
        i = draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(draw, doc[i]), *doc[i + 1 :]]
    if isinstance(doc, dict):
        return {
            **doc,
            draw(st.sampled_from(["manifests", "layers", "config", "subject", "x"])): draw(
                _json_values()
            ),
        }
    if isinstance(doc, int) and not isinstance(doc, bool):
        return doc + draw(st.sampled_from([-1, 1, 2**40]))
    return draw(_json_values())


@st.composite
def manifest_bodies(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    kind = draw(
        st.sampled_from(
            ["json", "bytes", "mutated", "mutated", "bytes-mutated", "dup"]
            + ["benign"] * 3
            + ["retarget"] * 2
        )
    )
    if kind == "json":
        return json.dumps(draw(_json_values())).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    doc = base[draw(st.sampled_from(["manifest", "index"]))]
    if kind == "benign":  # still a valid document: extra annotations or unknown fields
        extra = draw(
            st.one_of(
                st.builds(
                    lambda a: {"annotations": a},
                    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
                ),
                st.builds(lambda v: {"x-extra": v}, _json_values()),
            )
        )
        return json.dumps({**doc, **extra}, indent=draw(st.sampled_from([None, 1, 4]))).encode()
    if kind == "retarget":  # a descriptor pointing at another blob, with some size
        doc = json.loads(json.dumps(doc))
        target = doc["config"] if "config" in doc else doc["manifests"][0]
        digest, size = draw(st.sampled_from(sorted(base["blobs"].items())))
        target["digest"] = draw(st.sampled_from([digest, "sha256:" + "2" * 64]))
        target["size"] = size + draw(st.sampled_from([0, 0, 1, -1]))
        return json.dumps(doc).encode()
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            doc = _mutate(draw, doc)
        return json.dumps(doc, indent=draw(st.sampled_from([None, 1]))).encode()
    text = json.dumps(doc)
    if kind == "dup":  # a duplicate of some key, spliced in as text
        key = draw(st.sampled_from(["mediaType", "schemaVersion", "digest", "size", "config"]))
        value = json.dumps(draw(st.sampled_from([OCI_INDEX, 2, "sha256:" + "1" * 64, 7, {}])))
        at = text.index("{") + 1
        return (text[:at] + f'"{key}": {value}, ' + text[at:]).encode()
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at:]
            if not raw:
                break
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


@PROPERTY
@given(
    data=st.data(),
    content_type=st.sampled_from(["same", "same", "same", "other"]),
    by_digest=st.sampled_from([0, 0, 1, 2]),
)
def test_manifests_are_stored_exactly_or_not_at_all(
    http: httpx.Client,
    image_base: dict[str, Any],
    data: st.DataObject,
    content_type: str | None,
    by_digest: int,
) -> None:
    body = data.draw(manifest_bodies(image_base), label="body")
    if content_type == "other":
        content_type = data.draw(CONTENT_TYPES, label="content_type")
    elif content_type == "same":  # the type the body declares, if it declares one
        try:
            declared = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            declared = None
        content_type = declared if isinstance(declared, str) and declared.isprintable() else None
    repo = image_base["repo"]
    tag = f"t{uuid.uuid4().hex[:10]}"
    reference = [tag, sha256(body), "sha256:" + "1" * 64][by_digest]
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = http.put(f"/v2/{repo}/manifests/{reference}", content=body, headers=headers)
    assert_no_server_error(r)
    reason = r.json()["errors"][0]["message"][:40] if r.status_code >= 400 else ""
    event(f"status={r.status_code} {reason}")

    if r.status_code == 201:
        image_base["accepted"].add(sha256(body))
        assert r.headers["docker-content-digest"] == sha256(body)
        got = http.get(f"/v2/{repo}/manifests/{sha256(body)}")
        assert got.status_code == 200 and got.content == body
        assert got.headers["docker-content-digest"] == sha256(body)
        if by_digest == 0:
            assert http.get(f"/v2/{repo}/manifests/{tag}").content == body
        doc = json.loads(body)
        media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip().lower()
        assert got.headers["content-type"] == media_type
        # everything it names is present, with the size it claims
        named = [doc["config"], *(doc.get("layers") or [])] if "config" in doc else []
        for desc in named:
            if desc.get("urls"):
                continue
            assert image_base["blobs"].get(desc["digest"]) == desc["size"], desc
        for child in doc.get("manifests") or []:
            c = http.head(f"/v2/{repo}/manifests/{child['digest']}")
            assert c.status_code == 200 and int(c.headers["content-length"]) == child["size"]
        return
    assert_oci_error(
        r,
        {400, 404, 413},
        {
            "MANIFEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "DIGEST_INVALID",
            "SIZE_INVALID",
            "UNSUPPORTED",
        },
    )
    if sha256(body) not in image_base["accepted"]:
        assert_oci_error(http.get(f"/v2/{repo}/manifests/{sha256(body)}"), 404)
    assert_oci_error(http.get(f"/v2/{repo}/manifests/{tag}"), 404, {"MANIFEST_UNKNOWN"})
