"""What the metrics middleware costs on the hottest path: manifest GET by tag.

    .venv/bin/python bench/metrics_overhead.py [--rounds 4] [--seconds 10] [--workers 1]

Starts `cargohold serve` (SQLite, a fresh data directory) once with `metrics.enabled`
false and once with it true, alternately, `--rounds` times each; pushes a small image,
takes a registry token, and runs wrk (-t2 -c32) against GET /v2/<repo>/manifests/latest
for `--seconds`. Prints each run's requests per second and the medians' difference.
Needs wrk. The machine should be otherwise idle: the figures are only as good as that."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-1"
NAME = "admin/bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push(c: httpx.Client) -> None:
    config = b"{}"
    layer = os.urandom(1024)
    for blob in (config, layer):
        r = c.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": _digest(blob)}, content=blob)
        r.raise_for_status()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    r = c.put(
        f"/v2/{NAME}/manifests/latest",
        content=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    r.raise_for_status()


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in the group (the server and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run_once(metrics: bool, seconds: int, workers: int) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request."""
    data = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update(
        CARGOHOLD_DATA_DIR=str(data),
        CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD=PASSWORD,
        CARGOHOLD_METRICS__ENABLED=str(metrics).lower(),
        CARGOHOLD_SERVER__WORKERS=str(workers),
        CARGOHOLD_GC__ENABLED="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cargohold", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/instance", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        with httpx.Client(base_url=url, auth=("admin", PASSWORD), timeout=30) as c:
            _push(c)
            token = c.get(
                "/v2/auth", params={"service": "cargohold", "scope": f"repository:{NAME}:pull"}
            ).json()["token"]
        headers = [
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ]
        target = f"{url}/v2/{NAME}/manifests/latest"
        subprocess.run(
            ["wrk", "-t2", "-c32", "-d2s", *headers, target], check=True, capture_output=True
        )  # warm-up: caches, token verification
        cpu = _group_cpu_seconds(proc.pid)
        out = subprocess.run(
            ["wrk", "-t2", "-c32", f"-d{seconds}s", *headers, target],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if "Non-2xx" in out:
            raise RuntimeError(f"errors during the run:\n{out}")
        cpu = _group_cpu_seconds(proc.pid) - cpu
        found = re.search(r"(\d+) requests in", out)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert found is not None and rate is not None, out
        return float(rate.group(1)), cpu / int(found.group(1)) * 1e6
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing", file=sys.stderr)
        return 2
    rates: dict[bool, list[float]] = {False: [], True: []}
    costs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for metrics in (False, True):
            rate, cost = run_once(metrics, args.seconds, args.workers)
            rates[metrics].append(rate)
            costs[metrics].append(cost)
            state = "on " if metrics else "off"
            print(f"metrics {state}: {rate:9.0f} req/s, {cost:6.1f} us CPU/request", flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"median rate: off {off:.0f}, on {on:.0f} req/s ({100 * (on - off) / off:+.1f}%)")
    off, on = statistics.median(costs[False]), statistics.median(costs[True])
    print(f"median CPU: off {off:.1f}, on {on:.1f} us/request ({100 * (on - off) / off:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
