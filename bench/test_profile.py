"""Tests of bench/hotpaths.py (the harness, not cargohold's speed).

Run from the repository root:  .venv/bin/python -m pytest -q bench/test_profile.py
The `slow` test runs `hotpaths.py --quick` (~30 s) end to end against a real `cargohold
serve` into a temporary directory and checks that the flamegraphs, raw stacks and summary
are written and that nothing is left running or on disk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import servers

REPO = Path(__file__).resolve().parent.parent
CARGOHOLD = REPO / ".venv" / "bin" / "cargohold"
PY_SPY = REPO / ".venv" / "bin" / "py-spy"


def _load_profile() -> ModuleType:
    # bench/hotpaths.py shares its name with the standard library's `profile`: load it
    # under another name rather than through `import profile`.
    spec = importlib.util.spec_from_file_location("bench_profile", REPO / "bench" / "hotpaths.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_profile"] = module
    spec.loader.exec_module(module)
    return module


bp = _load_profile()

MAIN = (
    "thread (100): MainThread;<module> (cargohold:6);serve (cargohold/cli.py:82);"
    "MPServer._spawn_asgi_lifespan_worker (granian/server/mp.py:249)"
)
APP = f"{MAIN};future_watcher (granian/_futures.py:15);app (cargohold/app.py:75)"


def test_summarise_splits_the_loop_thread_into_layers() -> None:
    raw = "\n".join(
        [
            f"{MAIN} 40",  # granian's native code on the loop thread
            f"{APP};Router.match (cargohold/web/registry/router.py:67) 20",
            f"{APP};Router.dispatch (cargohold/web/registry/router.py:100);"
            "get_manifest (cargohold/web/registry/manifests.py:15);"
            "ManifestService.get (cargohold/services/manifests.py:56);"
            "dumps (json/__init__.py:231) 10",  # stdlib: counts for its caller
            f"{APP};Response.__call__ (starlette/responses.py:172) 15",
            "thread (101): asyncio_0;_bootstrap (threading.py:995);"
            "_worker (concurrent/futures/thread.py:81) 200",  # waiting for work: idle
            "thread (101): asyncio_0;_bootstrap (threading.py:995);"
            "_worker (concurrent/futures/thread.py:83);"
            "_WorkItem.run (concurrent/futures/thread.py:58);"
            "FilesystemDriver._commit_sync (cargohold/storage/filesystem.py:137) 50",
            "thread (102) 80",  # a granian runtime thread: no Python frames
        ]
    )
    stacks = bp.parse_raw(raw)
    assert [s.tid for s in stacks] == [100, 100, 100, 100, 101, 101, 102]
    s = bp.summarise(stacks, loop_tid=100, expected=200)
    assert s.loop_samples == 85
    assert s.self_layers[bp.GLUE] == pytest.approx(20.0)
    assert s.self_layers[bp.ROUTER] == pytest.approx(10.0)
    assert s.self_layers[bp.SERVICES] == pytest.approx(5.0)
    assert s.self_layers[bp.STARLETTE] == pytest.approx(7.5)
    assert s.self_layers[bp.IDLE] == pytest.approx(100 * 115 / 200)
    assert sum(s.self_layers.values()) == pytest.approx(100.0)
    assert s.inclusive_layers[bp.HANDLER] == pytest.approx(5.0)
    assert s.inclusive_layers[bp.ROUTER] == pytest.approx(100 * 45 / 200)
    func, path, pct, line = s.top_self[0]
    assert (func, path, line) == (bp.NATIVE, "granian/server/mp.py", 249)
    assert pct == pytest.approx(20.0)
    inclusive = {f: pct for f, _, pct in s.top_inclusive}
    assert "serve" not in inclusive and "<module>" not in inclusive  # start-up frames
    assert inclusive["Router.match"] == pytest.approx(10.0)
    threads = {t.kind.split(" ")[0]: t for t in s.threads}
    assert threads["to_thread"].cores == pytest.approx(0.25)  # the queue wait is idle
    assert threads["granian"].cores == pytest.approx(0.4)
    assert threads["event"].cores == pytest.approx(85 / 200)


def test_parse_frame_and_layers() -> None:
    assert bp.parse_frame("Router.dispatch (cargohold/web/registry/router.py:87)") == (
        "Router.dispatch",
        "cargohold/web/registry/router.py",
        87,
    )
    assert bp.layer_of(("x", "cargohold/web/context.py", 1)) == bp.ROUTER
    assert bp.layer_of(("x", "cargohold/web/registry/blobs.py", 1)) == bp.HANDLER
    assert bp.layer_of(("x", "cargohold/db/session.py", 1)) == bp.DB
    assert bp.layer_of(("to_thread", "asyncio/threads.py", 1)) == bp.STORAGE
    assert bp.layer_of(("dumps", "json/__init__.py", 1)) is None


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CARGOHOLD, os.X_OK), reason="needs .venv/bin/cargohold")
@pytest.mark.skipif(not os.access(PY_SPY, os.X_OK), reason="needs .venv/bin/py-spy")
def test_quick_run_writes_flamegraphs_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "perf"
    argv = [
        sys.executable, str(REPO / "bench" / "hotpaths.py"), "--quick",
        "--out", str(out), "--tmpdir", str(tmp_path),
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode == 2 and "ptrace" in res.stderr:
        pytest.skip("py-spy may not attach to processes here")
    assert res.returncode == 0, res.stderr[-3000:]
    names = [p.name for p in bp.PATHS]
    for name in names:
        svg = out / f"{name}.svg"
        assert svg.stat().st_size > 1000 and "<svg" in svg.read_text()[:2000], name
        assert (out / f"{name}.raw.txt").stat().st_size > 0, name
    md = (out / "summary.md").read_text()
    for name in names:
        assert f"## {name}:" in md
    assert "| idle |" in md and "Quick smoke run" in md
    assert bp.AUTH_TEXT["token"] in md  # every load sent a registry token (--auth token)
    doc = json.loads((out / "summary.json").read_text())
    for p in doc["run"]["paths"]:
        assert p["error"] is None
        assert p["summary"]["loop_samples"] > 0
        assert sum(p["summary"]["self_layers"].values()) == pytest.approx(100.0)
        assert all(w["rate"]["requests"] > 0 for w in p["windows"])
    # the server's process group is gone, and so is the data directory
    groups = [int(g) for g in re.findall(r"process group (\d+)\)", res.stderr)]
    assert groups and not any(servers.group_members(g) for g in groups)
    assert not list(tmp_path.glob("cargohold-profile-*"))
