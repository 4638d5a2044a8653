"""The Docker engine (Debian docker.io, legacy builder, no BuildKit) against the registry:
pull, push, `docker build` with a RUN step, and pulling the result back; plus containerd's
`ctr` pulling and pushing a multi-arch index. The docker CLI is logged in (the ``dockerd``
fixture); ctr gets the credentials with ``--user`` on each call, as it stores none."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import BaseImage, Dockerd, OciLayout, Skopeo
from .helpers import (
    DOCKER_MANIFEST,
    HELLO_TEXT,
    RegistryHTTP,
    RegistryLike,
    manifest_blobs,
)

pytestmark = pytest.mark.e2e

_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")
_PULL_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)


def pushed_digest(output: str) -> tuple[str, int]:
    match = _PUSH_DIGEST.search(output)
    assert match, f"no digest in docker push output:\n{output}"
    return match.group(1), int(match.group(2))


def pulled_digest(output: str) -> str:
    match = _PULL_DIGEST.search(output)
    assert match, f"no digest in docker pull output:\n{output}"
    return match.group(1)


def image_id(dockerd: Dockerd, ref: str) -> str:
    return dockerd.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def repo_digests(dockerd: Dockerd, ref: str) -> list[str]:
    out = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout
    return list(json.loads(out))


def test_pull_and_push(
    dockerd: Dockerd, registry: RegistryLike, registry_http: RegistryHTTP, base_image: BaseImage
) -> None:
    host = registry.host
    # pull the OCI image that skopeo pushed
    out = dockerd.docker("pull", base_image.ref).stdout
    assert pulled_digest(out) == base_image.digest
    assert f"{host}/{base_image.name}@{base_image.digest}" in repo_digests(dockerd, base_image.ref)
    base_id = image_id(dockerd, base_image.ref)
    base_config = registry_http.get_manifest(base_image.name, base_image.digest).json()["config"]
    assert base_id == base_config["digest"], "docker's image ID is the config digest"
    run = dockerd.docker("run", "--rm", "--network", "none", base_image.ref, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT

    # push it under a new name (docker converts to a Docker v2 schema 2 manifest)
    target = f"{host}/e2e/docker-push:v1"
    dockerd.docker("tag", base_image.ref, target)
    digest, size = pushed_digest(dockerd.docker("push", target).stdout)
    served = registry_http.get_manifest("e2e/docker-push", "v1")
    assert served.digest == digest and len(served.body) == size
    assert served.content_type == DOCKER_MANIFEST
    manifest = served.json()
    assert manifest["config"]["digest"] == base_id
    assert registry_http.get_blob("e2e/docker-push", base_id) == registry_http.get_blob(
        base_image.name, base_id
    )
    # the layer blobs were reused (mounted or re-uploaded): identical digests and bytes
    base_layers = registry_http.get_manifest(base_image.name, base_image.digest).json()["layers"]
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in base_layers
    ]

    # forget everything locally, pull back by tag and by digest
    dockerd.docker("rmi", "-f", target, base_image.ref)
    assert dockerd.docker("images", "-q").stdout.strip() == ""
    assert pulled_digest(dockerd.docker("pull", target).stdout) == digest
    assert image_id(dockerd, target) == base_id
    by_digest = f"{host}/e2e/docker-push@{digest}"
    assert pulled_digest(dockerd.docker("pull", by_digest).stdout) == digest
    run = dockerd.docker("run", "--rm", "--network", "none", by_digest, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT
    dockerd.docker("rmi", "-f", target, by_digest)


def test_build_with_run_step_push_and_pull(
    dockerd: Dockerd,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    base_image: BaseImage,
    tmp_path: Path,
) -> None:
    host = registry.host
    context = tmp_path / "context"
    context.mkdir()
    (context / "greeting.txt").write_text("copied into the image\n")
    (context / "Dockerfile").write_text(
        f"FROM {base_image.ref}\n"
        "COPY greeting.txt /greeting.txt\n"
        "RUN echo built-by-docker > /built.txt && sha256sum /greeting.txt > /greeting.sha256\n"
        'LABEL org.example.e2e.builder="docker"\n'
        'CMD ["cat", "/built.txt"]\n'
    )
    target = f"{host}/e2e/docker-built:v1"
    # the base is pulled from the registry by the builder itself
    dockerd.docker("rmi", "-f", base_image.ref, check=False)  # may not be there any more
    dockerd.docker("build", "--network", "host", "-t", target, str(context), timeout=300)
    built_id = image_id(dockerd, target)
    digest, size = pushed_digest(dockerd.docker("push", target).stdout)

    served = registry_http.get_manifest("e2e/docker-built", "v1")
    assert served.digest == digest and len(served.body) == size
    manifest = served.json()
    assert manifest["config"]["digest"] == built_id
    base_manifest = registry_http.get_manifest(base_image.name, base_image.digest).json()
    # base layers + COPY + RUN
    assert len(manifest["layers"]) == len(base_manifest["layers"]) + 2
    assert [lay["digest"] for lay in manifest["layers"][: len(base_manifest["layers"])]] == [
        lay["digest"] for lay in base_manifest["layers"]
    ]
    for desc in manifest_blobs(manifest):
        head = registry_http.head_blob("e2e/docker-built", desc["digest"])
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == desc["size"]
    config = json.loads(registry_http.get_blob("e2e/docker-built", built_id))
    assert config["config"]["Labels"]["org.example.e2e.builder"] == "docker"

    # a clean engine pulls exactly what was pushed, and the RUN step's output is in it
    dockerd.docker("rmi", "-f", target, base_image.ref)
    assert pulled_digest(dockerd.docker("pull", target).stdout) == digest
    assert image_id(dockerd, target) == built_id
    assert f"{host}/e2e/docker-built@{digest}" in repo_digests(dockerd, target)
    run = dockerd.docker("run", "--rm", "--network", "none", target)
    assert run.stdout == "built-by-docker\n"
    run = dockerd.docker(
        "run", "--rm", "--network", "none", target, "sha256sum", "-c", "/greeting.sha256"
    )
    assert "/greeting.txt: OK" in run.stdout
    dockerd.docker("rmi", "-f", target)


def test_containerd_ctr_multiarch_pull_and_push(
    dockerd: Dockerd,
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    oci_layout: OciLayout,
) -> None:
    """containerd's resolver (the engine under dockerd, also used by Kubernetes): pull an
    OCI index with all platforms and push it to another repository, digests unchanged."""
    host = registry.host
    user = "{}:{}".format(*registry.admin_auth)
    index_digest = oci_layout.descriptor("multi")["digest"]
    skopeo(
        "copy",
        "--all",
        "--quiet",
        "--dest-tls-verify=false",
        oci_layout.ref("multi"),
        f"docker://{host}/e2e/ctr-source:v1",
    )
    source, target = f"{host}/e2e/ctr-source:v1", f"{host}/e2e/ctr-pushed:v1"
    # without credentials containerd gets an anonymous token, which grants nothing here
    denied = dockerd.ctr("images", "pull", "--plain-http", source, check=False)
    assert denied.returncode != 0, denied.stdout
    assert "pull access denied" in denied.stderr and "insufficient_scope" in denied.stderr, (
        denied.stderr
    )
    dockerd.ctr("images", "pull", "--plain-http", "--user", user, "--all-platforms", source)
    listed = dockerd.ctr("images", "ls").stdout
    assert index_digest in listed, listed
    dockerd.ctr("images", "tag", source, target)
    dockerd.ctr("images", "push", "--plain-http", "--user", user, target)

    served = registry_http.get_manifest("e2e/ctr-pushed", "v1")
    assert served.digest == index_digest
    assert served.body == oci_layout.blob(index_digest)
    for child in served.json()["manifests"]:
        manifest = registry_http.get_manifest("e2e/ctr-pushed", child["digest"])
        assert manifest.body == oci_layout.blob(child["digest"])
        for desc in manifest_blobs(manifest.json()):
            assert registry_http.get_blob("e2e/ctr-pushed", desc["digest"]) == oci_layout.blob(
                desc["digest"]
            )
    dockerd.ctr("images", "rm", "--sync", source, target)
