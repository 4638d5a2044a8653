#!/usr/bin/env python3
"""Benchmark cargohold against CNCF Distribution (Debian's docker-registry), side by side.

Starts both registries fresh (temporary data directories, free ports on
127.0.0.1, each in its own process group), runs regbench's `compare` on them
(every workload alternately on both, median of the rounds), stops them, and
writes a Markdown report with a ratio chart:

  <out>                              default docs/benchmarks.md (--auth: docs/benchmarks-auth.md)
  <out dir>/<name>-ratios.svg        the chart, linked from the report
  <out dir>/bench-results/<name>.json, .log   regbench's raw JSON and progress log

Authentication: cargohold always requires it. It starts with a first superuser (a
random password per run) and regbench gets those credentials; cargohold's 401 names a
token realm, so regbench does the Docker token flow against it, as docker and podman do
(a 401 and a token request for each new set of scopes, then a JWT on every request).
Without --auth, Distribution runs open, as in shared/bench/BASELINE.md. With --auth,
Distribution requires Basic auth (htpasswd, bcrypt), and a second pass compares
cargohold's token flow with cargohold taking Basic credentials on every request (the
cheapest authentication it has: what the token flow costs); --no-basic-pass skips it.

regbench is the shared yardstick; it is looked up in $REGBENCH, else in
../shared/bench/regbench.py next to the repository.

Examples (from the repository root):
  .venv/bin/python bench/compare.py                   # full run (make bench), ~6-10 min
  .venv/bin/python bench/compare.py --auth            # make bench-auth, two passes, ~15-20 min
  .venv/bin/python bench/compare.py --quick           # CI smoke run, < 1 min, bench/.out/quick/
  .venv/bin/python bench/compare.py --quick --auth    # ~2 min, bench/.out/quick-auth/
  .venv/bin/python bench/compare.py --workloads manifest_get,blob_head --rounds 5
  .venv/bin/python bench/compare.py --quick --standin  # harness self-test without cargohold

Exit status: 0 all workloads measured; 1 report written but some workload failed
(a wrong answer or a server crash); 2 the benchmark could not run. Timing never
makes it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procstat
import report
import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
AUTH_OUT = REPO / "docs" / "benchmarks-auth.md"
SCRATCH_OUT = REPO / "bench" / ".out"  # --quick / --standin reports, ignored by git
BASIC_WRAPPER = REPO / "bench" / "regbench_basic.py"
# Each server process's own high-water mark (VmHWM, MiB), read just before it is stopped:
# the goal is per process (a worker, the main process), which a tree's sum hides.
PROCESS_PEAKS: dict[str, list[tuple[int, str, float]]] = {}
CANDIDATE, BASELINE, STANDIN = "cargohold", "distribution", "cargohold-standin"
CANDIDATE_BASIC = "cargohold-basic"
# Sections of the report that other benchmarks write between their markers.
KEPT_SECTIONS = re.compile(
    r"<!-- (gc|production)-benchmark:begin -->.*?<!-- \1-benchmark:end -->\n?",
    re.S,
)
URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")

# Small sizes and short loads: a smoke run that exercises every endpoint regbench uses.
QUICK_ARGS = [
    "--blob-size", "16MiB", "--chunk-size", "4MiB", "--pull-reps", "2", "--streams", "4",
    "--duration", "2", "--connections", "16", "--images", "40", "--image-repos", "5",
    "--tags", "300", "--page-size", "100", "--list-reps", "2",
    "--catalog-repos", "150", "--catalog-page", "50", "--mounts", "40", "--timeout", "120",
]  # fmt: skip
FULL_BLOB_SIZE = 256 << 20  # regbench's default --blob-size
QUICK_BLOB_SIZE = 16 << 20
# Environment variables whose values are hidden in the report: their last word is one of these
# (CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD, not CARGOHOLD_AUTH__TOKEN_TTL_SECONDS).
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY)$", re.IGNORECASE)


SetupError = servers.SetupError


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="bench/compare.py",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small blobs, short loads, 1 round (for CI; numbers are meaningless)",
    )
    p.add_argument(
        "--rounds",
        type=_positive_int,
        help="rounds per workload, median reported (default 3; --quick: 1)",
    )
    p.add_argument(
        "--order",
        choices=("abba", "abab"),
        default="abba",
        help="abba: who goes first alternates per round (default); abab: cargohold always first",
    )
    p.add_argument(
        "--workloads", help="comma-separated subset of regbench's workloads (default: all)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="Markdown report to write (default docs/benchmarks.md, with --auth "
        "docs/benchmarks-auth.md; with --quick or --standin under bench/.out/<mode>/)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="Distribution with htpasswd (Basic auth) against cargohold's token flow, then "
        "cargohold's token flow against cargohold with Basic; writes docs/benchmarks-auth.md",
    )
    p.add_argument(
        "--no-basic-pass",
        dest="basic_pass",
        action="store_false",
        help="with --auth: skip the second pass (cargohold token flow vs Basic)",
    )
    p.add_argument(
        "--standin",
        action="store_true",
        help=f"start a second docker-registry labelled {STANDIN} instead of cargohold: "
        "tests the harness and measures the noise floor (ratios ~1.0)",
    )
    p.add_argument(
        "--cargohold",
        type=Path,
        default=REPO / ".venv" / "bin" / "cargohold",
        help="cargohold executable (default .venv/bin/cargohold)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for cargohold (repeatable)",
    )
    p.add_argument(
        "--regbench-args",
        default="",
        metavar="ARGS",
        help='more options for `regbench.py compare`, e.g. "--duration 5 --blob-size 64MiB"',
    )
    p.add_argument(
        "--tmpdir",
        type=Path,
        help="where the registries' fresh data directories go (default: system temp dir)",
    )
    p.add_argument(
        "--keep-data", action="store_true", help="keep the data directories and server logs"
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds a registry may take to answer GET /v2/ (default 60)",
    )
    return p


def mode_name(args: argparse.Namespace) -> str:
    modes = (("quick", args.quick), ("standin", args.standin), ("auth", args.auth))
    return "-".join(m for m, on in modes if on) or "full"


def output_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out).resolve()
    default = AUTH_OUT if args.auth else DEFAULT_OUT
    if args.quick or args.standin:
        return SCRATCH_OUT / mode_name(args) / default.name
    return default


def shorten(arg: str) -> str:
    """Paths inside the repository (or in ../shared) relative to the repository root."""
    if not arg.startswith("/"):
        return arg
    rel = os.path.relpath(arg, REPO)
    return rel if not rel.startswith("../..") else arg


def hide_password(arg: str) -> str:
    """http://user:secret@host -> http://user:***@host; NAME_PASSWORD=x -> NAME_PASSWORD=***
    (a --server-env value)."""
    name, sep, _ = arg.partition("=")
    if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and SECRET_KEY.search(name):
        return f"{name}=***"
    return URL_PASSWORD.sub(r"\1***@", arg)


def display_command(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A shell command line with paths shortened and passwords (in the environment or in
    URLs) replaced by ***."""
    assignments = [
        f"{k}={'***' if SECRET_KEY.search(k) else shlex.quote(shorten(v))}"
        for k, v in (env or {}).items()
    ]
    return " ".join([*assignments, shlex.join(hide_password(shorten(a)) for a in argv)])


