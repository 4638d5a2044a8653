"""Content and type confusion (SECURITY.md 1.7, CVE-2021-41190).

A document must have one reading: never both an index and an image, its mediaType must
agree with the Content-Type it was pushed with, duplicate keys and non-JSON constants are
refused, digests are verified against the bytes, descriptor sizes against the blobs and
child manifests, and what is stored is exactly what was pushed. Every refusal stores
nothing. On both databases."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

from tests.security.helpers import assert_oci_error
from tests.support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    descriptor,
    make_image,
    make_index,
    push_blob,
    push_image,
    sha256,
    unique_repo,
)


def _put(
    client: httpx.Client, repo: str, ref: str, body: bytes, ctype: str | None
) -> httpx.Response:
    headers = {"Content-Type": ctype} if ctype else {}
    return client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers=headers)


def _assert_not_stored(client: httpx.Client, repo: str, body: bytes, tag: str) -> None:
    for ref in (sha256(body), tag):
        r = client.get(f"/v2/{repo}/manifests/{ref}")
        assert_oci_error(r, 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


@pytest.fixture
def pushed(client: httpx.Client) -> tuple[str, Image]:
    """A repository with one image (its blobs and manifest) in it."""
    repo = unique_repo("confusion")
    image = make_image(layers=2)
    push_image(client, repo, image, "base")
    return repo, image


def _doc(image: Image) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(image.manifest)
    return doc


# -- one document, one reading ------------------------------------------------------------


@pytest.mark.parametrize("ctype", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, None])
@pytest.mark.parametrize("declared", [OCI_MANIFEST, OCI_INDEX, None])
def test_a_document_with_both_manifests_and_layers_is_invalid(
    client: httpx.Client, pushed: tuple[str, Image], ctype: str | None, declared: str | None
) -> None:
    repo, image = pushed
    doc = _doc(image)
    doc["manifests"] = [descriptor(OCI_MANIFEST, image.manifest)]
    if declared is None:
        del doc["mediaType"]
    else:
        doc["mediaType"] = declared
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "ambiguous", body, ctype), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "ambiguous")


def test_an_index_with_a_config_is_invalid(client: httpx.Client, pushed: tuple[str, Image]) -> None:
    repo, image = pushed
    doc = json.loads(make_index([image]))
    doc["config"] = _doc(image)["config"]
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "idxcfg", body, OCI_INDEX), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "idxcfg")


@pytest.mark.parametrize(
    ("declared", "ctype"),
    [
        (OCI_MANIFEST, OCI_INDEX),
        (OCI_INDEX, OCI_MANIFEST),
        (OCI_MANIFEST, DOCKER_MANIFEST),
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (OCI_MANIFEST, "application/octet-stream"),
        (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ],
)
def test_media_type_in_the_body_must_match_the_content_type(
    client: httpx.Client, pushed: tuple[str, Image], declared: str, ctype: str
) -> None:
    repo, image = pushed
    doc = _doc(image)
    doc["mediaType"] = declared
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "mismatch", body, ctype), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "mismatch")


def test_media_type_is_served_as_it_was_agreed(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    """Matching types are accepted (parameters and case aside), and the stored type is what
    every later GET answers with, whatever the client accepts."""
    repo, image = pushed
    doc = _doc(image)
    doc["annotations"] = {"v": "params"}
    body = json.dumps(doc).encode()
    r = _put(
        client, repo, "params", body, "Application/VND.oci.image.manifest.v1+json; charset=utf-8"
    )
    assert r.status_code == 201, r.text
    for accept in (OCI_INDEX, DOCKER_MANIFEST, "*/*"):
        got = client.get(f"/v2/{repo}/manifests/params", headers={"Accept": accept})
        assert got.status_code == 200
        assert got.headers["content-type"] == OCI_MANIFEST
        assert got.content == body

    # no mediaType in the body: the Content-Type decides, and is then fixed
    del doc["mediaType"]
    doc["annotations"] = {"v": "header"}
    body = json.dumps(doc).encode()
    assert _put(client, repo, "header", body, OCI_MANIFEST).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/header").headers["content-type"] == OCI_MANIFEST
    # ... and neither saying anything is not a manifest
    doc["annotations"] = {"v": "neither"}
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "neither", body, None), 400, {"MANIFEST_INVALID"})


@pytest.mark.parametrize(
    "body",
    [
        b'{"schemaVersion": 1, "name": "a/b", "tag": "x", "fsLayers": []}',
        b"[]",
        b'"a string"',
        b"null",
        b"",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        os.urandom(512),
    ],
    ids=["schema1", "array", "string", "null", "empty", "bom", "utf16", "random"],
)
def test_what_is_not_a_v2_manifest_object_is_invalid(
    client: httpx.Client, pushed: tuple[str, Image], body: bytes
) -> None:
    repo, _ = pushed
    assert_oci_error(_put(client, repo, "notjson", body, OCI_MANIFEST), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "notjson")


# -- parsers must agree: duplicate keys, non-JSON constants, odd strings ------------------


# (anchor, text spliced in, after the anchor rather than before it)
SPLICES = [
    ('"mediaType": "' + OCI_MANIFEST, f'"mediaType": "{OCI_INDEX}", ', False),
    ('"schemaVersion": 2', '"schemaVersion": 1, ', False),
    ('"config": {', '"size": 1, ', True),
    ('"layers": [', '"layers": [], ', False),
    ('"digest": "', '"digest": "sha256:' + "0" * 64 + '", ', False),
]


@pytest.mark.parametrize(
    "splice", SPLICES, ids=["mediaType", "schemaVersion", "config.size", "layers", "digest"]
)
def test_duplicate_json_keys_are_invalid(
    client: httpx.Client, pushed: tuple[str, Image], splice: tuple[str, str, bool]
) -> None:
    """Go's encoding/json keeps the last of two equal keys, other parsers the first: a
    document with a key twice means different things to different readers."""
    repo, image = pushed
    text = json.dumps(_doc(image))
    anchor, extra, after = splice
    at = text.index(anchor) + (len(anchor) if after else 0)
    body = (text[:at] + extra + text[at:]).encode()
    assert json.loads(body) is not None  # still JSON, just with a key twice
    assert_oci_error(_put(client, repo, "dup", body, OCI_MANIFEST), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "dup")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_invalid(
    client: httpx.Client, pushed: tuple[str, Image], constant: str
) -> None:
    repo, image = pushed
    text = json.dumps(_doc(image))
    body = (text[:-1] + f', "x": {constant}}}').encode()
    assert_oci_error(_put(client, repo, "nan", body, OCI_MANIFEST), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "nan")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("artifactType", "a\u0000b"),
        ("artifactType", "\ud800"),
        ("artifactType", "text/plain\n"),
        ("config.mediaType", "x\u0000"),
        ("config.mediaType", "\udfff"),
        ("layers.mediaType", "\u0007"),
    ],
)
def test_type_strings_the_databases_cannot_hold_are_invalid(
    client: httpx.Client, pushed: tuple[str, Image], field: str, value: str
) -> None:
    """Media and artifact types are printable; NUL and lone surrogates would not even fit
    in PostgreSQL text or SQLite's UTF-8."""
    repo, image = pushed
    doc = _doc(image)
    if field == "artifactType":
        doc["artifactType"] = value
    elif field == "config.mediaType":
        doc["config"]["mediaType"] = value
    else:
        doc["layers"][0]["mediaType"] = value
    body = json.dumps(doc).encode()  # ensure_ascii: the odd characters travel as \\u escapes
    assert_oci_error(_put(client, repo, "odd", body, OCI_MANIFEST), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "odd")


