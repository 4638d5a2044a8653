"""skopeo (containers/image) against the registry: single and multi-arch copies in and
out, byte-identical digests, registry-to-registry copies (cross-repository mount),
Docker v2s2 conversion, tags and delete. skopeo is logged in (the ``skopeo`` fixture)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import BaseImage, OciLayout, Skopeo
from .helpers import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryHTTP,
    RegistryLike,
    manifest_blobs,
    read_digestfile,
    sha256_digest,
)

pytestmark = pytest.mark.e2e


@dataclass
class PushedMulti:
    name: str
    tag: str
    ref: str  # docker://host/name:tag
    digest: str


@pytest.fixture(scope="module")
def multi_in_registry(
    registry: RegistryLike,
    skopeo: Skopeo,
    oci_layout: OciLayout,
    tmp_path_factory: pytest.TempPathFactory,
) -> PushedMulti:
    """The amd64+arm64 OCI index from the local layout, pushed with ``skopeo copy --all``."""
    host = registry.host
    name, tag = "e2e/skopeo-multi", "v1"
    digestfile = tmp_path_factory.mktemp("skopeo-multi") / "digest"
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        oci_layout.ref("multi"),
        f"docker://{host}/{name}:{tag}",
    )
    return PushedMulti(
        name=name, tag=tag, ref=f"docker://{host}/{name}:{tag}", digest=read_digestfile(digestfile)
    )


def assert_layout_has_image(layout: OciLayout, original: OciLayout, manifest_digest: str) -> None:
    """``layout`` holds the manifest and all its blobs, byte-identical to ``original``."""
    manifest_bytes = layout.blob(manifest_digest)
    assert manifest_bytes == original.blob(manifest_digest)
    for desc in manifest_blobs(json.loads(manifest_bytes)):
        assert layout.blob(desc["digest"]) == original.blob(desc["digest"])


def test_copy_single_image_in_and_out(
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    oci_layout: OciLayout,
    tmp_path: Path,
) -> None:
    host = registry.host
    name = "e2e/skopeo-single"
    src = oci_layout.descriptor("busybox")
    digestfile = tmp_path / "digest"
    skopeo(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        oci_layout.ref("busybox"),
        f"docker://{host}/{name}:v1",
    )
    assert read_digestfile(digestfile) == src["digest"]

    # The registry serves the very same bytes, with the right media type and digest header.
    served = registry_http.get_manifest(name, "v1")
    assert served.body == oci_layout.blob(src["digest"])
    assert served.content_type == OCI_MANIFEST
    assert served.digest_header == src["digest"]
    assert registry_http.manifest_digest(name, "v1") == src["digest"]
    for desc in manifest_blobs(served.json()):
        assert registry_http.get_blob(name, desc["digest"]) == oci_layout.blob(desc["digest"])

    # skopeo's own view of it: raw manifest by tag and by digest, and the image config.
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}:v1")
    assert sha256_digest(raw.encode()) == src["digest"]
    raw_by_digest = skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}@{src['digest']}"
    )
    assert raw_by_digest == raw
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/{name}:v1"))
    assert info["Digest"] == src["digest"]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Labels"] == {"org.example.e2e": "cargohold"}

    # Second tag on the same content, then list-tags.
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{host}/{name}:v1",
        f"docker://{host}/{name}:latest",
    )
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{name}"))
    assert tags["Repository"] == f"{host}/{name}"
    assert sorted(tags["Tags"]) == ["latest", "v1"]
    assert registry_http.manifest_digest(name, "latest") == src["digest"]

    # Back out into a fresh OCI layout: identical manifest and blobs.
    back = OciLayout(tmp_path / "back")
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{host}/{name}:v1",
        f"oci:{back.path}:v1",
    )
    assert back.descriptor("v1")["digest"] == src["digest"]
    assert_layout_has_image(back, oci_layout, src["digest"])

    # and into a plain directory: the manifest file is the exact bytes that were pushed
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{host}/{name}:v1",
        f"dir:{tmp_path / 'dir'}",
    )
    assert sha256_digest((tmp_path / "dir" / "manifest.json").read_bytes()) == src["digest"]


def test_multiarch_index_in_and_out(
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    oci_layout: OciLayout,
    multi_in_registry: PushedMulti,
    tmp_path: Path,
) -> None:
    host = registry.host
    index_desc = oci_layout.descriptor("multi")
    original_index = oci_layout.json_blob(index_desc["digest"])
    assert multi_in_registry.digest == index_desc["digest"]

    served = registry_http.get_manifest(multi_in_registry.name, multi_in_registry.tag)
    assert served.content_type == OCI_INDEX
    assert served.body == oci_layout.blob(index_desc["digest"]), "index not stored byte for byte"
    for child in original_index["manifests"]:
        by_digest = registry_http.get_manifest(multi_in_registry.name, child["digest"])
        assert by_digest.body == oci_layout.blob(child["digest"])
        assert by_digest.content_type == OCI_MANIFEST

    # Platform selection through the index.
    arm = json.loads(
        skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64", multi_in_registry.ref)
    )
    amd = json.loads(
        skopeo("inspect", "--tls-verify=false", "--override-arch", "amd64", multi_in_registry.ref)
    )
    by_arch = {c["platform"]["architecture"]: c["digest"] for c in original_index["manifests"]}
    for info, arch in ((arm, "arm64"), (amd, "amd64")):
        assert info["Digest"] == index_desc["digest"]  # skopeo reports the digest of the index
        assert info["Architecture"] == arch
        child = oci_layout.json_blob(by_arch[arch])
        assert info["Layers"] == [layer["digest"] for layer in child["layers"]]
    assert len(arm["Layers"]) == len(amd["Layers"]) + 1

    # All the way back: same index digest, same child manifests, same blobs.
    back = OciLayout(tmp_path / "multi-back")
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        multi_in_registry.ref,
        f"oci:{back.path}:multi",
    )
    assert back.descriptor("multi")["digest"] == index_desc["digest"]
    assert back.blob(index_desc["digest"]) == oci_layout.blob(index_desc["digest"])
    for child in original_index["manifests"]:
        assert_layout_has_image(back, oci_layout, child["digest"])

    # Pulled by digest too.
    back2 = OciLayout(tmp_path / "multi-back-digest")
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{host}/{multi_in_registry.name}@{index_desc['digest']}",
        f"oci:{back2.path}:multi",
    )
    assert back2.descriptor("multi")["digest"] == index_desc["digest"]


def test_copy_between_repositories(
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    oci_layout: OciLayout,
    multi_in_registry: PushedMulti,
    tmp_path: Path,
) -> None:
    """registry -> registry copy of the index into another repository. skopeo knows the
    blobs already live in e2e/skopeo-multi and asks for a cross-repository mount."""
    host = registry.host
    target = "e2e/skopeo-mirror"
    digestfile = tmp_path / "digest"
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        multi_in_registry.ref,
        f"docker://{host}/{target}:copied",
    )
    assert read_digestfile(digestfile) == multi_in_registry.digest
    assert registry_http.manifest_digest(target, "copied") == multi_in_registry.digest
    index = registry_http.get_manifest(target, "copied")
    assert index.body == oci_layout.blob(multi_in_registry.digest)
    # Every child manifest and every blob is reachable through the *target* repository.
    for child in index.json()["manifests"]:
        manifest = registry_http.get_manifest(target, child["digest"])
        assert manifest.body == oci_layout.blob(child["digest"])
        for desc in manifest_blobs(manifest.json()):
            head = registry_http.head_blob(target, desc["digest"])
            assert head.status_code == 200, registry_http.describe(head)
            assert int(head.headers["Content-Length"]) == desc["size"]
            assert registry_http.get_blob(target, desc["digest"]) == oci_layout.blob(desc["digest"])


def test_cross_repository_mount_protocol(
    registry_http: RegistryHTTP, multi_in_registry: PushedMulti, oci_layout: OciLayout
) -> None:
    """The request skopeo/docker send for a mount:
    POST /v2/<target>/blobs/uploads/?mount=<digest>&from=<source repo>."""
    child = oci_layout.json_blob(multi_in_registry.digest)["manifests"][0]
    layer = oci_layout.json_blob(child["digest"])["layers"][0]
    target = "e2e/mount-target"
    assert registry_http.head_blob(target, layer["digest"]).status_code == 404
    resp = registry_http.session.post(
        f"{registry_http.url}/v2/{target}/blobs/uploads/",
        params={"mount": layer["digest"], "from": multi_in_registry.name},
        timeout=30,
    )
    assert resp.status_code == 201, registry_http.describe(resp)
    assert resp.headers.get("Docker-Content-Digest") == layer["digest"]
    assert resp.headers.get("Location"), registry_http.describe(resp)
    assert registry_http.get_blob(target, layer["digest"]) == oci_layout.blob(layer["digest"])


def test_convert_to_docker_v2s2(
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    base_image: BaseImage,
    oci_layout: OciLayout,
    tmp_path: Path,
) -> None:
    host = registry.host
    target = "e2e/skopeo-v2s2"
    digestfile = tmp_path / "digest"
    skopeo(
        "copy",
        "--quiet",
        "--format",
        "v2s2",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        f"docker://{base_image.ref}",
        f"docker://{host}/{target}:v2s2",
    )
    digest = read_digestfile(digestfile)
    served = registry_http.get_manifest(target, "v2s2")
    assert served.digest == digest
    assert served.content_type == DOCKER_MANIFEST
    manifest = served.json()
    assert manifest["mediaType"] == DOCKER_MANIFEST
    original = oci_layout.json_blob(oci_layout.descriptor("busybox")["digest"])
    # gzip layers are reused as is: same digests, now under Docker media types
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in original["layers"]
    ]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    # pulled back, the Docker manifest comes out byte-identical
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{host}/{target}:v2s2",
        f"dir:{tmp_path / 'dir'}",
    )
    assert (tmp_path / "dir" / "manifest.json").read_bytes() == served.body


def test_delete_manifest(
    registry: RegistryLike, registry_http: RegistryHTTP, skopeo: Skopeo, oci_layout: OciLayout
) -> None:
    host = registry.host
    name = "e2e/skopeo-delete"
    skopeo(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        oci_layout.ref("busybox"),
        f"docker://{host}/{name}:gone",
    )
    digest = registry_http.manifest_digest(name, "gone")
    skopeo("delete", "--tls-verify=false", f"docker://{host}/{name}:gone")
    assert registry_http.head_manifest(name, digest).status_code == 404
    assert registry_http.head_manifest(name, "gone").status_code == 404
    failed = skopeo.run(
        "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}:gone", check=False
    )
    assert failed.returncode != 0
    assert "manifest unknown" in failed.stderr, failed.stderr
