"""Pure rules: names, digests, manifest parsing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cargohold.domain import mediatypes as mt
from cargohold.domain.digests import digest_of, parse_digest
from cargohold.domain.durations import DurationError, parse_duration
from cargohold.domain.errors import DigestInvalid, ManifestInvalid, NameInvalid, Unsupported
from cargohold.domain.manifests import parse_manifest
from cargohold.domain.names import check_creatable, is_tag, parse_repository


@pytest.mark.parametrize("name", ["a/b", "team/app/web", "a-b/c__d", "a.b/c-d-e", "x/" + "y" * 200])
def test_valid_repository_names(name: str) -> None:
    assert parse_repository(name).value == name


@pytest.mark.parametrize(
    "name",
    [
        "single",
        "A/b",
        "a//b",
        "a/b/",
        "/a/b",
        "a/../b",
        "a/.b",
        "a/b-",
        "a/" + "b" * 260,
        "/".join(["a"] * 17),
        "a/b\u0430",
    ],
)
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        parse_repository(name)


def test_namespace_is_the_first_component() -> None:
    assert parse_repository("team/app/web").namespace == "team"


def test_tags() -> None:
    assert is_tag("v1.0_rc-1") and is_tag("_x") and is_tag("a" * 128)
    assert not is_tag("a" * 129) and not is_tag("-x") and not is_tag(".x") and not is_tag("")


def test_digests() -> None:
    d = digest_of(b"")
    assert str(d) == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert parse_digest(str(d)) == d
    assert parse_digest("sha512:" + "a" * 128).algorithm == "sha512"
    for bad in ["sha256:abc", "sha256:" + "A" * 64, "sha256", "sha256:../..", "x" * 300]:
        with pytest.raises(DigestInvalid):
            parse_digest(bad)
    with pytest.raises(Unsupported):
        parse_digest("md5:" + "a" * 32)


def _doc(**fields: object) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


CONFIG = {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2}


def test_image_manifest_and_artifact_type() -> None:
    parsed = parse_manifest(_doc(mediaType=mt.OCI_MANIFEST, config=CONFIG, layers=[]), None)
    assert parsed.media_type == mt.OCI_MANIFEST
    assert parsed.effective_artifact_type == mt.OCI_CONFIG
    parsed = parse_manifest(
        _doc(config=CONFIG, layers=[], artifactType="application/x.sig"), mt.OCI_MANIFEST
    )
    assert parsed.effective_artifact_type == "application/x.sig"


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{", mt.OCI_MANIFEST, "JSON"),
        (b"[]", mt.OCI_MANIFEST, "object"),
        (_doc(config=CONFIG), None, "no mediaType"),
        (_doc(mediaType=mt.OCI_INDEX, config=CONFIG), mt.OCI_MANIFEST, "does not match"),
        (_doc(config=CONFIG, manifests=[]), mt.OCI_MANIFEST, "both"),
        (json.dumps({"schemaVersion": 1, "name": "a/b"}).encode(), None, "schema 1"),
        (b'{"schemaVersion":2,"schemaVersion":2}', mt.OCI_MANIFEST, "duplicate"),
        (_doc(config={**CONFIG, "size": -1}), mt.OCI_MANIFEST, "size"),
        (_doc(config=CONFIG, layers=[CONFIG] * 5000), mt.OCI_MANIFEST, "more than"),
        (_doc(manifests=[]), "application/vnd.example+json", "unsupported"),
    ],
)
def test_invalid_manifests(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(body, content_type)
    assert reason in info.value.message


@pytest.mark.parametrize("text", ["999999999w", "999999999d", "99999999h", "3651d", "0s"])
def test_durations_out_of_range_are_duration_errors(text: str) -> None:
    """Not an OverflowError from timedelta: callers catch DurationError only."""
    with pytest.raises(DurationError, match="at most 10 years"):
        parse_duration(text)


def test_durations() -> None:
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration(" 90m ") == timedelta(minutes=90)
    assert parse_duration("3650d") == timedelta(days=3650)


@pytest.mark.parametrize("name", ["a/tag", "a/b/logs", "a/manifest/x", "a/permissions"])
def test_reserved_components_cannot_be_created(name: str) -> None:
    parsed = parse_repository(name)  # a read of it is fine: it simply does not exist
    with pytest.raises(NameInvalid, match="is reserved"):
        check_creatable(parsed)


@pytest.mark.parametrize("name", ["tag/app", "logs/logs-x", "a/tags", "a/my-tag/b"])
def test_names_near_reserved_words_can_be_created(name: str) -> None:
    assert check_creatable(parse_repository(name)).value == name
