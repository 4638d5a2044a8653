#!/usr/bin/env python3
"""Benchmark cargohold against CNCF Distribution (Debian's docker-registry), side by side.

Starts both registries fresh (temporary data directories, free ports on
127.0.0.1, each in its own process group), runs regbench's `compare` on them
(every workload alternately on both, median of the rounds), stops them, and
writes a Markdown report with a ratio chart:

  <out>                              default docs/benchmarks.md
  <out dir>/<name>-ratios.svg        the chart, linked from the report
  <out dir>/bench-results/<name>.json, .log   regbench's raw JSON and progress log

regbench is the shared yardstick; it is looked up in $REGBENCH, else in
../shared/bench/regbench.py next to the repository.

Examples (from the repository root):
  .venv/bin/python bench/compare.py                   # full run (make bench), ~6-10 min
  .venv/bin/python bench/compare.py --quick           # CI smoke run, < 1 min, bench/.out/quick/
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

import report
import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
SCRATCH_OUT = REPO / "bench" / ".out"  # --quick / --standin reports, ignored by git
CANDIDATE, BASELINE, STANDIN = "cargohold", "distribution", "cargohold-standin"

# Small sizes and short loads: a smoke run that exercises every endpoint regbench uses.
QUICK_ARGS = [
    "--blob-size", "16MiB", "--chunk-size", "4MiB", "--pull-reps", "2", "--streams", "4",
    "--duration", "2", "--connections", "16", "--images", "40", "--image-repos", "5",
    "--tags", "300", "--page-size", "100", "--list-reps", "2",
    "--catalog-repos", "150", "--catalog-page", "50", "--mounts", "40", "--timeout", "120",
]  # fmt: skip
FULL_BLOB_SIZE = 256 << 20  # regbench's default --blob-size
QUICK_BLOB_SIZE = 16 << 20
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)


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
        help="Markdown report to write (default docs/benchmarks.md; with --quick or "
        "--standin: bench/.out/<mode>/benchmarks.md)",
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
    return (
        "-".join(m for m, on in (("quick", args.quick), ("standin", args.standin)) if on) or "full"
    )


def output_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out).resolve()
    if args.quick or args.standin:
        return SCRATCH_OUT / mode_name(args) / "benchmarks.md"
    return DEFAULT_OUT


def shorten(arg: str) -> str:
    """Paths inside the repository (or in ../shared) relative to the repository root."""
    if not arg.startswith("/"):
        return arg
    rel = os.path.relpath(arg, REPO)
    return rel if not rel.startswith("../..") else arg


def display_command(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    assignments = [
        f"{k}={'***' if SECRET_KEY.search(k) else shlex.quote(shorten(v))}"
        for k, v in (env or {}).items()
    ]
    return " ".join([*assignments, shlex.join(shorten(a) for a in argv)])


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


def write_outputs(out: Path, doc: dict[str, Any], info: report.RunInfo) -> Path:
    """Write the Markdown report and its SVG chart; return the chart's path."""
    rows = report.rows_from_doc(doc, info.candidate, info.baseline)
    date = time.strftime("%Y-%m-%d", time.localtime(info.started))
    rounds = doc.get("options", {}).get("rounds")
    subtitle = f"{date}, {rounds} round(s), {info.env.cpu_model}, {info.env.logical_cpus} CPUs"
    if info.quick:
        subtitle += ": QUICK SMOKE RUN, not a measurement"
    title = f"{info.candidate} / Distribution: advantage per metric"
    svg_path = out.with_name(info.svg_link)
    svg_path.write_text(report.render_svg(rows, title, subtitle, info.candidate))
    out.write_text(report.render_markdown(doc, info))
    return svg_path


@contextlib.contextmanager
def registries(
    args: argparse.Namespace, regbench: Path, workdir: Path
) -> Iterator[tuple[servers.Server, servers.Server]]:
    """Start the candidate and Distribution; stop both (process groups) on the way out."""
    running: list[servers.Server] = []
    try:
        cand_dir = workdir / (STANDIN if args.standin else CANDIDATE)
        if args.standin:
            cand = servers.start_distribution(
                regbench, cand_dir, name=STANDIN, timeout=args.start_timeout
            )
        else:
            cand = servers.start_cargohold(
                args.cargohold,
                cand_dir,
                workdir / f"{CANDIDATE}.log",
                name=CANDIDATE,
                extra_env=dict(item.split("=", 1) for item in args.server_env),
                timeout=args.start_timeout,
            )
        running.append(cand)
        base = servers.start_distribution(
            regbench, workdir / BASELINE, name=BASELINE, timeout=args.start_timeout
        )
        running.append(base)
        yield cand, base
    finally:
        with signals_ignored():
            for s in reversed(running):
                log(f"stopping {s.name} (process group {s.pid})")
                try:
                    s.stop()
                except servers.ServerError as exc:
                    log(f"warning: {exc}")


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
    json_path, log_path = results_dir / f"{out.stem}.json", results_dir / f"{out.stem}.log"

    workdir = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.tmpdir))
    env = sysinfo.collect(workdir)
    problems: list[str] = []
    failed = True
    try:
        with registries(args, regbench, workdir) as (cand, base):
            trees = {s.name: describe_tree(s) for s in (cand, base)}
            for s in (cand, base):
                log(f"{s.name}: {s.url}, PID {s.pid} ({trees[s.name]}), data {s.data_dir}")
            cmd = [sys.executable, str(regbench), "compare",
                   "--a", f"{cand.name}={cand.url}", "--a-pid", str(cand.pid),
                   "--b", f"{base.name}={base.url}", "--b-pid", str(base.pid),
                   "--rounds", str(args.rounds), "--order", args.order,
                   "--workloads", ",".join(workloads), "--json", str(json_path),
                   *(QUICK_ARGS if args.quick else []), *extra]  # fmt: skip
            results_dir.mkdir(parents=True, exist_ok=True)
            json_path.unlink(missing_ok=True)
            result = run_regbench(cmd, log_path)
            env.load_end = os.getloadavg()
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

    if result.returncode not in (0, 1) or not json_path.is_file():
        log(f"regbench failed (exit code {result.returncode}); its log: {shorten(str(log_path))}")
        return 2
    print(result.text_report)
    doc = json.loads(json_path.read_text())
    info = report.RunInfo(
        candidate=cand.name,
        baseline=base.name,
        quick=args.quick,
        standin=args.standin,
        started=started,
        duration_s=time.time() - started,
        env=env,
        servers=infos,
        commands=[
            ("this run (`make bench` runs it without options)", display_command(invocation)),
            (f"started by it, {cand.name}", display_command(cand.argv, cand.env)),
            (
                f"started by it, {base.name} (docker-registry, as in shared/bench/BASELINE.md)",
                display_command(base.argv),
            ),
            ("the measurement", display_command(result.argv)),
            ("at the end, for each server", "kill -TERM -- -PGID   # and -KILL after 10 s"),
        ],
        svg_link=f"{out.stem}-ratios.svg",
        json_link=os.path.relpath(json_path, out.parent),
        json_path=shorten(str(json_path)),
        log_link=os.path.relpath(log_path, out.parent),
        problems=problems,
    )
    venv_python = None if args.standin else args.cargohold.parent / "python"
    env.versions = sysinfo.tool_versions(REPO, venv_python, regbench, shorten(str(regbench)))
    svg_path = write_outputs(out, doc, info)
    written = ", ".join(shorten(str(p)) for p in (out, svg_path, json_path, log_path))
    log(f"wrote {written} in {time.time() - started:.0f}s")
    return 0 if result.returncode == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
