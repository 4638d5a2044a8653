"""Session fixtures for the end-to-end suite with real registry clients.

The registry under test is the session fixture ``registry`` from tests/conftest.py
(``.url``, ``.host``, ``.admin_auth``). Everything started here (a Docker engine with its
containerd, podman/buildah storage) lives in its own temporary directory, talks only to
127.0.0.1, and is stopped by PID and unmounted/removed at the end of the session.

The registry requires authentication (a Bearer challenge pointing at its token endpoint;
Basic works as well). Each client logs in the way a user would, as the superuser the test
server starts with, into a credentials file of its own in a temporary directory (never the
machine's ~/.docker or ~/.config/containers).

Fixtures:

* ``registry_http``   raw HTTP access to the registry under test (``helpers.RegistryHTTP``,
                      HTTP Basic as the superuser)
* ``skopeo``          skopeo with its own auth file, logged in (``skopeo login``)
* ``oci_layout``      an OCI image layout built locally with umoci from busybox-static; tags
                      ``busybox`` (amd64), ``busybox-arm64``, ``multi`` (OCI index amd64+arm64)
* ``base_image``      that busybox image pushed with skopeo (``e2e/busybox:1.35``)
* ``dockerd``         a private Docker engine (apt docker.io) with ``insecure-registries``;
                      its CLI configuration (DOCKER_CONFIG) is logged in (``docker login``)
* ``containers_env``  env + private storage/config for podman and buildah; its auth file
                      (REGISTRY_AUTH_FILE) is logged in (``podman login``)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    HELLO_TEXT,
    OCI_INDEX,
    HostLeftovers,
    RegistryHTTP,
    RegistryLike,
    kill_pid,
    pids_with_cmdline_containing,
    require_tool,
    run,
    sha256_digest,
    stop_process,
    unmount_and_remove,
    wait_until,
)


@pytest.fixture(scope="session")
def registry_http(registry: RegistryLike) -> RegistryHTTP:
    return RegistryHTTP(registry.url, auth=registry.admin_auth)


# ---------------------------------------------------------------------------------------
# skopeo, with an auth file of its own
# ---------------------------------------------------------------------------------------


def client_env(**extra: str) -> dict[str, str]:
    """The environment for a registry client: no inherited registry credentials or
    configuration, no proxy (everything is on 127.0.0.1), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "CONTAINERS_", "REGISTRY_AUTH", "BUILDAH_"))
        and "proxy" not in k.lower()
    }
    env.update(extra)
    return env


@dataclass
class Skopeo:
    """skopeo whose only credentials file is ``authfile`` (REGISTRY_AUTH_FILE: with it set,
    containers/image reads no other file, not even ~/.docker/config.json)."""

    authfile: Path
    env: dict[str, str]

    @classmethod
    def isolated(cls, root: Path) -> Skopeo:
        root.mkdir(parents=True, exist_ok=True)
        authfile = root / "auth.json"
        return cls(authfile=authfile, env=client_env(REGISTRY_AUTH_FILE=str(authfile)))

    def run(
        self, *args: str, timeout: float = 180, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [require_tool("skopeo"), *args],
            env=self.env,
            timeout=timeout,
            check=check,
            input=input,
        )

    def __call__(self, *args: str, timeout: float = 180) -> str:
        """Run skopeo; raise with its output on failure; return stdout."""
        return self.run(*args, timeout=timeout).stdout

    def login(
        self, host: str, user: str, secret: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "login",
            "--tls-verify=false",
            "--authfile",
            str(self.authfile),
            "--username",
            user,
            "--password-stdin",
            host,
            input=secret + "\n",
            check=check,
        )


