"""What the benchmark ran on: machine, operating system, tool and code versions."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import platform
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

# CPU features that matter for a registry (sha256 of uploads, TLS) or explain the numbers.
_FLAGS = ("sha_ni", "aes", "avx2", "avx512f")


@dataclass
class Environment:
    cpu_model: str
    logical_cpus: int
    cpu_flags: list[str]
    memory_gib: float
    os_name: str
    kernel: str
    python: str  # the interpreter running the harness and regbench
    data_fs: str  # filesystem type of the directory holding the registries' data
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] | None = None
    versions: dict[str, str] = field(default_factory=dict)


def _run(
    argv: list[str],
    cwd: Path | None = None,
    any_exit_code: bool = False,
    env: dict[str, str] | None = None,
) -> str | None:
    """stdout+stderr of a short command, or None when it cannot run or fails."""
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=20,
            cwd=cwd,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (res.stdout + res.stderr).strip() if res.returncode == 0 or any_exit_code else None


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", set[str]()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    return model, [flag for flag in _FLAGS if flag in flags]


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def _os_name() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def filesystem_type(path: Path) -> str:
    """Type of the filesystem that holds `path` (longest matching mount point)."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, fstype = mount, parts[2]
    return fstype


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_revision(repo: Path) -> str:
    """Commit of the work tree, and whether tracked files differ from it (read-only git)."""
    head = _run(["git", "--no-optional-locks", "rev-parse", "--short=12", "HEAD"], cwd=repo)
    if head is None:
        return "no commit yet"
    dirty = _run(
        ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], cwd=repo
    )
    return head + (" + uncommitted changes" if dirty else "")


def tool_versions(
    repo: Path, venv_python: Path | None, regbench: Path, regbench_name: str
) -> dict[str, str]:
    """Versions of the servers, tools and code; venv_python=None skips cargohold."""
    versions: dict[str, str] = {}
    reg = _run(["docker-registry", "--version"])
    versions["docker-registry"] = reg or "unknown"
    wrk = _run(["wrk", "-v"], any_exit_code=True)  # prints version and usage, exits 1
    versions["wrk"] = wrk.splitlines()[0].split(" Copyright")[0] if wrk else "unknown"
    versions["regbench"] = f"{regbench_name} (sha256 {file_sha256(regbench)[:12]})"
    if venv_python is not None:
        code = (
            "import importlib.metadata as m, platform; "
            "print(m.version('cargohold'), platform.python_version())"
        )
        out = _run([str(venv_python), "-c", code])
        parts = out.split() if out else []
        versions["cargohold"] = (
            f"{parts[0]} (Python {parts[1]})" if len(parts) >= 2 else "unknown version"
        )
    versions["repository"] = f"git {git_revision(repo)}"
    return versions


def source_fingerprint(repo: Path) -> str:
    """sha256 (12 hex digits) over the paths and contents of src/**/*.py: taken at the start
    and the end of a run, it tells whether the code under test changed while it ran."""
    h = hashlib.sha256()
    for path in sorted((repo / "src").rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def export_source(
    repo: Path, rev: str, dest: Path, venv_python: Path
) -> tuple[str, dict[str, str]]:
    """Unpack src/ of commit `rev` into dest (read-only for the repository: git archive),
    for benchmarking a commit while the work tree changes. Returns the commit's short id
    and the environment that makes the venv's `cargohold` import that copy (the editable
    install is a plain .pth path entry, which PYTHONPATH precedes)."""
    sha = _run(["git", "--no-optional-locks", "rev-parse", "--verify", f"{rev}^{{commit}}"], repo)
    if sha is None:
        raise ValueError(f"{rev!r} is not a commit of {repo}")
    res = subprocess.run(
        ["git", "--no-optional-locks", "archive", "--format=tar", sha, "src"],
        cwd=repo,
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        raise ValueError(f"git archive {sha[:12]} src failed: {res.stderr.decode()[-300:]}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        tar.extractall(dest, filter="data")
    env = {"PYTHONPATH": str(dest / "src")}
    where = _run(
        [str(venv_python), "-c", "import cargohold; print(cargohold.__file__)"],
        any_exit_code=True,
        env=env,
    )
    if not where or not where.startswith(str(dest / "src")):
        raise ValueError(f"the venv does not import cargohold from the copy: {where}")
    return sha[:12], env


def cargohold_version(venv_python: Path) -> str:
    """`0.1.0 (Python 3.11.7)` for the cargohold installed in that interpreter's venv."""
    code = (
        "import importlib.metadata as m, platform; "
        "print(m.version('cargohold'), platform.python_version())"
    )
    out = _run([str(venv_python), "-c", code])
    parts = out.split() if out else []
    return f"{parts[0]} (Python {parts[1]})" if len(parts) >= 2 else "unknown version"


def collect(data_dir: Path) -> Environment:
    model, flags = _cpuinfo()
    return Environment(
        cpu_model=model,
        logical_cpus=os.cpu_count() or 0,
        cpu_flags=flags,
        memory_gib=_memory_gib(),
        os_name=_os_name(),
        kernel=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        data_fs=filesystem_type(data_dir),
        load_start=os.getloadavg(),
    )
