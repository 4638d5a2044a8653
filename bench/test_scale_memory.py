"""Tests of bench/scale.py and bench/memory.py (the harnesses, not cargohold's speed).

Run from the repository root:  .venv/bin/python -m pytest -q bench/test_scale_memory.py
The two `slow` tests run each script's --quick mode end to end against a real
`cargohold serve` (skipped when .venv/bin/cargohold is missing) and check that the
report is written, every answer checked out, and nothing is left running or on disk.
The scale test adds PostgreSQL when a server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import memory
import procstat
import pytest
import scale
import servers

REPO = Path(__file__).resolve().parent.parent
CARGOHOLD = REPO / ".venv" / "bin" / "cargohold"
PG_ADMIN_URL = os.environ.get(
    "CARGOHOLD_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

needs_cargohold = pytest.mark.skipif(
    not os.access(CARGOHOLD, os.X_OK), reason="needs .venv/bin/cargohold (make install)"
)


def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _stopped_groups(stderr: str) -> list[int]:
    return [int(m) for m in re.findall(r"process group (\d+)\)", stderr)]


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert scale.percentile(values, 50) == 50.0
    assert scale.percentile(values, 99) == 99.0
    assert scale.percentile(values, 100) == 100.0
    assert scale.percentile([3.0], 99) == 3.0
    stats = scale.Stats.of([0.001, 0.002, 0.003])
    assert stats.p50_ms == pytest.approx(2.0)
    assert stats.max_ms == pytest.approx(3.0)


def test_rounds_are_combined_by_their_medians() -> None:
    mdef = next(m for m in scale.MEASUREMENTS if m.name == "tags_page")
    rounds = [
        scale.Result("", "", scale.Stats.of([0.001] * 98 + [p99, p99]))
        for p99 in (0.004, 0.030, 0.005)  # one round hit by a noisy neighbour
    ]
    r = scale.combine(mdef, rounds)
    assert r.stats is not None
    assert r.stats.p99_ms == pytest.approx(5.0)  # the median round, not the noisy one
    assert r.stats.n == 300
    assert r.met is True
    assert scale.per_round(r) == "4.00 / 30.0 / 5.00"


def test_dataset_is_consistent() -> None:
    sizes = scale.Sizes(repos=20, tags=300, blobs=200, samples=1, full_reps=1)
    data = scale.make_dataset(sizes)
    assert data.repos[0] == scale.BIG_REPO
    assert len(set(data.repos)) == 20
    assert len(set(data.big_tags)) == 300
    assert data.big_tags != sorted(data.big_tags)  # not inserted in name order
    assert len(set(data.digests)) == 200
    counts = {t: sum(1 for _ in rows) for t, _, rows in scale.table_rows(data, "ts")}
    assert counts["repository_blob"] == 200
    assert counts["tag"] == 300 + 19  # bench/big's tags, and `latest` in every other one
    for repo_id, digest, payload, config, layer in data.manifests:
        assert digest == "sha256:" + hashlib.sha256(payload).hexdigest()
        # a manifest references only blobs linked to its own repository
        assert data.repo_of_blob(config) == repo_id
        assert data.repo_of_blob(layer) == repo_id
        assert data.digests[layer - 1] in payload.decode()


def test_summarise_folded_skips_idle_and_scaffolding() -> None:
    raw = "\n".join(
        [
            "<module> (cargohold:6);serve (cargohold/cli.py:82);"
            "MPServer._spawn_asgi_lifespan_worker (granian/server/mp.py:249) 70",
            " 50",  # a thread with no Python frames
            "<module> (cargohold:6);app (cargohold/app.py:10);list_tags (cargohold/web/l.py:3);"
            "execute (sqlalchemy/orm/session.py:9) 20",
            "<module> (cargohold:6);app (cargohold/app.py:10);list_tags (cargohold/web/l.py:4) 10",
        ]
    )
    prof = scale.summarise_folded(raw)
    assert (prof.samples, prof.busy) == (150, 30)
    names = dict(prof.inclusive)
    assert "<module>" not in " ".join(names)
    assert names["execute (sqlalchemy/orm/session.py)"] == pytest.approx(100 * 20 / 30)
    assert "app (cargohold/app.py)" not in names  # on every busy stack: left out
    leaf, share = prof.leaves[0]
    assert leaf == "execute (sqlalchemy/orm/session.py)"
    assert share == pytest.approx(100 * 20 / 30)


def test_pattern_is_one_endless_stream() -> None:
    pattern = memory.Pattern(seed=1, period=10)
    stream = bytes(pattern.view(0, 10)) * 5
    pieces = list(pattern.pieces(3, 31, piece=4))
    assert all(len(p) <= 4 for p in pieces)
    assert b"".join(bytes(p) for p in pieces) == stream[3:34]
    spec = memory.describe_blob(pattern, 25)
    assert spec.digest == "sha256:" + hashlib.sha256(stream[:25]).hexdigest()
    assert spec.range_digest == "sha256:" + hashlib.sha256(stream[1:25]).hexdigest()


def test_memory_sizes_and_urls() -> None:
    assert memory.parse_size("4GiB") == 4 << 30
    assert memory.parse_size("64MiB") == 64 << 20
    assert memory.parse_size("512") == 512
    assert memory.with_query("/v2/a/b/blobs/uploads/u", digest="sha256:x") == (
        "/v2/a/b/blobs/uploads/u?digest=sha256:x"
    )
    assert memory.with_query("/v2/u?_state=s", digest="d") == "/v2/u?_state=s&digest=d"


def test_sampler_and_cpu_meter_see_this_process() -> None:
    sampler = procstat.Sampler(os.getpid(), interval=0.01)
    sampler.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.15:  # some CPU for the meter
        hashlib.sha256(b"x" * 100_000).digest()
    sampler.stop()
    window = sampler.window(t0, time.monotonic())
    assert window is not None and window.samples >= 3
    assert window.peak_rss >= window.median_rss > 1 << 20
    assert window.peak_anon > 0
    assert procstat.reset_peaks(os.getpid())  # VmHWM back to the current RSS
    rss = procstat.process_rss(os.getpid())
    assert rss is not None and procstat.tree_peak(os.getpid()) >= rss.total
    use = procstat.CpuMeter(os.getpid()).stop()
    assert use.wall_s > 0 and use.server_pct >= 0


# --------------------------------------------------------------------------------------
# End to end: the quick modes against a real cargohold
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_cargohold
def test_scale_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks-scale.md"
    databases = ["--database", "sqlite"]
    if _postgres_up():
        databases += ["--database", PG_ADMIN_URL]
    argv = [
        sys.executable, str(REPO / "bench" / "scale.py"), "--quick", *databases,
        "--out", str(out), "--tmpdir", str(tmp_path), "--profile", "none", "--rounds", "2",
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    md = out.read_text()
    for needle in ("# Scale benchmark", "## Goals", "| tags_page |", "## SQLite", "## Data set"):
        assert needle in md, needle
    assert "Quick smoke run" in md
    # authenticated as the superuser; the password is not in the report
    assert "every request carried the Basic credentials" in md
    assert "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD=*** " in md
    doc = json.loads((out.parent / "bench-results" / "scale.json").read_text())
    backends = doc["run"]["backends"]
    assert len(backends) == len(databases) // 2
    for b in backends:
        assert b["error"] is None
        assert [r["name"] for r in b["results"]] == [m.name for m in scale.MEASUREMENTS]
        assert all(r["stats"]["n"] > 0 and len(r["rounds"]) == 2 for r in b["results"])
    # every server stopped, every data directory and temporary database gone
    groups = _stopped_groups(res.stderr)
    assert len(groups) == len(backends)
    assert not any(servers.group_members(g) for g in groups)
    assert not list(tmp_path.glob("cargohold-scale-*"))
    if len(backends) == 2:
        import psycopg

        dropped = re.findall(r"dropped database (\S+)", res.stderr)
        assert dropped
        with psycopg.connect(PG_ADMIN_URL) as conn:
            rows = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dropped[0],)
            ).fetchall()
        assert not rows


@pytest.mark.slow
@needs_cargohold
def test_memory_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks-memory.md"
    argv = [
        sys.executable, str(REPO / "bench" / "memory.py"), "--quick", "--rev", "HEAD",
        "--out", str(out), "--tmpdir", str(tmp_path),
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    md = out.read_text()
    assert "# Memory benchmark: a 64 MiB blob" in md
    assert "(--rev HEAD)" in md  # the server ran the commit's src/, exported
    assert "PYTHONPATH=" in md
    assert "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD=*** " in md
    assert "CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS=3600" in md
    for phase in memory.PHASES:
        line = next(x for x in md.splitlines() if x.startswith(f"| {phase.name} |"))
        assert "failed" not in line
    doc = json.loads((out.parent / "bench-results" / "memory.json").read_text())
    assert [p["name"] for p in doc["phases"]] == [p.name for p in memory.PHASES]
    assert all(p["error"] is None and p["delta"] is not None for p in doc["phases"])
    assert all(p["kernel_delta"] is not None for p in doc["phases"])
    assert len(doc["series"]) > 20
    groups = _stopped_groups(res.stderr)
    assert len(groups) == 1 and not servers.group_members(groups[0])
    assert not list(tmp_path.glob("cargohold-memory-*"))


@pytest.mark.slow
def test_py_spy_profile_of_a_busy_process(tmp_path: Path) -> None:
    spy = scale.py_spy()
    if spy is None:
        pytest.skip("py-spy not installed")
    code = (
        "import hashlib\ndef spin():\n    while True: hashlib.sha256(b'x' * 1000).digest()\nspin()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        prof = scale.profile(spy, proc.pid, tmp_path / "p.txt", lambda: time.sleep(1.0))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if prof is None:
        pytest.skip("py-spy could not attach (ptrace not permitted here)")
    assert prof.samples > 0 and prof.busy > 0
    assert any(name.startswith("spin") for name, _ in prof.leaves + prof.inclusive)