def scrub(path: Path, secrets: Sequence[str]) -> None:
    """Replace every secret in a file (regbench records its command line) with ***."""
    if not path.is_file():
        return
    text = path.read_text(errors="replace")
    cleaned = text
    for secret in secrets:
        cleaned = cleaned.replace(secret, "***")
    if cleaned != text:
        path.write_text(cleaned)


# --------------------------------------------------------------------------------------
# Pre-flight checks
# --------------------------------------------------------------------------------------


def locate_regbench() -> Path:
    env = os.environ.get("REGBENCH")
    if env:
        path = Path(env).resolve()
        if not path.is_file():
            raise SetupError(f"REGBENCH={env} does not exist")
        return path
    path = (REPO.parent / "shared" / "bench" / "regbench.py").resolve()
    if not path.is_file():
        raise SetupError(
            f"regbench.py not found at {path}: put a copy of shared/ next to the repository "
            "(../shared/bench/regbench.py) or set REGBENCH=/path/to/regbench.py"
        )
    return path


def regbench_workloads(regbench: Path) -> list[str]:
    res = subprocess.run(
        [sys.executable, str(regbench), "list"], capture_output=True, text=True, check=False
    )
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    if res.returncode != 0 or not names:
        raise SetupError(f"`regbench.py list` failed: {res.stderr.strip()}")
    return names


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(i?)b?", text.strip(), re.IGNORECASE)
    if not m:
        return FULL_BLOB_SIZE
    base = 1024 if m.group(3) or not m.group(2) else 1000
    return int(float(m.group(1)) * base ** " kmg".index((m.group(2) or " ").lower()))