def test_odd_strings_in_annotations_are_kept_byte_for_byte(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    doc = _doc(image)
    doc["annotations"] = {"nul": "a\u0000b", "lone": "\ud800", "emoji": "\U0001f433"}
    body = json.dumps(doc).encode()
    assert _put(client, repo, "annotated", body, OCI_MANIFEST).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/annotated").content == body


# -- digests ------------------------------------------------------------------------------


def test_a_manifest_pushed_under_the_wrong_digest_is_refused(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    doc = _doc(image)
    doc["annotations"] = {"k": "v"}
    body = json.dumps(doc).encode()
    for wrong in (image.digest, sha256(body + b" "), "sha512:" + "a" * 128):
        r = _put(client, repo, wrong, body, OCI_MANIFEST)
        assert_oci_error(r, 400, {"DIGEST_INVALID"})
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{sha256(body)}"), 404, {"MANIFEST_UNKNOWN"})
    # the manifest that really has the digest used above is untouched
    assert client.get(f"/v2/{repo}/manifests/{image.digest}").content == image.manifest
    # the right digest works
    r = _put(client, repo, sha256(body), body, OCI_MANIFEST)
    assert r.status_code == 201 and r.headers["docker-content-digest"] == sha256(body)


def test_a_blob_pushed_under_the_wrong_digest_is_refused(client: httpx.Client) -> None:
    repo = unique_repo("confusion")
    data, other = os.urandom(1000), os.urandom(1000)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(other)}, content=data)
    assert_oci_error(r, 400, {"DIGEST_INVALID"})
    loc = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    r = client.patch(loc, content=data)
    assert r.status_code == 202
    assert_oci_error(client.put(r.headers["location"], params={"digest": sha256(other)}), 400)
    for digest in (sha256(data), sha256(other)):
        assert_oci_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, {"BLOB_UNKNOWN"})


