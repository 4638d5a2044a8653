"""ORAS (the PyPI `oras` Python SDK) against the registry: artifact push/pull
(monolithic and chunked uploads), tags, and referrers: an artifact whose `subject` is
another one, found through GET /v2/<name>/referrers/<digest> (raw HTTP; oras-py has no
referrers call), with and without the artifactType filter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import oras.client
import oras.oci
import pytest

from .helpers import OCI_INDEX, OCI_MANIFEST, RegistryHTTP, RegistryLike, file_digest, sha256_digest

pytestmark = pytest.mark.e2e

SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"


@pytest.fixture
def oras_client(
    registry: RegistryLike, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> oras.client.OrasClient:
    """An ORAS client over plain HTTP, logged in as the superuser, with HOME/DOCKER_CONFIG
    in tmp (oras-py reads and writes ~/.docker/config.json) and the cwd in tmp (it only
    pushes files below cwd). oras-py's login() only stores the credentials; the registry
    is not contacted.

    It answers each 401 with HTTP Basic (``auth_backend="basic"``), which the registry
    accepts on /v2. oras-py's token backend cannot push to a registry that uses the token
    flow: it keeps the first token it gets (the pull-only one from the blob HEAD) and
    resends it after the 401 that asks for push (oras-py issue #187); only a 403 makes it
    fetch a new token. test_pull_through_token_flow covers the token backend on pulls."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True, auth_backend="basic")
    client.session.trust_env = False
    config = home / ".docker" / "config.json"
    user, password = registry.admin_auth
    client.login(user, password, hostname=registry.host, tls_verify=False, config_path=str(config))
    assert registry.host in json.loads(config.read_text())["auths"]
    return client


def _subject_from_head(registry_http: RegistryHTTP, name: str, ref: str) -> oras.oci.Subject:
    """Subject.from_manifest() re-serialises the JSON (wrong digest), so use HEAD."""
    head = registry_http.head_manifest(name, ref, accept=[OCI_MANIFEST])
    assert head.status_code == 200, registry_http.describe(head)
    assert head.headers["Content-Type"] == OCI_MANIFEST
    return oras.oci.Subject(
        mediaType=OCI_MANIFEST,
        digest=head.headers["Docker-Content-Digest"],
        size=int(head.headers["Content-Length"]),
    )


def test_push_and_pull_artifacts(
    oras_client: oras.client.OrasClient,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    tmp_path: Path,
) -> None:
    host = registry.host
    name = "e2e/oras-artifact"
    Path("notes.txt").write_text("an ORAS artifact pushed to cargohold\n")
    Path("big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    # a different blob for the chunked push: an existing blob is skipped (HEAD 200)
    Path("chunks.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 777))

    resp = oras_client.push(
        target=f"{host}/{name}:v1",
        files=["notes.txt:text/plain", "big.bin"],
        manifest_annotations={"org.example.note": "monolithic"},
        quiet=True,
    )
    assert resp.status_code == 201
    digest = resp.headers["Docker-Content-Digest"]
    assert registry_http.manifest_digest(name, "v1") == digest
    # chunked upload (PATCH with Content-Range, 1 MiB at a time)
    resp = oras_client.push(
        target=f"{host}/{name}:chunked",
        files=["chunks.bin"],
        do_chunked=True,
        chunk_size=1024 * 1024,
        quiet=True,
    )
    assert resp.status_code == 201

    assert sorted(oras_client.get_tags(f"{host}/{name}")) == ["chunked", "v1"]
    manifest = oras_client.get_manifest(f"{host}/{name}:v1")
    assert manifest["annotations"] == {"org.example.note": "monolithic"}
    layers = {
        layer["annotations"]["org.opencontainers.image.title"]: layer
        for layer in manifest["layers"]
    }
    assert layers["notes.txt"]["mediaType"] == "text/plain"
    assert layers["big.bin"]["digest"] == file_digest(Path("big.bin"))
    assert layers["big.bin"]["size"] == Path("big.bin").stat().st_size

    for tag in ("v1", "chunked"):
        out = tmp_path / f"pulled-{tag}"
        files = oras_client.pull(target=f"{host}/{name}:{tag}", outdir=str(out))
        assert {Path(f).name for f in files} == (
            {"notes.txt", "big.bin"} if tag == "v1" else {"chunks.bin"}
        )
    assert (tmp_path / "pulled-v1" / "big.bin").read_bytes() == Path("big.bin").read_bytes()
    assert (tmp_path / "pulled-chunked" / "chunks.bin").read_bytes() == Path(
        "chunks.bin"
    ).read_bytes()
    assert (tmp_path / "pulled-v1" / "notes.txt").read_bytes() == Path("notes.txt").read_bytes()

    # a Range request on the big blob (what resumable downloaders send)
    big = layers["big.bin"]["digest"]
    resp = registry_http.session.get(
        f"{registry_http.url}/v2/{name}/blobs/{big}",
        headers={"Range": "bytes=1048576-1048675"},
        timeout=30,
    )
    assert resp.status_code == 206, registry_http.describe(resp)
    assert resp.content == Path("big.bin").read_bytes()[1048576:1048676]

    assert oras_client.delete_tag(f"{host}/{name}", "chunked")
    assert oras_client.get_tags(f"{host}/{name}") == ["v1"]


def test_referrers(
    oras_client: oras.client.OrasClient, registry: RegistryLike, registry_http: RegistryHTTP
) -> None:
    host = registry.host
    name = "e2e/oras-referrers"
    Path("app.txt").write_text("the subject artifact\n")
    resp = oras_client.push(target=f"{host}/{name}:v1", files=["app.txt:text/plain"], quiet=True)
    assert resp.status_code == 201
    subject = _subject_from_head(registry_http, name, "v1")
    assert subject.digest == resp.headers["Docker-Content-Digest"]

    # nothing refers to it yet: an empty index, not a 404
    empty = registry_http.referrers(name, subject.digest)
    assert empty.status_code == 200, registry_http.describe(empty)
    assert empty.headers["Content-Type"].split(";")[0] == OCI_INDEX
    assert empty.json()["schemaVersion"] == 2 and empty.json()["manifests"] == []

    # two referrers with different artifact types (oras-py: artifactType = config mediaType)
    Path("sig.json").write_text('{"signature": "not really"}\n')
    Path("sig-config.json").write_text("{}")
    Path("sbom.json").write_text('{"packages": ["busybox"]}\n')
    Path("sbom-config.json").write_text('{"sbom": true}')
    pushed = {}
    for tag, blob, config, artifact_type in (
        ("sig", "sig.json", "sig-config.json", SIGNATURE_TYPE),
        ("sbom", "sbom.json", "sbom-config.json", SBOM_TYPE),
    ):
        resp = oras_client.push(
            target=f"{host}/{name}:{tag}",
            files=[f"{blob}:{artifact_type}"],
            manifest_config=f"{config}:{artifact_type}",
            subject=subject,
            manifest_annotations={"org.example.kind": tag},
            quiet=True,
        )
        assert resp.status_code == 201
        # OCI 1.1: a registry that processes `subject` says so with OCI-Subject
        assert resp.headers.get("OCI-Subject") == subject.digest, dict(resp.headers)
        pushed[tag] = resp.headers["Docker-Content-Digest"]
        referrer = registry_http.get_manifest(name, pushed[tag])
        assert referrer.json()["subject"]["digest"] == subject.digest
        assert referrer.json()["config"]["mediaType"] == artifact_type

    resp = registry_http.referrers(name, subject.digest)
    assert resp.status_code == 200, registry_http.describe(resp)
    assert resp.headers["Content-Type"].split(";")[0] == OCI_INDEX
    index = resp.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == set(pushed.values()), index
    for tag, artifact_type in (("sig", SIGNATURE_TYPE), ("sbom", SBOM_TYPE)):
        desc = by_digest[pushed[tag]]
        body = registry_http.get_manifest(name, pushed[tag]).body
        assert desc["mediaType"] == OCI_MANIFEST
        assert desc["size"] == len(body) and desc["digest"] == sha256_digest(body)
        assert desc["artifactType"] == artifact_type
        assert desc["annotations"]["org.example.kind"] == tag

    # artifactType filter
    resp = registry_http.referrers(name, subject.digest, artifact_type=SIGNATURE_TYPE)
    assert resp.status_code == 200, registry_http.describe(resp)
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType", dict(resp.headers)
    assert [d["digest"] for d in resp.json()["manifests"]] == [pushed["sig"]]
    resp = registry_http.referrers(
        name, subject.digest, artifact_type="application/vnd.example.none"
    )
    assert resp.status_code == 200, registry_http.describe(resp)
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    assert resp.json()["manifests"] == []

    # the referrers are not confused with another subject
    other = registry_http.referrers(name, pushed["sig"])
    assert other.status_code == 200 and other.json()["manifests"] == []

    # deleting a referrer (oras: HEAD the tag, DELETE /manifests/<digest>) drops it from the list
    assert oras_client.delete_tag(f"{host}/{name}", "sbom")
    assert registry_http.head_manifest(name, pushed["sbom"]).status_code == 404
    resp = registry_http.referrers(name, subject.digest)
    assert resp.status_code == 200, registry_http.describe(resp)
    assert [d["digest"] for d in resp.json()["manifests"]] == [pushed["sig"]]


def test_pull_through_token_flow(
    oras_client: oras.client.OrasClient, registry: RegistryLike, tmp_path: Path
) -> None:
    """oras-py's default (token) backend: on the Bearer challenge it asks GET /v2/auth
    with Basic credentials and the challenge's scope, then sends the token."""
    host = registry.host
    name = "e2e/oras-token"
    Path("payload.txt").write_text("pulled with a registry token\n")
    resp = oras_client.push(target=f"{host}/{name}:v1", files=["payload.txt"], quiet=True)
    assert resp.status_code == 201

    token_client = oras.client.OrasClient(hostname=host, insecure=True)  # auth_backend="token"
    token_client.session.trust_env = False
    token_client.login(
        *registry.admin_auth,
        hostname=host,
        tls_verify=False,
        config_path=str(tmp_path / "token-client.json"),
    )
    assert token_client.get_tags(f"{host}/{name}") == ["v1"]
    assert token_client.auth.token, "the tags were listed with a registry token"
    files = token_client.pull(target=f"{host}/{name}:v1", outdir=str(tmp_path / "pulled"))
    assert [Path(f).read_text() for f in files] == ["pulled with a registry token\n"]

    # with no credentials oras-py gets an anonymous token, which grants nothing here
    anonymous = oras.client.OrasClient(hostname=host, insecure=True)
    anonymous.session.trust_env = False
    with pytest.raises(ValueError, match=r"tags/list: Unauthorized"):
        anonymous.get_tags(f"{host}/{name}")
