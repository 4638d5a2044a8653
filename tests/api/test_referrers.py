"""The referrers API and the `subject` field of manifests."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

from tests.api.helpers import (
    artifact_manifest,
    assert_error,
    follow_pages,
    next_link,
    push_empty_config,
    put_manifest,
    subject_of,
)
from tests.support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    make_image,
    push_blob,
    push_image,
    sha256,
    unique_repo,
)

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
CUSTOM_CONFIG = "application/vnd.example.config.v1+json"


def push_referrer(
    client: httpx.Client,
    repo: str,
    subject: dict[str, Any],
    *,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    config_type: str | None = None,
    reference: str | None = None,
) -> tuple[bytes, httpx.Response]:
    if config_type:
        config_bytes = json.dumps({"nonce": os.urandom(8).hex()}).encode()
        push_blob(client, repo, config_bytes)
        config = descriptor(config_type, config_bytes)
    else:
        config = push_empty_config(client, repo)
    layer = os.urandom(24)
    push_blob(client, repo, layer)
    body = artifact_manifest(
        config=config,
        layers=[descriptor("application/octet-stream", layer)],
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
    )
    r = put_manifest(client, repo, reference or sha256(body), body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    return body, r


def referrers(client: httpx.Client, repo: str, digest: str, **params: str) -> httpx.Response:
    r = client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == OCI_INDEX
    body = r.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    return r


def by_digest(descriptors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["digest"]: d for d in descriptors}


@pytest.fixture
def subject() -> tuple[str, dict[str, Any]]:
    """A fresh repository and the descriptor of an image not pushed there (the registry
    must accept referrers first): (repo, subject descriptor)."""
    return unique_repo(), subject_of(make_image().manifest)


def test_referrers_lists_descriptors(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    push_image(client, repo, image, "v1")
    subj = subject_of(image.manifest)
    sbom, r1 = push_referrer(
        client, repo, subj, artifact_type=SBOM, annotations={"org.example.format": "spdx"}
    )
    sig, r2 = push_referrer(client, repo, subj, artifact_type=SIGNATURE)
    plain, r3 = push_referrer(client, repo, subj, config_type=CUSTOM_CONFIG)
    # An index with a subject and no artifactType.
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [],
            "subject": subj,
            "annotations": {"org.example.kind": "bundle"},
        }
    ).encode()
    r4 = put_manifest(client, repo, sha256(index), index, OCI_INDEX)
    assert r4.status_code == 201
    for r in (r1, r2, r3, r4):
        assert r.headers["OCI-Subject"] == subj["digest"]

    r = referrers(client, repo, subj["digest"])
    assert "OCI-Filters-Applied" not in r.headers
    assert next_link(r) is None
    got = by_digest(r.json()["manifests"])
    assert got == {
        sha256(sbom): {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(sbom),
            "size": len(sbom),
            "artifactType": SBOM,
            "annotations": {"org.example.format": "spdx"},
        },
        sha256(sig): {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(sig),
            "size": len(sig),
            "artifactType": SIGNATURE,
        },
        # No artifactType: the config media type stands in for it.
        sha256(plain): {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(plain),
            "size": len(plain),
            "artifactType": CUSTOM_CONFIG,
        },
        # An index without artifactType has none in its descriptor.
        sha256(index): {
            "mediaType": OCI_INDEX,
            "digest": sha256(index),
            "size": len(index),
            "annotations": {"org.example.kind": "bundle"},
        },
    }


def test_empty_config_artifact_without_artifact_type(
    client: httpx.Client, subject: tuple[str, dict[str, Any]]
) -> None:
    repo, subj = subject
    body, _ = push_referrer(client, repo, subj)
    (desc,) = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert desc["digest"] == sha256(body)
    assert desc["artifactType"] == "application/vnd.oci.empty.v1+json"


def test_artifact_type_filter(client: httpx.Client, subject: tuple[str, dict[str, Any]]) -> None:
    repo, subj = subject
    sbom1, _ = push_referrer(client, repo, subj, artifact_type=SBOM)
    sbom2, _ = push_referrer(client, repo, subj, artifact_type=SBOM)
    push_referrer(client, repo, subj, artifact_type=SIGNATURE)
    r = referrers(client, repo, subj["digest"], artifactType=SBOM)
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    got = r.json()["manifests"]
    assert {d["digest"] for d in got} == {sha256(sbom1), sha256(sbom2)}
    assert all(d["artifactType"] == SBOM for d in got)
    # A filter that matches nothing is still applied.
    r = referrers(client, repo, subj["digest"], artifactType="application/vnd.none")
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert r.json()["manifests"] == []


def test_unknown_subject_is_an_empty_index(
    client: httpx.Client, subject: tuple[str, dict[str, Any]]
) -> None:
    repo, _ = subject
    r = referrers(client, repo, sha256(b"no such manifest"))
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert "Link" not in r.headers


def test_unknown_repository_is_an_empty_index_not_404(client: httpx.Client) -> None:
    r = referrers(client, unique_repo(), sha256(b"anything"))
    assert r.json()["manifests"] == []


def test_subject_not_yet_pushed_is_accepted(client: httpx.Client) -> None:
    repo = unique_repo()
    image = make_image()
    subj = subject_of(image.manifest)
    body, r = push_referrer(client, repo, subj, artifact_type=SIGNATURE)
    assert r.headers["OCI-Subject"] == subj["digest"]
    got = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert [d["digest"] for d in got] == [sha256(body)]
    # The subject can come afterwards; the referrer stays listed.
    push_image(client, repo, image, "v1")
    got = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert [d["digest"] for d in got] == [sha256(body)]


def test_referrers_are_per_repository(
    client: httpx.Client, subject: tuple[str, dict[str, Any]]
) -> None:
    repo, subj = subject
    other = unique_repo()
    mine, _ = push_referrer(client, repo, subj, artifact_type=SBOM)
    theirs, _ = push_referrer(client, other, subj, artifact_type=SBOM)
    assert [d["digest"] for d in referrers(client, repo, subj["digest"]).json()["manifests"]] == [
        sha256(mine)
    ]
    assert [d["digest"] for d in referrers(client, other, subj["digest"]).json()["manifests"]] == [
        sha256(theirs)
    ]


def test_deleted_referrer_is_no_longer_listed(
    client: httpx.Client, subject: tuple[str, dict[str, Any]]
) -> None:
    repo, subj = subject
    keep, _ = push_referrer(client, repo, subj, artifact_type=SBOM)
    gone, _ = push_referrer(client, repo, subj, artifact_type=SBOM, reference="sig")
    assert client.delete(f"/v2/{repo}/manifests/{sha256(gone)}").status_code == 202
    got = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert [d["digest"] for d in got] == [sha256(keep)]


def test_deleting_the_tag_of_a_referrer_keeps_it_listed(
    client: httpx.Client, subject: tuple[str, dict[str, Any]]
) -> None:
    repo, subj = subject
    body, _ = push_referrer(client, repo, subj, artifact_type=SBOM, reference="sbom")
    assert client.delete(f"/v2/{repo}/manifests/sbom").status_code == 202
    got = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert [d["digest"] for d in got] == [sha256(body)]


def test_referrers_pagination(client: httpx.Client, subject: tuple[str, dict[str, Any]]) -> None:
    repo, subj = subject
    pushed = {sha256(push_referrer(client, repo, subj, artifact_type=SBOM)[0]) for _ in range(5)}
    full = referrers(client, repo, subj["digest"]).json()["manifests"]
    assert {d["digest"] for d in full} == pushed
    for params in ("n=2", f"n=2&artifactType={SBOM}"):
        pages = follow_pages(client, f"/v2/{repo}/referrers/{subj['digest']}?{params}", "manifests")
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [d for page in pages for d in page] == full


def test_manifest_without_subject_has_no_oci_subject_header(client: httpx.Client) -> None:
    repo = unique_repo()
    r = push_image(client, repo, make_image(), "v1")
    assert "OCI-Subject" not in r.headers


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "X" * 64, "latest"])
def test_invalid_digest_is_400(client: httpx.Client, digest: str) -> None:
    r = client.get(f"/v2/{unique_repo()}/referrers/{digest}")
    assert_error(r, 400, "DIGEST_INVALID")


def test_invalid_subject_descriptor_is_manifest_invalid(client: httpx.Client) -> None:
    repo = unique_repo()
    config = push_empty_config(client, repo)
    body = artifact_manifest(
        config=config, subject={"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 1}
    )
    assert_error(put_manifest(client, repo, "bad", body, OCI_MANIFEST), 400, "MANIFEST_INVALID")
