"""Session fixtures for the end-to-end suite with real registry clients.

Everything started here (a Docker engine, podman/buildah storage, the temporary
reference registry) lives in its own temporary directory, talks only to 127.0.0.1,
and is stopped by PID and unmounted/removed at the end of the session.

Fixtures:

* ``registry_http``      raw HTTP access to the registry under test (``helpers.RegistryHTTP``)
* ``oci_layout``         an OCI image layout built locally with umoci from busybox-static:
                         tags ``busybox`` (amd64), ``busybox-arm64`` and ``multi`` (OCI index amd64+arm64)
* ``base_image``         that busybox image pushed to the registry with skopeo (``e2e/busybox:1.35``)
* ``dockerd``            a private Docker engine (apt docker.io) with ``insecure-registries``
* ``containers_env``     env + private storage/config for podman and buildah
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .helpers import (
    HELLO_TEXT,
    HostLeftovers,
    OCI_INDEX,
    RegistryHTTP,
    free_port,
    kill_pid,
    require_tool,
    run,
    sha256_digest,
    stop_process,
    unmount_and_remove,
    wait_until,
)

# ---------------------------------------------------------------------------------------
# TEMPORARY: reference registry (Debian `docker-registry`, CNCF Distribution 2.8).
# This override only exists until tests/conftest.py provides the real `registry`
# fixture (cargohold itself). Delete this whole block (down to "END TEMPORARY") then.
# Distribution 2.8 has no referrers API, so the referrers checks fail against it.
# ---------------------------------------------------------------------------------------


@dataclass
class _DistributionRegistry:
    url: str
    host: str
    log_path: Path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_DistributionRegistry]:
    binary = require_tool("docker-registry")
    root = tmp_path_factory.mktemp("distribution")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {root / 'data'}}}\n"
        "  delete: {enabled: true}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log_path = root / "registry.log"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"docker-registry exited:\n{log_path.read_text()}"
            return requests.get(f"{url}/v2/", timeout=2).status_code == 200

        wait_until(ready, timeout=30, what="docker-registry to answer /v2/")
        yield _DistributionRegistry(url=url, host=f"127.0.0.1:{port}", log_path=log_path)
    finally:
        stop_process(proc)


# ----------------------------------- END TEMPORARY -----------------------------------


@pytest.fixture(scope="session")
def registry_http(registry: object) -> RegistryHTTP:
    return RegistryHTTP(registry.url)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# A busybox-static based image in an OCI layout, built with umoci (no network needed)
# ---------------------------------------------------------------------------------------


@dataclass
class OciLayout:
    """An OCI image layout directory (``oci:<path>:<tag>`` for skopeo)."""

    path: Path

    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    def descriptor(self, tag: str) -> dict:
        for desc in self.index()["manifests"]:
            if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return desc
        raise KeyError(f"tag {tag!r} not in {self.path}/index.json")

    def blob(self, digest: str) -> bytes:
        algo, hexdigest = digest.split(":", 1)
        data = (self.path / "blobs" / algo / hexdigest).read_bytes()
        assert sha256_digest(data) == digest, f"corrupt blob {digest} in {self.path}"
        return data

    def json_blob(self, digest: str) -> dict:
        return json.loads(self.blob(digest))

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 little-endian executable without a PT_INTERP (dynamic loader)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _busybox_rootfs(rootfs: Path) -> None:
    busybox = Path(require_tool("busybox")).resolve()
    assert _is_static_elf(busybox), f"{busybox} is dynamically linked: install busybox-static"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = run([str(rootfs / "bin" / "busybox"), "--list"]).stdout.split()
    assert "sh" in applets, "busybox has no sh applet"
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (rootfs / "hello.txt").write_text(HELLO_TEXT)


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    """Tags: ``busybox`` (amd64), ``busybox-arm64`` (adds /arch) and ``multi``: an OCI
    index with the two as linux/amd64 + linux/arm64 platform manifests."""
    work = tmp_path_factory.mktemp("oci-build")
    layout = work / "layout"
    umoci = require_tool("umoci")
    run([umoci, "init", "--layout", str(layout)])
    run([umoci, "new", "--image", f"{layout}:empty"])
    run([umoci, "unpack", "--image", f"{layout}:empty", str(work / "bundle")])
    _busybox_rootfs(work / "bundle" / "rootfs")
    run([umoci, "repack", "--image", f"{layout}:busybox", str(work / "bundle")])
    run([umoci, "config", "--image", f"{layout}:busybox", "--config.cmd", "/bin/sh",
         "--config.env", "PATH=/bin", "--config.label", "org.example.e2e=cargohold",
         "--os", "linux", "--architecture", "amd64"])
    # arm64 variant: same base layer plus one more (the busybox binary stays amd64;
    # registries do not care, only the platform metadata matters here).
    run([umoci, "unpack", "--image", f"{layout}:busybox", str(work / "bundle-arm64")])
    (work / "bundle-arm64" / "rootfs" / "arch").write_text("arm64\n")
    run([umoci, "repack", "--image", f"{layout}:busybox-arm64", str(work / "bundle-arm64")])
    run([umoci, "config", "--image", f"{layout}:busybox-arm64", "--architecture", "arm64"])

    oci = OciLayout(layout)
    children = []
    for tag, arch in (("busybox", "amd64"), ("busybox-arm64", "arm64")):
        desc = oci.descriptor(tag)
        config = oci.json_blob(oci.json_blob(desc["digest"])["config"]["digest"])
        assert config["architecture"] == arch
        children.append({"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
                         "platform": {"architecture": arch, "os": "linux"}})
    index_bytes = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
         "annotations": {"org.example.e2e": "multi-arch"}},
        separators=(",", ":"),
    ).encode()
    digest = sha256_digest(index_bytes)
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    blob.write_bytes(index_bytes)
    top = oci.index()
    top["manifests"].append({"mediaType": OCI_INDEX, "digest": digest, "size": len(index_bytes),
                             "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    for d in (work / "bundle", work / "bundle-arm64"):
        shutil.rmtree(d)
    return oci


@dataclass
class BaseImage:
    ref: str  # 127.0.0.1:PORT/e2e/busybox:1.35
    name: str  # e2e/busybox
    tag: str
    digest: str  # manifest digest (OCI image manifest, byte-identical to the layout's)


@pytest.fixture(scope="session")
def base_image(registry: object, registry_http: RegistryHTTP, oci_layout: OciLayout,
               tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    """The busybox image pushed with skopeo; FROM image for docker/podman/buildah."""
    host = registry.host  # type: ignore[attr-defined]
    name, tag = "e2e/busybox", "1.35"
    digestfile = tmp_path_factory.mktemp("base-image") / "digest"
    run([require_tool("skopeo"), "copy", "--quiet", "--dest-tls-verify=false",
         "--digestfile", str(digestfile), oci_layout.ref("busybox"), f"docker://{host}/{name}:{tag}"])
    digest = digestfile.read_text().strip()
    assert digest == oci_layout.descriptor("busybox")["digest"]
    assert registry_http.manifest_digest(name, tag) == digest
    return BaseImage(ref=f"{host}/{name}:{tag}", name=name, tag=tag, digest=digest)


# ---------------------------------------------------------------------------------------
# Docker engine (apt docker.io), private to this session
# ---------------------------------------------------------------------------------------


@dataclass
class Dockerd:
    root: Path
    env: dict[str, str]
    log_path: Path

    def docker(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([require_tool("docker"), *args], env=self.env, timeout=timeout, check=check)


@pytest.fixture(scope="session")
def dockerd(registry: object) -> Iterator[Dockerd]:
    dockerd_bin = require_tool("dockerd")
    require_tool("docker")
    require_tool("containerd")
    require_tool("runc")
    # short path: unix sockets live below it (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="ch-dockerd-", dir="/tmp"))
    config = {
        "data-root": str(root / "data"),
        "exec-root": str(root / "exec"),
        "pidfile": str(root / "dockerd.pid"),
        "hosts": [f"unix://{root}/docker.sock"],
        "iptables": False,
        "ip6tables": False,
        "bridge": "none",
        "storage-driver": "overlay2",
        "insecure-registries": [registry.host],  # type: ignore[attr-defined]
        "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 20000, "Soft": 20000}},
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "features": {"buildkit": False},
        "log-level": "info",
    }
    (root / "daemon.json").write_text(json.dumps(config, indent=2))
    (root / "client").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        DOCKER_HOST=f"unix://{root}/docker.sock",
        DOCKER_CONFIG=str(root / "client"),  # docker login/config never touch ~/.docker
        DOCKER_BUILDKIT="0",
        DOCKER_CLI_HINTS="false",
    )
    log_path = root / "dockerd.log"
    leftovers = HostLeftovers(
        files=["/etc/docker/key.json"],
        dirs=["/etc/docker", "/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd",
              "/run/mount"],
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [dockerd_bin, "--config-file", str(root / "daemon.json")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    daemon = Dockerd(root=root, env=env, log_path=log_path)
    containerd_pidfile = root / "exec" / "containerd" / "containerd.pid"
    containerd_pid: int | None = None
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"dockerd exited ({proc.returncode}):\n{log_path.read_text()}"
            r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                               env=env, capture_output=True, text=True, timeout=10)
            return r.returncode == 0

        wait_until(ready, timeout=60, interval=0.3, what="dockerd to answer")
        if containerd_pidfile.exists():
            containerd_pid = int(containerd_pidfile.read_text().strip())
        info = json.loads(daemon.docker("info", "--format", "{{json .RegistryConfig}}").stdout)
        assert registry.host in json.dumps(info), f"insecure registry not configured: {info}"  # type: ignore[attr-defined]
        yield daemon
    finally:
        # remove containers first so no shim outlives the daemon
        subprocess.run("docker ps -aq | xargs -r docker rm -f", shell=True, env=env,
                       capture_output=True, timeout=60, check=False)
        stop_process(proc, timeout=30)
        if containerd_pid is not None:
            kill_pid(containerd_pid)
        unmount_and_remove(root)
        leftovers.cleanup()


# ---------------------------------------------------------------------------------------
# podman / buildah: private storage, configuration via env vars only (nothing in /etc)
# ---------------------------------------------------------------------------------------


@dataclass
class ContainersEnv:
    root: Path
    env: dict[str, str]

    def podman(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([require_tool("podman"), *args], env=self.env, timeout=timeout)

    def buildah(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([require_tool("buildah"), *args], env=self.env, timeout=timeout)


@pytest.fixture(scope="session")
def containers_env(registry: object) -> Iterator[ContainersEnv]:
    for tool in ("podman", "buildah", "runc", "conmon"):
        require_tool(tool)
    root = Path(tempfile.mkdtemp(prefix="ch-containers-", dir="/tmp"))
    conf = root / "conf"
    conf.mkdir()
    for d in ("graph", "run", "tmp", "libpod-tmp", "home"):
        (root / d).mkdir()
    (conf / "registries.conf").write_text(
        'unqualified-search-registries = []\n'
        "[[registry]]\n"
        f'location = "{registry.host}"\n'  # type: ignore[attr-defined]
        "insecure = true\n"
    )
    (conf / "auth.json").write_text('{"auths": {}}\n')  # anonymous registry; must exist
    (conf / "storage.conf").write_text(
        "[storage]\n"
        'driver = "vfs"\n'
        f'runroot = "{root / "run"}"\n'
        f'graphroot = "{root / "graph"}"\n'
    )
    (conf / "containers.conf").write_text(
        "[containers]\n"
        'netns = "host"\n'
        'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root / "events.log"}"\n'
        'runtime = "runc"\n'
        f'tmp_dir = "{root / "libpod-tmp"}"\n'
        f'volume_path = "{root / "volumes"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH", "BUILDAH_"))}
    env.update(
        CONTAINERS_REGISTRIES_CONF=str(conf / "registries.conf"),
        CONTAINERS_STORAGE_CONF=str(conf / "storage.conf"),
        CONTAINERS_CONF=str(conf / "containers.conf"),
        REGISTRY_AUTH_FILE=str(conf / "auth.json"),
        TMPDIR=str(root / "tmp"),
        BUILDAH_ISOLATION="chroot",
        XDG_CONFIG_HOME=str(root / "home" / ".config"),
    )
    cenv = ContainersEnv(root=root, env=env)
    leftovers = HostLeftovers(dirs=["/run/runc", "/run/containers/0", "/run/containers", "/run/libpod", "/run/mount"])
    try:
        info = json.loads(cenv.podman("info", "--format", "json").stdout)
        assert info["store"]["graphRoot"] == str(root / "graph"), info["store"]
        assert info["store"]["graphDriverName"] == "vfs"
        yield cenv
    finally:
        subprocess.run(["podman", "rm", "-af"], env=env, capture_output=True, timeout=60, check=False)
        subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, timeout=60, check=False)
        unmount_and_remove(root)
        leftovers.cleanup()