def test_a_manifest_is_not_a_blob_and_a_blob_is_not_a_manifest(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    config_digest = sha256(image.config)
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{config_digest}"), 404, {"MANIFEST_UNKNOWN"})
    # a valid manifest's bytes pushed as a blob stay a blob: not readable as a manifest
    doc = _doc(image)
    doc["annotations"] = {"as": "blob"}
    body = json.dumps(doc).encode()
    push_blob(client, repo, body)
    assert_oci_error(client.get(f"/v2/{repo}/manifests/{sha256(body)}"), 404, {"MANIFEST_UNKNOWN"})


# -- descriptors must match what they point at --------------------------------------------


@pytest.mark.parametrize(
    ("where", "delta"), [("config", 1), ("config", -1), ("layer", 1), ("layer", -5)]
)
def test_descriptor_size_must_match_the_blob(
    client: httpx.Client, pushed: tuple[str, Image], where: str, delta: int
) -> None:
    repo, image = pushed
    doc = _doc(image)
    target = doc["config"] if where == "config" else doc["layers"][1]
    target["size"] += delta
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "size", body, OCI_MANIFEST), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "size")


def test_index_child_size_must_match_the_child(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    doc = json.loads(make_index([image]))
    doc["manifests"][0]["size"] += 1
    body = json.dumps(doc).encode()
    assert_oci_error(_put(client, repo, "idxsize", body, OCI_INDEX), 400, {"MANIFEST_INVALID"})
    _assert_not_stored(client, repo, body, "idxsize")


def test_an_index_referencing_missing_children_is_refused(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    elsewhere = unique_repo("confusion")
    other = make_image()
    push_image(client, elsewhere, other, "x")  # exists, but in another repository
    never = make_image()  # never pushed anywhere
    for children in ([image, never], [image, other], [never]):
        body = make_index(children)
        r = _put(client, repo, "idx", body, OCI_INDEX)
        assert_oci_error(r, 400, {"MANIFEST_BLOB_UNKNOWN"})
        _assert_not_stored(client, repo, body, "idx")
    # with the child present it works
    body = make_index([image])
    assert _put(client, repo, "idx", body, OCI_INDEX).status_code == 201


def test_a_manifest_referencing_a_blob_of_another_repository_is_refused(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    elsewhere = unique_repo("confusion")
    layer = os.urandom(100)
    push_blob(client, elsewhere, layer)
    doc = _doc(image)
    doc["layers"].append(descriptor(OCI_LAYER, layer))
    body = json.dumps(doc).encode()
    assert_oci_error(
        _put(client, repo, "foreign", body, OCI_MANIFEST), 400, {"MANIFEST_BLOB_UNKNOWN"}
    )
    _assert_not_stored(client, repo, body, "foreign")


# -- exact bytes --------------------------------------------------------------------------

NON_CANONICAL = [
    lambda d: json.dumps(d, indent=7).encode() + b"\n\n",
    lambda d: json.dumps(dict(reversed(list(d.items())))).encode(),
    lambda d: json.dumps(d, separators=(",", ":")).encode(),
    lambda d: b"  \t\r\n" + json.dumps(d).encode() + b"  \r\n",
    lambda d: json.dumps(d).replace('"layers"', '"\\u006cayers"').encode(),
    lambda d: json.dumps(
        {**d, "annotations": {"z": "\u00e9", "a": "\u4e2d"}}, ensure_ascii=False
    ).encode(),
    lambda d: (
        json.dumps({**d, "x-unknown": {"kept": [1, 2.50, 1e2, -0]}}).replace("2.5", "2.50").encode()
    ),
]


@pytest.mark.parametrize(
    "render",
    NON_CANONICAL,
    ids=["indent", "reordered", "compact", "whitespace", "escape", "utf8", "numbers"],
)
def test_non_canonical_json_is_stored_byte_for_byte(
    client: httpx.Client, pushed: tuple[str, Image], render: Any
) -> None:
    repo, image = pushed
    body: bytes = render(_doc(image))
    digest = sha256(body)
    r = _put(client, repo, "exact", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"].endswith(f"/manifests/{digest}")
    for ref in ("exact", digest):
        got = client.get(f"/v2/{repo}/manifests/{ref}")
        assert got.content == body
        assert got.headers["docker-content-digest"] == digest
        assert sha256(got.content) == digest
        head = client.head(f"/v2/{repo}/manifests/{ref}")
        assert int(head.headers["content-length"]) == len(body)
        assert head.headers["docker-content-digest"] == digest


def test_the_same_manifest_under_two_renderings_is_two_manifests(
    client: httpx.Client, pushed: tuple[str, Image]
) -> None:
    repo, image = pushed
    doc = _doc(image)
    a, b = json.dumps(doc).encode(), json.dumps(doc, indent=2).encode()
    assert _put(client, repo, "a", a, OCI_MANIFEST).status_code == 201
    assert _put(client, repo, "b", b, OCI_MANIFEST).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/a").content == a
    assert client.get(f"/v2/{repo}/manifests/b").content == b
    assert sha256(a) != sha256(b)
