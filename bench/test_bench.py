"""Tests of the benchmark harness (not of cargohold).

Run from the repository root:  .venv/bin/python -m pytest -q bench/
The last test starts real servers (docker-registry, and regbench's in-memory fake
registry in place of cargohold) on free loopback ports; it is skipped when
docker-registry, wrk or ../shared/bench is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import compare
import pytest
import report
import servers
import sysinfo

# --------------------------------------------------------------------------------------
# A small regbench `compare` document (the shape of `regbench.py compare --json`)
# --------------------------------------------------------------------------------------


def _target(values: dict[str, list[float]], error: str | None = None) -> dict[str, Any]:
    keys = list(values)
    rounds = len(next(iter(values.values()))) if values else 0
    return {
        "error": error,
        "samples": [
            {"values": {k: values[k][i] for k in keys}, "info": {"pages": 2}} for i in range(rounds)
        ],
        "median": {k: sorted(v)[len(v) // 2] if v else None for k, v in values.items()},
        "min": {k: min(v, default=None) for k, v in values.items()},
        "max": {k: max(v, default=None) for k, v in values.items()},
        "client_cpu_pct": 7.0,
        "server_cpu_pct": 150.0,
        "other_cpu_pct": 3.0,
        "server_rss_peak_mib": 60.0,
    }


def _ratios(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, Any]:
    out = {}
    for k in a:
        rr = [x / y for x, y in zip(a[k], b[k], strict=True)] if a[k] and b[k] else []
        ma, mb = sorted(a[k])[len(a[k]) // 2] if a[k] else None, sorted(b[k])[len(b[k]) // 2]
        out[k] = {
            "median_ratio": ma / mb if ma is not None else None,
            "paired_median_ratio": sorted(rr)[len(rr) // 2] if rr else None,
            "round_ratios": rr,
        }
    return out


def make_doc() -> dict[str, Any]:
    rps_c, rps_d = [25000.0, 26000.0, 24000.0], [2500.0, 2600.0, 2400.0]
    p99_c, p99_d = [4.0, 5.0, 4.5], [120.0, 110.0, 130.0]
    tags_d = [700.0, 720.0, 710.0]
    return {
        "regbench": "1.0",
        "options": {"rounds": 3, "order": "abba"},
        "targets": [
            {"name": "cargohold", "server_peak_rss_mib": 80.0, "server_vmhwm_mib": 81.0},
            {"name": "distribution", "server_peak_rss_mib": 70.0, "server_vmhwm_mib": None},
        ],
        "workloads": {
            "manifest_get": {
                "metrics": [
                    {"key": "rps", "unit": "req/s", "higher_is_better": True, "label": "c=64"},
                    {"key": "p99", "unit": "ms", "higher_is_better": False, "label": "p99"},
                ],
                "targets": {
                    "cargohold": _target({"rps": rps_c, "p99": p99_c}),
                    "distribution": _target({"rps": rps_d, "p99": p99_d}),
                },
                "ratios_a_over_b": _ratios(
                    {"rps": rps_c, "p99": p99_c}, {"rps": rps_d, "p99": p99_d}
                ),
            },
            "tag_list": {
                "metrics": [
                    {"key": "tag_put", "unit": "tags/s", "higher_is_better": True, "label": "10000"}
                ],
                "targets": {
                    "cargohold": _target(
                        {"tag_put": []}, error="round 1: VerificationError: <bad>"
                    ),
                    "distribution": _target({"tag_put": tags_d}),
                },
                "ratios_a_over_b": _ratios({"tag_put": []}, {"tag_put": tags_d}),
            },
        },
    }


def make_info(**overrides: Any) -> report.RunInfo:
    env = sysinfo.Environment(
        cpu_model="Test CPU",
        logical_cpus=2,
        cpu_flags=["sha_ni"],
        memory_gib=24.0,
        os_name="Debian",
        kernel="Linux 6",
        python="CPython 3.11.7",
        data_fs="ext4",
        load_start=(0.1, 0.2, 0.3),
        load_end=(1.0, 0.5, 0.4),
        versions={"docker-registry": "2.8.2"},
    )
    fields: dict[str, Any] = {
        "candidate": "cargohold",
        "baseline": "distribution",
        "quick": False,
        "standin": False,
        "started": 1_700_000_000.0,
        "duration_s": 300.0,
        "env": env,
        "servers": [report.ServerInfo("cargohold", "cargohold", "http://x", 1, "cmd", "1 python")],
        "commands": [("the run", ".venv/bin/python bench/compare.py")],
        "svg_link": "benchmarks-ratios.svg",
        "json_link": "bench-results/benchmarks.json",
        "json_path": "docs/bench-results/benchmarks.json",
        "log_link": "bench-results/benchmarks.log",
    }
    fields.update(overrides)
    return report.RunInfo(**fields)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def test_rows_and_advantage_direction() -> None:
    rows = {
        (r.workload, r.metric): r
        for r in report.rows_from_doc(make_doc(), "cargohold", "distribution")
    }
    rps, p99 = rows["manifest_get", "rps"], rows["manifest_get", "p99"]
    assert rps.ratio == pytest.approx(10.0)
    assert rps.advantage == pytest.approx(10.0)
    assert p99.ratio == pytest.approx(4.5 / 120.0)
    assert p99.advantage == pytest.approx(120.0 / 4.5)  # lower is better: inverted
    lo, hi = p99.advantage_range or (0.0, 0.0)
    assert lo <= 120.0 / 4.5 <= hi
    assert rows["tag_list", "tag_put"].advantage is None
    assert "better" in report.verdict(rps)


def test_verdict_noise_band() -> None:
    row = report.rows_from_doc(make_doc(), "cargohold", "distribution")[0]
    same = report.Row(**{**row.__dict__, "ratio": 1.05})
    worse = report.Row(**{**row.__dict__, "ratio": 0.5})
    assert report.verdict(same).startswith("same within noise")
    assert report.verdict(worse).startswith("2.00")
    assert "worse" in report.verdict(worse)


def test_markdown_has_the_required_sections() -> None:
    md = report.render_markdown(make_doc(), make_info())
    for needle in (
        "# Benchmarks: cargohold vs CNCF Distribution",
        "![cargohold/Distribution advantage per metric](benchmarks-ratios.svg)",
        "## Results",
        "| manifest_get | rps | req/s | higher | **25000** (24000..26000) | **2500** (2400..2600)",
        "**10.0**",
        "## CPU and memory",
        "## Errors",
        "`tag_list` on **cargohold**: `round 1: VerificationError: <bad>`",
        "## Machine",
        "Test CPU, 2 logical CPUs (flags: sha_ni)",
        "## Commands",
        ".venv/bin/python bench/compare.py",
        "[bench-results/benchmarks.json](bench-results/benchmarks.json)",
        "**1** have no result",
    ):
        assert needle in md, needle
    assert "Quick smoke run" not in md


def test_rewrite_keeps_the_other_benchmarks_sections(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    gc = "<!-- gc-benchmark:begin -->\n## GC\n<!-- gc-benchmark:end -->\n"
    prod = "<!-- production-benchmark:begin -->\n## Prod\n<!-- production-benchmark:end -->\n"
    out.write_text("# old report\n\n" + gc + "\n" + prod)
    compare.write_outputs(out, make_doc(), make_info(), "chart")
    text = out.read_text()
    assert "# old report" not in text
    assert text.startswith("# Benchmarks: cargohold vs CNCF Distribution")
    assert text.endswith("\n" + gc + "\n" + prod)


def test_markdown_marks_quick_and_standin_runs() -> None:
    md = report.render_markdown(make_doc(), make_info(quick=True, standin=True))
    assert "Quick smoke run" in md
    assert "Stand-in run" in md


def test_svg_is_well_formed_and_escaped() -> None:
    rows = report.rows_from_doc(make_doc(), "cargohold", "distribution")
    svg = report.render_svg(rows, "title <&>", "sub", "cargohold")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = "".join(root.itertext())
    assert "title <&>" in text
    assert "manifest_get · rps" in text
    assert "tag_list" not in text  # no result, no bar
    assert f"10.00{report.X}" in text


def test_svg_without_results() -> None:
    svg = report.render_svg([], "t", "s")
    assert "no results" in "".join(ET.fromstring(svg).itertext())


# --------------------------------------------------------------------------------------
# compare: options and helpers
# --------------------------------------------------------------------------------------


def test_output_paths() -> None:
    parse = compare.build_parser().parse_args
    assert compare.output_path(parse([])) == compare.DEFAULT_OUT
    assert (
        compare.output_path(parse(["--quick"])) == compare.SCRATCH_OUT / "quick" / "benchmarks.md"
    )
    assert compare.output_path(parse(["--quick", "--standin"])).parent.name == "quick-standin"
    assert compare.output_path(parse(["--quick", "--out", "x/r.md"])) == Path("x/r.md").resolve()


def test_display_command_shortens_paths_and_hides_secrets() -> None:
    cmd = compare.display_command(
        [str(compare.REPO / ".venv/bin/cargohold"), "serve", "/proc/a b"],
        {"CARGOHOLD_DATA_DIR": "/tmp/d", "CARGOHOLD_ADMIN_PASSWORD": "hunter2"},
    )
    env = "CARGOHOLD_DATA_DIR=/tmp/d CARGOHOLD_ADMIN_PASSWORD=***"
    assert cmd == env + " .venv/bin/cargohold serve '/proc/a b'"


def test_parse_size_and_disk_estimate() -> None:
    assert compare.parse_size("256MiB") == 256 << 20
    assert compare.parse_size("1GiB") == 1 << 30
    assert compare.parse_size("10MB") == 10_000_000
    args = compare.build_parser().parse_args(["--rounds", "3"])
    all_workloads = ["blob_push_mono", "blob_push_chunked", "blob_pull", "catalog"]
    assert compare.needed_disk(args, all_workloads, []) > 14 * (256 << 20)
    small = compare.needed_disk(args, all_workloads, ["--blob-size", "1MiB"])
    assert small < 300 << 20
    assert compare.needed_disk(args, ["catalog"], []) == 256 << 20


def test_locate_regbench_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REGBENCH", str(tmp_path / "missing.py"))
    with pytest.raises(compare.SetupError, match="REGBENCH"):
        compare.locate_regbench()
    fake = tmp_path / "regbench.py"
    fake.write_text("")
    monkeypatch.setenv("REGBENCH", str(fake))
    assert compare.locate_regbench() == fake


def test_missing_cargohold_is_a_setup_error(tmp_path: Path) -> None:
    args = compare.build_parser().parse_args(["--cargohold", str(tmp_path / "nope")])
    args.rounds = 3
    with pytest.raises(compare.SetupError, match="cargohold not found"):
        compare.preflight(args, Path("/nonexistent/regbench.py"), [])


# --------------------------------------------------------------------------------------
# servers: /proc helpers and stopping a process group
# --------------------------------------------------------------------------------------


def test_socket_owner_is_found() -> None:
    with socket.socket() as s:
        s.bind((servers.HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        assert servers.listening_inodes(port)
        assert servers.socket_owners(port, [os.getpid()]) == [os.getpid()]
    assert not servers.listening_inodes(port)


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    # ignores SIGTERM in the parent, so that the SIGKILL step is exercised too
    code = f"import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); {script}"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(servers.process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = servers.process_tree(proc.pid)
    assert len(tree) == 2
    server = servers.Server("t", "test", 1, proc.pid, tmp_path, tmp_path / "log", ["x"], popen=proc)
    started = time.monotonic()
    server.stop(timeout=1.0)
    assert time.monotonic() - started < 8
    assert proc.returncode == -signal.SIGKILL
    assert not any(servers.is_running(p) for p in tree)
    assert not servers.group_members(proc.pid)


# --------------------------------------------------------------------------------------
# End to end: the real start/stop path with a fake cargohold
# --------------------------------------------------------------------------------------

SHARED = compare.REPO.parent / "shared" / "bench"
FAKE_REGISTRY = SHARED / "tests" / "fake_registry.py"


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("wrk") and FAKE_REGISTRY.is_file()),
    reason="needs docker-registry, wrk and ../shared/bench",
)
def test_end_to_end_with_a_fake_cargohold(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "cargohold"
    exe.parent.mkdir()
    exe.write_text(
        "#!/bin/sh\n"
        '[ "$1" = serve ] && [ "$2" = --host ] && [ "$4" = --port ] || exit 64\n'
        '[ -d "$CARGOHOLD_DATA_DIR" ] || exit 65\n'
        f'exec {sys.executable} {FAKE_REGISTRY} --port "$5" --corrupt "$FAKE_CORRUPT"\n'
    )
    exe.chmod(0o755)
    out = tmp_path / "docs" / "benchmarks.md"
    argv = [
        sys.executable, str(compare.REPO / "bench" / "compare.py"), "--quick",
        "--cargohold", str(exe), "--server-env", "FAKE_CORRUPT=tags", "--out", str(out),
        "--workloads", "blob_push_chunked,manifest_get,tag_list,catalog",
        "--tmpdir", str(tmp_path),
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    # the fake registry was told to drop a tag: tag_list fails, the rest is measured
    assert res.returncode == 1, res.stderr
    md = out.read_text()
    assert "`tag_list` on **cargohold**" in md
    assert "| manifest_get | rps |" in md
    doc = json.loads((out.parent / "bench-results" / "benchmarks.json").read_text())
    assert list(doc["workloads"]) == ["blob_push_chunked", "manifest_get", "tag_list", "catalog"]
    assert doc["workloads"]["catalog"]["targets"]["cargohold"]["error"] is None
    assert doc["targets"][0]["server_peak_rss_mib"]
    ET.fromstring((out.parent / "benchmarks-ratios.svg").read_text())
    # both servers are gone, and only the logs of the failed run are left
    for line in res.stderr.splitlines():
        if "stopping" in line:
            pgid = int(line.rsplit("process group ", 1)[1].rstrip(")"))
            assert not servers.group_members(pgid)
    leftovers = [p for p in tmp_path.glob("cargohold-bench-*/**/*") if p.is_file()]
    assert leftovers and all(p.suffix == ".log" for p in leftovers)


def test_caveat_when_pagination_differs() -> None:
    doc = make_doc()
    samples = doc["workloads"]["manifest_get"]["targets"]["distribution"]["samples"]
    samples[-1]["info"] = {"pages": 1, "note": "server ignored n=100: whole list in one page"}
    md = report.render_markdown(doc, make_info())
    assert "**Caveat, `manifest_get`**: cargohold answered the paginated walk in 2 page(s)" in md
    assert "(server ignored n=100: whole list in one page)" in md
    assert "Caveat" not in report.render_markdown(make_doc(), make_info())