def needed_disk(args: argparse.Namespace, workloads: Sequence[str], extra: Sequence[str]) -> int:
    """Bytes both registries store for the large-blob workloads, with some margin."""
    blob = QUICK_BLOB_SIZE if args.quick else FULL_BLOB_SIZE
    for i, arg in enumerate(extra):
        if arg == "--blob-size" and i + 1 < len(extra):
            blob = parse_size(extra[i + 1])
        elif arg.startswith("--blob-size="):
            blob = parse_size(arg.split("=", 1)[1])
    blobs = 1 if "blob_pull" in workloads else 0
    blobs += args.rounds * sum(w in workloads for w in ("blob_push_mono", "blob_push_chunked"))
    return int(2 * blobs * blob * 1.25) + (256 << 20)


def preflight(args: argparse.Namespace, regbench: Path, extra: Sequence[str]) -> list[str]:
    """Check tools, the server binary, workloads and disk; return the workloads to run."""
    for tool, package in (("wrk", "wrk"), ("docker-registry", "docker-registry")):
        if not shutil.which(tool):
            raise SetupError(f"`{tool}` not found on PATH (Debian: apt-get install {package})")
    if args.auth:
        try:
            import bcrypt  # noqa: F401  (the htpasswd file for Distribution)
        except ImportError as exc:
            raise SetupError(
                "--auth needs the Python package bcrypt (in the test extra: "
                "`.venv/bin/pip install -e '.[test]'`)"
            ) from exc
    if not args.standin and not os.access(args.cargohold, os.X_OK):
        raise SetupError(
            f"cargohold not found at {args.cargohold}: install the project into .venv first "
            "(`make install` / `pip install -e .`), or pass --standin to test the harness alone"
        )
    known = regbench_workloads(regbench)
    selected = (
        [w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else known
    )
    unknown = [w for w in selected if w not in known]
    if unknown or not selected:
        raise SetupError(
            f"unknown workload(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
        )
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    need, free = needed_disk(args, selected, extra), shutil.disk_usage(tmp).free
    if free < need:
        raise SetupError(
            f"{tmp} has {free >> 20} MiB free, the run needs about {need >> 20} MiB (--tmpdir)"
        )
    for item in args.server_env:
        if "=" not in item:
            raise SetupError(f"--server-env {item!r}: expected KEY=VALUE")
    return selected


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let clean-up finish even if the user presses Ctrl-C again."""
    old = {
        s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass
class RegbenchRun:
    argv: list[str]
    returncode: int
    text_report: str


def run_regbench(argv: list[str], log_path: Path) -> RegbenchRun:
    """Run regbench, echoing its progress (stderr) live and into log_path."""
    log("running: " + display_command(argv))
    with tempfile.TemporaryFile("w+") as stdout, open(log_path, "w") as logf:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                logf.write(line)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stdout.seek(0)
        return RegbenchRun(argv, proc.returncode, stdout.read())


def describe_tree(server: servers.Server) -> str:
    return ", ".join(f"{pid} {name}" for pid, name in server.tree()) or "(gone)"


def server_info(server: servers.Server, tree_start: str, tree_end: str) -> report.ServerInfo:
    tree = tree_start if tree_start == tree_end else f"at start {tree_start}; at the end {tree_end}"
    return report.ServerInfo(
        server.name,
        server.kind,
        server.url,
        server.pid,
        display_command(server.argv, server.env),
        tree,
    )


def write_outputs(out: Path, doc: dict[str, Any], info: report.RunInfo, chart_title: str) -> Path:
    """Write the Markdown report and its SVG chart; return the chart's path."""
    rows = report.rows_from_doc(doc, info.candidate, info.baseline)
    date = time.strftime("%Y-%m-%d", time.localtime(info.started))
    rounds = doc.get("options", {}).get("rounds")
    subtitle = f"{date}, {rounds} round(s), {info.env.cpu_model}, {info.env.logical_cpus} CPUs"
    if info.quick:
        subtitle += ": QUICK SMOKE RUN, not a measurement"
    svg_path = out.with_name(info.svg_link)
    svg_path.write_text(report.render_svg(rows, chart_title, subtitle, info.candidate))
    # The garbage collection (bench/gcbench.py) and production mode (bench/production.py)
    # sections are other benchmarks': keep them, in their order.
    kept = [m[0] for m in KEPT_SECTIONS.finditer(_text(out))]
    out.write_text(report.render_markdown(doc, info) + "".join("\n" + k for k in kept))
    return svg_path


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@dataclass(frozen=True)
class Pass:
    """One `regbench compare` between two freshly started registries."""

    key: str  # "main", "auth" or "basic"
    candidate: str  # target A
    baseline: str  # target B
    baseline_kind: str  # "distribution" or "cargohold"
    htpasswd: bool = False  # Distribution (and a stand-in) with Basic auth
    basic: bool = False  # B is cargohold sent Basic credentials up front (regbench_basic.py)


def plan(args: argparse.Namespace) -> list[Pass]:
    cand = STANDIN if args.standin else CANDIDATE
    passes = [Pass("auth" if args.auth else "main", cand, BASELINE, "distribution", args.auth)]
    if args.auth and args.basic_pass and not args.standin:
        passes.append(Pass("basic", CANDIDATE, CANDIDATE_BASIC, "cargohold", basic=True))
    return passes


@dataclass
class PassRun:
    spec: Pass
    result: RegbenchRun
    json_path: Path
    log_path: Path
    cand: servers.Server
    base: servers.Server
    infos: list[report.ServerInfo]
    problems: list[str]

    def doc(self) -> dict[str, Any] | None:
        if self.result.returncode not in (0, 1) or not self.json_path.is_file():
            return None
        doc: dict[str, Any] = json.loads(self.json_path.read_text())
        return doc

    @property
    def ok(self) -> bool:
        return self.result.returncode == 0 and not self.problems


def new_credentials() -> servers.Credentials:
    return (servers.ADMIN_USER, servers.new_password())


@contextlib.contextmanager
def registries(
    args: argparse.Namespace, regbench: Path, workdir: Path, spec: Pass
) -> Iterator[tuple[servers.Server, servers.Server]]:
    """Start the pass's two registries; stop both (process groups) on the way out."""
    running: list[servers.Server] = []
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    try:
        if args.standin:
            cand = servers.start_distribution(
                regbench,
                workdir / STANDIN,
                name=STANDIN,
                timeout=args.start_timeout,
                credentials=new_credentials() if spec.htpasswd else None,
            )
        else:
            cand = servers.start_cargohold(
                args.cargohold,
                workdir / spec.candidate,
                workdir / f"{spec.candidate}.log",
                name=spec.candidate,
                extra_env=extra_env,
                timeout=args.start_timeout,
            )
        running.append(cand)
        if spec.baseline_kind == "cargohold":
            base = servers.start_cargohold(
                args.cargohold,
                workdir / spec.baseline,
                workdir / f"{spec.baseline}.log",
                name=spec.baseline,
                extra_env=extra_env,
                timeout=args.start_timeout,
            )
        else:
            base = servers.start_distribution(
                regbench,
                workdir / spec.baseline,
                name=spec.baseline,
                timeout=args.start_timeout,
                credentials=new_credentials() if spec.htpasswd else None,
            )
        running.append(base)
        yield cand, base
    finally:
        with signals_ignored():
            for s in reversed(running):
                PROCESS_PEAKS[s.name] = process_peaks(s.pid)
                log(f"stopping {s.name} (process group {s.pid})")
                try:
                    s.stop()
                except servers.ServerError as exc:
                    log(f"warning: {exc}")


def process_peaks(root: int) -> list[tuple[int, str, float]]:
    """(pid, command, VmHWM in MiB) of every process of a server's tree."""
    peaks = []
    for pid, rss in sorted(procstat.tree_rss(root).items()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            command = " ".join(a.decode(errors="replace") for a in argv[:3] if a)
        except OSError:
            command = "?"
        peaks.append((pid, command, round(rss.hwm / 1048576, 1)))
    return peaks


def peaks_section() -> str:
    lines = [
        "## Memory peak of each process",
        "",
        "VmHWM of each process of each server's tree at the end of the run (the kernel's "
        "own high-water mark, so no sampling can miss a peak). The goal of 150 MiB is per "
        "process.",
        "",
        "| server | pid | process | VmHWM |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, peaks in PROCESS_PEAKS.items():
        for pid, command, mib in peaks:
            lines.append(f"| {name} | {pid} | `{command}` | {mib:.0f} MiB |")
    return "\n".join(lines)


def suspects(
    running: Sequence[servers.Server], json_path: Path, returncode: int
) -> list[servers.Server]:
    """The servers whose logs may explain a failure: those that died or failed a workload
    (all of them when regbench itself failed)."""
    failed_targets: set[str] = set()
    if returncode == 1 and json_path.is_file():
        doc = json.loads(json_path.read_text())
        failed_targets = {t for _, t, _ in report.errors_from_doc(doc)}
    return [
        s for s in running if not s.alive() or s.name in failed_targets or returncode not in (0, 1)
    ]


def remove_data(workdir: Path, keep_logs: bool) -> None:
    """Delete the registries' data; with keep_logs, leave their log files in place."""
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for path in sorted(workdir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only empty directories: those that held no log
        elif path.suffix != ".log":
            path.unlink(missing_ok=True)
    log(f"server logs kept in {workdir}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    invocation = [sys.executable, "bench/compare.py", *(sys.argv[1:] if argv is None else argv)]
    return servers.run_cli(lambda: run(args, invocation), log)


def regbench_command(
    args: argparse.Namespace,
    regbench: Path,
    spec: Pass,
    cand: servers.Server,
    base: servers.Server,
    workloads: Sequence[str],
    extra: Sequence[str],
    json_path: Path,
) -> list[str]:
    if spec.basic:
        prefix = [sys.executable, str(BASIC_WRAPPER), str(regbench), f"{servers.HOST}:{base.port}"]
    else:
        prefix = [sys.executable, str(regbench)]
    a_url = servers.url_with_credentials(cand.url, cand.credentials)
    b_url = servers.url_with_credentials(base.url, base.credentials)
    return [*prefix, "compare",
            "--a", f"{cand.name}={a_url}", "--a-pid", str(cand.pid),
            "--b", f"{base.name}={b_url}", "--b-pid", str(base.pid),
            "--rounds", str(args.rounds), "--order", args.order,
            "--workloads", ",".join(workloads), "--json", str(json_path),
            *(QUICK_ARGS if args.quick else []), *extra]  # fmt: skip


def run_pass(
    args: argparse.Namespace,
    regbench: Path,
    spec: Pass,
    workloads: Sequence[str],
    extra: Sequence[str],
    json_path: Path,
    log_path: Path,
) -> PassRun:
    """Start the two registries, run regbench on them, stop them, delete their data."""
    workdir = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.tmpdir))
    failed = True
    try:
        with registries(args, regbench, workdir, spec) as (cand, base):
            trees = {s.name: describe_tree(s) for s in (cand, base)}
            for s in (cand, base):
                log(f"{s.name}: {s.url}, PID {s.pid} ({trees[s.name]}), data {s.data_dir}")
            cmd = regbench_command(args, regbench, spec, cand, base, workloads, extra, json_path)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.unlink(missing_ok=True)
            result = run_regbench(cmd, log_path)
            passwords = [s.credentials[1] for s in (cand, base) if s.credentials]
            for path in (json_path, log_path):
                scrub(path, passwords)
            problems = [
                f"**{s.name}** exited during the run (exit code {s.exit_code})"
                for s in (cand, base)
                if not s.alive()
            ]
            infos = [server_info(s, trees[s.name], describe_tree(s)) for s in (cand, base)]
            failed = bool(problems) or result.returncode != 0
            for s in suspects((cand, base), json_path, result.returncode):
                log(f"last lines of {s.name}'s log ({s.log_path}):\n{s.log_tail()}")
    finally:
        if args.keep_data:
            log(f"data directories and server logs kept in {workdir}")
        else:
            remove_data(workdir, keep_logs=failed)
    return PassRun(spec, result, json_path, log_path, cand, base, infos, problems)


def auth_notes(args: argparse.Namespace, out: Path) -> list[str]:
    """The paragraphs of the report that say how each registry authenticated."""
    if args.standin:
        return [
            "**Authentication.** Both registries are docker-registry"
            + (" with `auth: htpasswd` (Basic, bcrypt)." if args.auth else " without it.")
        ]
    token_flow = (
        "cargohold requires authentication: it started with a first superuser "
        "(`CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD`, a random password per run) whose "
        "credentials regbench got. cargohold's 401 names its token endpoint, so regbench did "
        "the Docker token flow, as docker and podman do: for every new set of scopes (each new "
        "repository) a 401, then `GET /v2/auth?service=...&scope=...` with the credentials "
        "(Basic), then the token (a JWT) on every request. Tokens were issued for "
        f"{servers.BENCH_AUTH_ENV['CARGOHOLD_AUTH__TOKEN_TTL_SECONDS']} s "
        "(`CARGOHOLD_AUTH__TOKEN_TTL_SECONDS`; default 300 s) so that none expires in the "
        "middle of a wrk or HEAD load, which cannot fetch a new one; the lifetime does not "
        "change what a request costs."
    )
    if not args.auth:
        auth_link = AUTH_OUT.name  # written next to this report by --auth
        return [
            f"**Authentication.** {token_flow} Distribution ran without authentication, as in "
            "shared/bench/BASELINE.md: the cargohold figures include the cost of "
            f"authentication, Distribution's do not. [{auth_link}]({auth_link}) "
            "(`make bench-auth`) compares the two with authentication on both sides."
        ]
    main_link = DEFAULT_OUT.name  # written next to this report without --auth
    return [
        f"**Authentication on both sides.** {token_flow}",
        "Distribution ran with `auth: htpasswd` (`regbench.py distribution --htpasswd`): one "
        f"bcrypt entry of cost {servers.HTPASSWD_COST}, the cost `htpasswd -B` uses. Its 401 "
        "asks for Basic, so regbench sent the credentials on every request after the first "
        "401, and Distribution 2.8 checks the bcrypt hash of each request (it keeps no cache "
        "of verified credentials).",
        f"The same workloads with Distribution open: [{main_link}]({main_link}) (`make bench`).",
    ]


def basic_section(run: PassRun, doc: dict[str, Any] | None) -> str:
    """The report section of the second pass: cargohold's token flow against Basic."""
    if doc is None:
        return (
            "## What the token flow costs cargohold\n\n"
            f"The second pass failed (regbench exit code {run.result.returncode}); its log: "
            f"`{shorten(str(run.log_path))}`."
        )
    return report.render_auth_cost(doc, run.spec.candidate, run.spec.baseline)


def run(args: argparse.Namespace, invocation: list[str]) -> int:
    started = time.time()
    regbench = locate_regbench()
    args.rounds = args.rounds or (1 if args.quick else 3)
    extra = shlex.split(args.regbench_args)
    workloads = preflight(args, regbench, extra)
    if args.rounds < 3 and not args.quick:
        log("warning: fewer than 3 rounds; medians will not cancel much noise")
    out = output_path(args)
    results_dir = out.parent / "bench-results"
    env = sysinfo.collect(Path(args.tmpdir or tempfile.gettempdir()))

    runs: list[PassRun] = []
    for spec in plan(args):
        stem = out.stem if not runs else f"{out.stem}-{spec.key}"
        log(f"pass {len(runs) + 1}: {spec.candidate} vs {spec.baseline}")
        runs.append(
            run_pass(
                args,
                regbench,
                spec,
                workloads,
                extra,
                results_dir / f"{stem}.json",
                results_dir / f"{stem}.log",
            )
        )
        if runs[0].doc() is None:
            break
    env.load_end = os.getloadavg()

    first = runs[0]
    doc = first.doc()
    if doc is None:
        log(
            f"regbench failed (exit code {first.result.returncode}); its log: "
            f"{shorten(str(first.log_path))}"
        )
        return 2
    print(first.result.text_report)
    commands = [
        (
            "this run (`make bench-auth` runs it as `--auth`)"
            if args.auth
            else "this run (`make bench` runs it without options)",
            display_command(invocation),
        )
    ]
    extra_sections: list[str] = []
    extra_raw: list[str] = []
    problems = list(first.problems)
    for i, r in enumerate(runs, 1):
        what = f"pass {i}, " if len(runs) > 1 else ""
        for s in (r.cand, r.base):
            kind = (
                "docker-registry, as in shared/bench/BASELINE.md"
                + (", with --htpasswd" if s.credentials else "")
                if s.kind == "distribution"
                else "cargohold"
            )
            commands.append(
                (f"{what}started by it, {s.name} ({kind})", display_command(s.argv, s.env))
            )
        commands.append((f"{what}the measurement", display_command(r.result.argv)))
        if i > 1:
            print(r.result.text_report)
            problems += r.problems
            second = r.doc()
            if second is None:
                problems.append(f"pass {i} failed (regbench exit code {r.result.returncode})")
            elif report.errors_from_doc(second):
                problems.append(f"pass {i}: a workload failed (see that section)")
            extra_sections.append(basic_section(r, second))
            for path, what_file in ((r.json_path, "JSON"), (r.log_path, "progress log")):
                link = os.path.relpath(path, out.parent)
                extra_raw.append(f"[{link}]({link}): pass {i}'s {what_file}.")
    if PROCESS_PEAKS:
        extra_sections.append(peaks_section())
    commands.append(("at the end, for each server", "kill -TERM -- -PGID   # and -KILL after 10 s"))
    info = report.RunInfo(
        candidate=first.cand.name,
        baseline=first.base.name,
        quick=args.quick,
        standin=args.standin,
        started=started,
        duration_s=time.time() - started,
        env=env,
        servers=[i for r in runs for i in r.infos],
        commands=commands,
        svg_link=f"{out.stem}-ratios.svg",
        json_link=os.path.relpath(first.json_path, out.parent),
        json_path=shorten(str(first.json_path)),
        log_link=os.path.relpath(first.log_path, out.parent),
        problems=problems,
        title=(
            f"Benchmarks with authentication: {first.cand.name} (token flow) vs CNCF "
            "Distribution (htpasswd)"
            if args.auth
            else ""
        ),
        notes=auth_notes(args, out),
        extra_sections=extra_sections,
        extra_raw=extra_raw,
    )
    venv_python = None if args.standin else args.cargohold.parent / "python"
    env.versions = sysinfo.tool_versions(REPO, venv_python, regbench, shorten(str(regbench)))
    chart = f"{info.candidate} / Distribution: advantage per metric"
    if args.auth:
        chart = f"{info.candidate} (token) / Distribution (htpasswd): advantage per metric"
    svg_path = write_outputs(out, doc, info, chart)
    written = [out, svg_path, *(p for r in runs for p in (r.json_path, r.log_path))]
    log(f"wrote {', '.join(shorten(str(p)) for p in written)} in {time.time() - started:.0f}s")
    return 0 if all(r.ok for r in runs) and len(runs) == len(plan(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