@pytest.fixture(scope="session")
def skopeo(registry: RegistryLike, tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """skopeo logged in to the registry as the superuser, for the whole session."""
    client = Skopeo.isolated(tmp_path_factory.mktemp("skopeo-auth"))
    out = client.login(registry.host, *registry.admin_auth)
    assert "Login Succeeded" in out.stdout, out.stdout + out.stderr
    return client


# ---------------------------------------------------------------------------------------
# A busybox-static based image in an OCI layout, built with umoci (no network needed)
# ---------------------------------------------------------------------------------------


@dataclass
class OciLayout:
    """An OCI image layout directory (``oci:<path>:<tag>`` for skopeo)."""

    path: Path

    def index(self) -> dict[str, Any]:
        index: dict[str, Any] = json.loads((self.path / "index.json").read_text())
        return index

    def descriptor(self, tag: str) -> dict[str, Any]:
        for desc in self.index()["manifests"]:
            if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return dict(desc)
        raise KeyError(f"tag {tag!r} not in {self.path}/index.json")

    def blob(self, digest: str) -> bytes:
        algo, hexdigest = digest.split(":", 1)
        data = (self.path / "blobs" / algo / hexdigest).read_bytes()
        assert sha256_digest(data) == digest, f"corrupt blob {digest} in {self.path}"
        return data

    def json_blob(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.blob(digest))
        return data

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 little-endian executable without a PT_INTERP (dynamic loader)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
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
    run(
        [
            umoci,
            "config",
            "--image",
            f"{layout}:busybox",
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "PATH=/bin",
            "--config.label",
            "org.example.e2e=cargohold",
            "--os",
            "linux",
            "--architecture",
            "amd64",
        ]
    )
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
        children.append(
            {
                "mediaType": desc["mediaType"],
                "digest": desc["digest"],
                "size": desc["size"],
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index_bytes = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children,
            "annotations": {"org.example.e2e": "multi-arch"},
        },
        separators=(",", ":"),
    ).encode()
    digest = sha256_digest(index_bytes)
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    blob.write_bytes(index_bytes)
    top = oci.index()
    top["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(index_bytes),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
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
def base_image(
    registry: RegistryLike,
    registry_http: RegistryHTTP,
    skopeo: Skopeo,
    oci_layout: OciLayout,
    tmp_path_factory: pytest.TempPathFactory,
) -> BaseImage:
    """The busybox image pushed with skopeo; FROM image for docker/podman/buildah."""
    host = registry.host
    name, tag = "e2e/busybox", "1.35"
    digestfile = tmp_path_factory.mktemp("base-image") / "digest"
    skopeo(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        oci_layout.ref("busybox"),
        f"docker://{host}/{name}:{tag}",
    )
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
    containerd_sock: Path

    def docker(
        self,
        *args: str,
        timeout: float = 180,
        check: bool = True,
        config: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine. ``config``: another client configuration
        directory (DOCKER_CONFIG: the credentials `docker login` stores) than the
        session's, which is logged in as the superuser."""
        env = self.env if config is None else {**self.env, "DOCKER_CONFIG": str(config)}
        return run(
            [require_tool("docker"), *args], env=env, timeout=timeout, check=check, input=input
        )

    def login(
        self, host: str, user: str, secret: str, *, config: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker login`: the engine does the token flow, the CLI stores the credentials."""
        return self.docker(
            "login",
            "--username",
            user,
            "--password-stdin",
            host,
            input=secret + "\n",
            config=config,
            check=check,
        )

    def ctr(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """containerd's own client against the private containerd, namespace ``e2e``."""
        cmd = [require_tool("ctr"), "--address", str(self.containerd_sock), "--namespace", "e2e"]
        return run([*cmd, *args], env=self.env, timeout=timeout, check=check)


@pytest.fixture(scope="session")
def dockerd(registry: RegistryLike) -> Iterator[Dockerd]:
    """dockerd + its own containerd, both rooted in a private tmp dir.

    containerd is started explicitly: dockerd 20.10 would otherwise attach to a system
    containerd whenever /run/containerd/containerd.sock exists (e.g. on a CI machine
    where apt started the containerd service), and keep state outside our tmp dir."""
    dockerd_bin = require_tool("dockerd")
    containerd_bin = require_tool("containerd")
    require_tool("ctr")
    require_tool("docker")
    require_tool("runc")
    # short path: unix sockets live below it (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="ch-dockerd-", dir="/tmp"))
    leftovers = HostLeftovers(
        files=["/etc/docker/key.json"],
        dirs=[
            "/etc/docker",
            "/run/docker/plugins",
            "/run/docker",
            "/run/containerd/s",
            "/run/containerd",
            "/run/mount",
        ],
    )
    containerd_sock = root / "containerd.sock"
    (root / "containerd.toml").write_text(
        "version = 2\n"
        f'root = "{root / "containerd-root"}"\n'
        f'state = "{root / "containerd-state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{containerd_sock}"\n'
        "[ttrpc]\n"
        f'  address = "{containerd_sock}.ttrpc"\n'
        "[debug]\n"
        '  address = ""\n'
        "[metrics]\n"
        '  address = ""\n'
    )
    config = {
        "data-root": str(root / "data"),
        "exec-root": str(root / "exec"),
        "pidfile": str(root / "dockerd.pid"),
        "hosts": [f"unix://{root}/docker.sock"],
        "containerd": str(containerd_sock),
        "iptables": False,
        "ip6tables": False,
        "bridge": "none",
        "storage-driver": "overlay2",
        "insecure-registries": [registry.host],
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
    containerd_log = root / "containerd.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with containerd_log.open("wb") as log:
            containerd = subprocess.Popen(
                [containerd_bin, "--config", str(root / "containerd.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        procs.append(containerd)

        def containerd_ready() -> bool:
            assert containerd.poll() is None, f"containerd exited:\n{containerd_log.read_text()}"
            return containerd_sock.is_socket()

        wait_until(containerd_ready, timeout=30, what="containerd socket")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [dockerd_bin, "--config-file", str(root / "daemon.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        procs.insert(0, proc)  # stopped first
        daemon = Dockerd(root=root, env=env, log_path=log_path, containerd_sock=containerd_sock)

        def ready() -> bool:
            assert proc.poll() is None, (
                f"dockerd exited ({proc.returncode}):\n{log_path.read_text()}"
            )
            r = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
            )
            return r.returncode == 0

        wait_until(ready, timeout=60, interval=0.3, what="dockerd to answer")
        info = json.loads(daemon.docker("info", "--format", "{{json .RegistryConfig}}").stdout)
        assert registry.host in json.dumps(info), f"insecure registry not configured: {info}"
        login = daemon.login(registry.host, *registry.admin_auth)
        assert "Login Succeeded" in login.stdout, login.stdout + login.stderr
        yield daemon
    finally:
        # remove containers first so no shim outlives the daemon
        subprocess.run(
            "docker ps -aq | xargs -r docker rm -f",
            shell=True,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        for p in procs:
            stop_process(p, timeout=30)
        # containerd-shim processes started by *our* containerd carry our socket path
        for pid in pids_with_cmdline_containing(str(containerd_sock)):
            kill_pid(pid)
        unmount_and_remove(root)
        leftovers.cleanup()


# ---------------------------------------------------------------------------------------
# podman / buildah: private storage, configuration via env vars only (nothing in /etc)
# ---------------------------------------------------------------------------------------


@dataclass
class ContainersEnv:
    root: Path
    env: dict[str, str]

    def podman(
        self,
        *args: str,
        timeout: float = 180,
        check: bool = True,
        authfile: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """podman with the session's storage. ``authfile``: another credentials file
        (REGISTRY_AUTH_FILE) than the session's, which is logged in as the superuser."""
        env = self.env if authfile is None else {**self.env, "REGISTRY_AUTH_FILE": str(authfile)}
        return run(
            [require_tool("podman"), *args], env=env, timeout=timeout, check=check, input=input
        )

    def buildah(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([require_tool("buildah"), *args], env=self.env, timeout=timeout)

    def login(
        self, host: str, user: str, secret: str, *, authfile: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`podman login` (buildah reads the same REGISTRY_AUTH_FILE)."""
        return self.podman(
            "login",
            "--username",
            user,
            "--password-stdin",
            host,
            input=secret + "\n",
            authfile=authfile,
            check=check,
        )


@pytest.fixture(scope="session")
def containers_env(registry: RegistryLike) -> Iterator[ContainersEnv]:
    for tool in ("podman", "buildah", "runc", "conmon"):
        require_tool(tool)
    root = Path(tempfile.mkdtemp(prefix="ch-containers-", dir="/tmp"))
    conf = root / "conf"
    conf.mkdir()
    for d in ("graph", "run", "tmp", "libpod-tmp", "home"):
        (root / d).mkdir()
    (conf / "registries.conf").write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        f'location = "{registry.host}"\n'
        "insecure = true\n"
    )
    # The credentials file lives at $XDG_CONFIG_HOME/containers/auth.json, which is also
    # where containers/image looks when no file is named: podman 4.3's `manifest inspect`
    # ignores REGISTRY_AUTH_FILE (and has no --authfile). `podman login` fills it in below.
    authfile = root / "home" / ".config" / "containers" / "auth.json"
    authfile.parent.mkdir(parents=True)
    authfile.write_text('{"auths": {}}\n')
    (conf / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{root / "run"}"\ngraphroot = "{root / "graph"}"\n'
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
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH", "BUILDAH_"))
    }
    env.update(
        CONTAINERS_REGISTRIES_CONF=str(conf / "registries.conf"),
        CONTAINERS_STORAGE_CONF=str(conf / "storage.conf"),
        CONTAINERS_CONF=str(conf / "containers.conf"),
        REGISTRY_AUTH_FILE=str(authfile),
        TMPDIR=str(root / "tmp"),
        BUILDAH_ISOLATION="chroot",
        XDG_CONFIG_HOME=str(root / "home" / ".config"),
    )
    cenv = ContainersEnv(root=root, env=env)
    leftovers = HostLeftovers(
        dirs=["/run/runc", "/run/containers/0", "/run/containers", "/run/libpod", "/run/mount"]
    )
    try:
        info = json.loads(cenv.podman("info", "--format", "json").stdout)
        assert info["store"]["graphRoot"] == str(root / "graph"), info["store"]
        assert info["store"]["graphDriverName"] == "vfs"
        login = cenv.login(registry.host, *registry.admin_auth)
        assert "Login Succeeded" in login.stdout, login.stdout + login.stderr
        yield cenv
    finally:
        subprocess.run(
            ["podman", "rm", "-af"], env=env, capture_output=True, timeout=60, check=False
        )
        subprocess.run(
            ["buildah", "rm", "--all"], env=env, capture_output=True, timeout=60, check=False
        )
        unmount_and_remove(root)
        leftovers.cleanup()
