"""What the metrics middleware costs on the hottest path: manifest GET by tag.

    .venv/bin/python bench/metrics_overhead.py [--rounds 4] [--seconds 10] [--workers 1]

Starts `cargohold serve` (SQLite, a fresh data directory) once with `metrics.enabled`
false and once with it true, alternately, `--rounds` times each; pushes a small image,
takes a registry token, and runs wrk (-t2 -c32) against GET /v2/<repo>/manifests/latest
for `--seconds`. Prints each run's requests per second, the server's CPU time per request
(all its processes) and the medians' differences. Needs wrk. The machine should be
otherwise idle: the figures are only as good as that.

    .venv/bin/python bench/metrics_overhead.py --in-process [--rounds 6] [--requests 20000]

Calls the ASGI app itself (both variants in one process, alternately) with manifest GETs,
without a server or wrk: the Python side's CPU time per request, precise to about 0.1 µs
even on a busy machine. The difference is what the middleware costs."""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from typing import Any

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


def _manifest(config: bytes, layer: bytes) -> bytes:
    return json.dumps(
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


def _push(c: httpx.Client) -> None:
    config = b"{}"
    layer = os.urandom(1024)
    for blob in (config, layer):
        r = c.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": _digest(blob)}, content=blob)
        r.raise_for_status()
    manifest = _manifest(config, layer)
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


# -- in process: the Python side alone, without the HTTP server's noise -------------------


async def _lifespan(app: Any, state: dict[str, Any]) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    _TASKS.append(asyncio.ensure_future(app(scope, inbox.get, outbox.put)))
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {message}")


_TASKS: list[asyncio.Future[Any]] = []


async def _call(
    app: Any,
    state: dict[str, Any],
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    query: bytes = b"",
    body: bytes = b"",
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
        "state": dict(state),
    }
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    out = b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out += message.get("body", b"")

    await app(scope, receive, send)
    return status, out


async def in_process(rounds: int, requests: int) -> None:
    """The whole ASGI app (metrics on, and off) called directly for manifest GETs by tag
    with a bearer token: CPU microseconds per request, alternately."""
    from cargohold.app import make_asgi
    from cargohold.db.migrate import upgrade
    from cargohold.settings import load_settings

    data = tempfile.mkdtemp(prefix="metrics-bench-")
    upgrade(load_settings(data_dir=data).database.url)
    apps: dict[bool, tuple[Any, dict[str, Any]]] = {}
    for metrics in (False, True):
        settings = load_settings(
            data_dir=data,
            metrics={"enabled": metrics},
            gc={"enabled": False},
            auth={"audit": {"log_pulls": False}},
        )
        app_state: dict[str, Any] = {}
        apps[metrics] = (make_asgi(settings), app_state)
        await _lifespan(apps[metrics][0], app_state)
    app, state = apps[False]
    await state["runtime"].users.create("admin", PASSWORD, superuser=True)
    basic = (b"authorization", b"Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()))
    config, layer = b"{}", os.urandom(1024)
    for blob in (config, layer):
        status, _ = await _call(
            app,
            state,
            "POST",
            f"/v2/{NAME}/blobs/uploads/",
            [basic],
            f"digest={_digest(blob)}".encode(),
            blob,
        )
        assert status == 201
    manifest = _manifest(config, layer)
    kind = (b"content-type", b"application/vnd.oci.image.manifest.v1+json")
    status, _ = await _call(
        app, state, "PUT", f"/v2/{NAME}/manifests/latest", [basic, kind], body=manifest
    )
    assert status == 201
    query = f"service=cargohold&scope=repository:{NAME}:pull".encode()
    _, answer = await _call(app, state, "GET", "/v2/auth", [basic], query)
    token = json.loads(answer)["token"]
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"accept", b"application/vnd.oci.image.manifest.v1+json"),
        (b"user-agent", b"bench"),
    ]
    costs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for metrics in (False, True):
            app, state = apps[metrics]
            start = time.process_time()
            for i in range(requests):
                status, _ = await _call(app, state, "GET", f"/v2/{NAME}/manifests/latest", headers)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the periodic jobs run
            cost = (time.process_time() - start) / requests * 1e6
            assert status == 200
            costs[metrics].append(cost)
            state_name = "on " if metrics else "off"
            print(f"metrics {state_name}: {cost:6.2f} us CPU/request (in process)", flush=True)
    off, on = statistics.median(costs[False]), statistics.median(costs[True])
    print(f"median: off {off:.2f}, on {on:.2f} us/request: the middleware costs {on - off:.2f} us")
    shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="call the ASGI app directly instead (precise, no HTTP server, no wrk)",
    )
    parser.add_argument("--requests", type=int, default=20000, help="per round, --in-process")
    args = parser.parse_args()
    if args.in_process:
        asyncio.run(in_process(args.rounds, args.requests))
        os._exit(0)  # the apps' lifespans are still running
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
