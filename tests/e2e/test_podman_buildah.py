"""podman and buildah (containers/image + containers/storage, vfs, runc) against the
registry: pull, push, build, and a multi-arch manifest list pushed with buildah."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import BaseImage, ContainersEnv
from .helpers import (
    HELLO_TEXT,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryHTTP,
    RegistryLike,
    manifest_blobs,
    read_digestfile,
)

pytestmark = pytest.mark.e2e

# buildah retries failed pushes/pulls 3 times by default; a registry bug must fail at once
NO_RETRY = "--retry=0"


def image_digest(cenv: ContainersEnv, ref: str) -> str:
    return cenv.podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip()


def repo_digests(cenv: ContainersEnv, ref: str) -> list[str]:
    return list(
        json.loads(cenv.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout)
    )


def test_podman_pull_push_pull(
    containers_env: ContainersEnv,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    base_image: BaseImage,
    tmp_path: Path,
) -> None:
    host = registry.host
    cenv = containers_env
    cenv.podman("pull", "--quiet", base_image.ref)
    assert image_digest(cenv, base_image.ref) == base_image.digest
    run = cenv.podman("run", "--rm", base_image.ref, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT

    target = f"{host}/e2e/podman-push:v1"
    cenv.podman("tag", base_image.ref, target)
    digestfile = tmp_path / "digest"
    cenv.podman("push", "--quiet", "--digestfile", str(digestfile), target)
    digest = read_digestfile(digestfile)
    served = registry_http.get_manifest("e2e/podman-push", "v1")
    assert served.digest == digest
    assert served.content_type == OCI_MANIFEST
    # vfs stores layers uncompressed and podman recompresses on push, so the layer
    # digests may change; the image config (and so its diff_ids) must not
    base_manifest = registry_http.get_manifest(base_image.name, base_image.digest).json()
    assert served.json()["config"]["digest"] == base_manifest["config"]["digest"]
    assert len(served.json()["layers"]) == len(base_manifest["layers"])
    for desc in manifest_blobs(served.json()):
        blob = registry_http.get_blob("e2e/podman-push", desc["digest"])
        assert len(blob) == desc["size"]

    # push in Docker v2s2 format as well: a different manifest, same layers
    v2 = f"{host}/e2e/podman-push:v2s2"
    cenv.podman(
        "push",
        "--quiet",
        "--format",
        "v2s2",
        "--digestfile",
        str(digestfile),
        target,
        f"docker://{v2}",
    )
    v2_digest = read_digestfile(digestfile)
    v2_manifest = registry_http.get_manifest("e2e/podman-push", "v2s2")
    assert v2_manifest.digest == v2_digest != digest
    assert [x["digest"] for x in v2_manifest.json()["layers"]] == [
        x["digest"] for x in served.json()["layers"]
    ]

    # forget it locally and pull back both
    cenv.podman("rmi", "--force", target, base_image.ref)
    cenv.podman("pull", "--quiet", target)
    assert image_digest(cenv, target) == digest
    cenv.podman("pull", "--quiet", v2)
    # same config, so the same local image: it now carries both repo digests
    assert f"{host}/e2e/podman-push@{v2_digest}" in repo_digests(cenv, v2)
    assert f"{host}/e2e/podman-push@{digest}" in repo_digests(cenv, v2)
    run = cenv.podman("run", "--rm", v2, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT
    cenv.podman("rmi", "--force", target, v2)


def test_buildah_build_push_pull(
    containers_env: ContainersEnv,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    base_image: BaseImage,
    tmp_path: Path,
) -> None:
    host = registry.host
    cenv = containers_env
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text(
        f"FROM {base_image.ref}\n"
        "ARG GREETING=hi\n"
        'RUN echo "$GREETING from buildah" > /built.txt\n'
        'LABEL org.example.e2e.builder="buildah"\n'
    )
    target = f"{host}/e2e/buildah-built:v1"
    cenv.buildah(
        "build",
        NO_RETRY,
        "--quiet",
        "--isolation",
        "chroot",
        "--build-arg",
        "GREETING=howdy",
        "-f",
        str(context / "Containerfile"),
        "-t",
        target,
        str(context),
        timeout=300,
    )
    digestfile = tmp_path / "digest"
    cenv.buildah("push", NO_RETRY, "--quiet", "--digestfile", str(digestfile), target)
    digest = read_digestfile(digestfile)

    served = registry_http.get_manifest("e2e/buildah-built", "v1")
    assert served.digest == digest and served.content_type == OCI_MANIFEST
    manifest = served.json()
    base_layers = registry_http.get_manifest(base_image.name, base_image.digest).json()["layers"]
    assert [x["digest"] for x in manifest["layers"][:-1]] == [x["digest"] for x in base_layers]
    assert len(manifest["layers"]) == len(base_layers) + 1
    config = json.loads(registry_http.get_blob("e2e/buildah-built", manifest["config"]["digest"]))
    assert config["config"]["Labels"]["org.example.e2e.builder"] == "buildah"

    cenv.buildah("rmi", "--force", target)
    cenv.buildah("pull", NO_RETRY, "--quiet", target)
    assert image_digest(cenv, target) == digest
    run = cenv.podman("run", "--rm", target, "cat", "/built.txt")
    assert run.stdout == "howdy from buildah\n"
    cenv.buildah("rmi", "--force", target)


def test_buildah_manifest_list_push(
    containers_env: ContainersEnv,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    tmp_path: Path,
) -> None:
    host = registry.host
    cenv = containers_env
    payload = tmp_path / "payload"
    payload.mkdir()
    images = {}
    for arch in ("amd64", "arm64"):
        (payload / "arch.txt").write_text(f"{arch}\n")
        ctr = cenv.buildah("from", "scratch").stdout.strip()
        try:
            cenv.buildah("copy", ctr, str(payload / "arch.txt"), "/arch.txt")
            cenv.buildah(
                "config",
                "--arch",
                arch,
                "--os",
                "linux",
                "--label",
                f"org.example.arch={arch}",
                ctr,
            )
            image = f"localhost/e2e-scratch-{arch}:latest"
            cenv.buildah("commit", "--quiet", ctr, image)
        finally:
            cenv.buildah("rm", ctr)
        images[arch] = image

    list_name = "localhost/e2e-list:latest"
    cenv.buildah("manifest", "create", list_name)
    for image in images.values():
        cenv.buildah("manifest", "add", list_name, f"containers-storage:{image}")
    digestfile = tmp_path / "digest"
    name = "e2e/buildah-multi"
    cenv.buildah(
        "manifest",
        "push",
        "--all",
        "--quiet",
        "--tls-verify=false",
        "--digestfile",
        str(digestfile),
        list_name,
        f"docker://{host}/{name}:v1",
    )
    digest = read_digestfile(digestfile)

    served = registry_http.get_manifest(name, "v1")
    assert served.digest == digest
    assert served.content_type == OCI_INDEX
    index = served.json()
    platforms = {m["platform"]["architecture"]: m for m in index["manifests"]}
    assert sorted(platforms) == ["amd64", "arm64"]
    for arch, desc in platforms.items():
        assert desc["platform"]["os"] == "linux"
        child = registry_http.get_manifest(name, desc["digest"])
        assert child.digest == desc["digest"] and len(child.body) == desc["size"]
        config = json.loads(registry_http.get_blob(name, child.json()["config"]["digest"]))
        assert config["architecture"] == arch
        assert config["config"]["Labels"]["org.example.arch"] == arch
        for blob in manifest_blobs(child.json()):
            registry_http.get_blob(
                name, blob["digest"]
            )  # present, and its bytes hash to the digest

    # podman reads the list back from the registry (nothing local has that name)
    remote = json.loads(cenv.podman("manifest", "inspect", f"{host}/{name}:v1").stdout)
    assert sorted(m["digest"] for m in remote["manifests"]) == sorted(
        m["digest"] for m in index["manifests"]
    )

    # podman resolves the list for a foreign platform and gets the arm64 image
    cenv.podman("pull", "--quiet", "--arch", "arm64", f"{host}/{name}:v1")
    arch = cenv.podman(
        "image", "inspect", "--format", "{{.Architecture}}", f"{host}/{name}:v1"
    ).stdout.strip()
    assert arch == "arm64"
    assert f"{host}/{name}@{platforms['arm64']['digest']}" in repo_digests(
        cenv, f"{host}/{name}:v1"
    )
    cenv.podman("rmi", "--force", f"{host}/{name}:v1")
    cenv.buildah("manifest", "rm", list_name)
