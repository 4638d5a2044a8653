"""Shared helpers for the end-to-end suite (real registry clients against 127.0.0.1).

Nothing here mocks anything: these are thin wrappers around subprocess and HTTP so
that failures show the exact command, its output, and the HTTP exchange involved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)

#: Text baked into the busybox base image (``/hello.txt``); tests read it back.
HELLO_TEXT = "hello from the cargohold e2e suite\n"


class RegistryLike(Protocol):
    """What the tests need from the `registry` fixture."""

    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT

    @property
    def admin_auth(self) -> tuple[str, str]:
        """(user, password) of the superuser the test server starts with."""
        ...


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def require_tool(name: str) -> str:
    """Return the absolute path of ``name``; a missing tool FAILS the test (never skips)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"required tool {name!r} is not on PATH; run scripts/install-system-deps.sh",
            pytrace=False,
        )
    return path


def run(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 180,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure raise with everything needed to debug."""
    require_tool(cmd[0])
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"command timed out after {timeout}s: {shlex.join(cmd)}\n"
            f"--- stdout ---\n{_text(exc.stdout)}\n--- stderr ---\n{_text(exc.stderr)}"
        ) from None
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed with exit code {proc.returncode} after "
            f"{time.monotonic() - started:.1f}s: {shlex.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2, what: str) -> None:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})"
    )


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 20) -> None:
    """SIGTERM the process (by PID), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def kill_pid(pid: int, *, timeout: float = 10) -> None:
    """Stop a process we started indirectly (e.g. dockerd's containerd), by PID."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pids_with_cmdline_containing(needle: str) -> list[int]:
    """PIDs whose command line mentions ``needle`` (a unique tmp path of ours)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root.resolve())
    found: list[str] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(mnt)
    return sorted(set(found), key=len, reverse=True)


def unmount_and_remove(root: Path) -> None:
    """Unmount every leftover mount below ``root`` (lazy), then delete the tree."""
    for _ in range(3):
        leftovers = mounts_under(root)
        if not leftovers:
            break
        for mnt in leftovers:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


class HostLeftovers:
    """Host paths some daemons create outside their configured roots (dockerd 20.10:
    /etc/docker/key.json, /run/docker/plugins, /run/containerd/s). Snapshot which of
    them exist before starting; afterwards remove only the ones we caused: files that
    did not exist before, directories that did not exist before and are empty."""

    def __init__(self, files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
        self.new_files = [Path(f) for f in files if not Path(f).exists()]
        self.new_dirs = [Path(d) for d in dirs if not Path(d).exists()]

    def cleanup(self) -> None:
        for f in self.new_files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        # deepest first; os.rmdir refuses non-empty directories (someone else's)
        for d in sorted(self.new_dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def read_digestfile(path: Path) -> str:
    digest = path.read_text().strip()
    assert digest.startswith("sha256:") and len(digest) == 71, f"bad digest file: {digest!r}"
    return digest


@dataclass
class Manifest:
    """A manifest exactly as the registry served it."""

    body: bytes
    content_type: str
    digest_header: str | None

    @property
    def digest(self) -> str:
        return sha256_digest(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


class RegistryHTTP:
    """Raw HTTP access to the registry under test (for checks no client exposes)."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # never go through a proxy: 127.0.0.1 only
        # HTTP Basic straight on /v2 (the registry accepts it besides the token flow)
        self.session.auth = auth

    def _describe(self, resp: requests.Response) -> str:
        return (
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}\n"
            f"headers: {dict(resp.headers)}\nbody: {resp.text[:2000]!r}"
        )

    def head_manifest(
        self, name: str, ref: str, accept: Iterable[str] = ALL_MANIFEST_TYPES
    ) -> requests.Response:
        return self.session.head(
            f"{self.url}/v2/{name}/manifests/{ref}",
            headers={"Accept": ", ".join(accept)},
            timeout=30,
        )

    def manifest_digest(self, name: str, ref: str) -> str:
        """Docker-Content-Digest of HEAD /v2/<name>/manifests/<ref>."""
        resp = self.head_manifest(name, ref)
        assert resp.status_code == 200, self._describe(resp)
        digest = resp.headers.get("Docker-Content-Digest")
        assert digest, f"HEAD manifest without Docker-Content-Digest:\n{self._describe(resp)}"
        return digest

    def get_manifest(
        self, name: str, ref: str, accept: Iterable[str] = ALL_MANIFEST_TYPES
    ) -> Manifest:
        resp = self.session.get(
            f"{self.url}/v2/{name}/manifests/{ref}",
            headers={"Accept": ", ".join(accept)},
            timeout=30,
        )
        assert resp.status_code == 200, self._describe(resp)
        m = Manifest(
            resp.content,
            resp.headers.get("Content-Type", ""),
            resp.headers.get("Docker-Content-Digest"),
        )
        if m.digest_header is not None:
            assert m.digest_header == m.digest, (
                f"Docker-Content-Digest {m.digest_header} does not match the body ({m.digest})"
            )
        return m

    def get_blob(self, name: str, digest: str) -> bytes:
        resp = self.session.get(f"{self.url}/v2/{name}/blobs/{digest}", timeout=60)
        assert resp.status_code == 200, self._describe(resp)
        assert sha256_digest(resp.content) == digest, f"blob {digest} served with wrong content"
        return resp.content

    def head_blob(self, name: str, digest: str) -> requests.Response:
        return self.session.head(f"{self.url}/v2/{name}/blobs/{digest}", timeout=30)

    def tags(self, name: str) -> list[str]:
        resp = self.session.get(f"{self.url}/v2/{name}/tags/list", timeout=30)
        assert resp.status_code == 200, self._describe(resp)
        return list(resp.json().get("tags") or [])

    def referrers(
        self, name: str, digest: str, artifact_type: str | None = None
    ) -> requests.Response:
        params = {"artifactType": artifact_type} if artifact_type else None
        return self.session.get(
            f"{self.url}/v2/{name}/referrers/{digest}", params=params, timeout=30
        )

    def describe(self, resp: requests.Response) -> str:
        return self._describe(resp)


def manifest_blobs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Config + layer descriptors of an image manifest."""
    return [manifest["config"], *manifest.get("layers", [])]
