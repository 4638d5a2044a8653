#!/usr/bin/env python3
"""Garbage collection benchmark: collector throughput on a store of 100,000 garbage blobs,
and the latency of pushes and pulls while the collector runs, against the same workload
with the collector off.

(Named gcbench.py, not gc.py: the bench scripts run with bench/ first on sys.path, where a
gc.py would stand in for Python's own `gc` module.)

For each database asked for (SQLite by default; `--database postgresql://USER@HOST:PORT/DB`
creates a fresh database on that server and drops it afterwards):

  1. `cargohold migrate` on an empty data directory;
  2. seeds --blobs garbage blobs straight into the store, not through the registry (that
     would take an hour): rows inserted into the `blob` table (sqlite3 executemany or
     psycopg COPY, one transaction) with touched_at two hours back, and a file of 200 to
     2,000 random bytes per blob written where the filesystem driver keeps it
     (blobs/sha256/<xx>/<hex>). Nothing links or references them: all are collectable
     under the default one-hour grace period;
  3. latency, collector off: `cargohold serve` (one worker, gc.enabled false) on a free
     port; one client, one request at a time, for --seconds: a push (3 new blobs of 1-4
     KiB, monolithic POST+PUT each, then the manifest by tag: 8 requests) then two pulls
     (manifest by tag plus its 3 blobs, every digest checked); each operation timed whole;
  4. latency, collector on: the same server with gc.enabled true and
     gc.interval_seconds 0.1, so that its one worker process serves the requests and
     collects the garbage at once; how many blobs it collected during the window is read
     from gc_run;
  5. throughput: the garbage topped up to --blobs again, then the collector alone, in this
     process (Collector.run_once until a pass finds nothing), default settings
     (gc.batch_size 200): blobs and bytes collected per second, wall clock;
  6. checks: no garbage row left, one file per remaining row (the only listing of the
     storage folder), every pushed image still pulls.

Writes the "Garbage collection" section of docs/benchmarks.md (between markers that
bench/compare.py keeps when it rewrites the file) and docs/bench-results/gc.json (with
--quick: bench/.out/quick/). Full size takes a few minutes per database.

Examples (from the repository root):
  .venv/bin/python bench/gcbench.py                                  # SQLite
  .venv/bin/python bench/gcbench.py --database sqlite \\
      --database postgresql://postgres@127.0.0.1:5432/postgres       # both
  .venv/bin/python bench/gcbench.py --quick                          # smoke run

Exit status: 0 measured; 1 a wrong answer or a server crash; 2 the benchmark could not run.
Timing never makes it fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
EXE = REPO / ".venv" / "bin" / "cargohold"
OUT = REPO / "docs" / "benchmarks.md"
RAW = REPO / "docs" / "bench-results" / "gc.json"
QUICK_DIR = REPO / "bench" / ".out" / "quick"
BEGIN, END = "<!-- gc-benchmark:begin -->", "<!-- gc-benchmark:end -->"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BENCH_REPO = "bench/gc-latency"
PACE = 1.0  # the setting gc.pace's default


class Wrong(Exception):
    """A wrong answer from the registry."""


# -- seeding -----------------------------------------------------------------------------


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def seed_garbage(url: str, root: Path, count: int, rng: random.Random) -> int:
    """`count` unreferenced blobs, rows and files, two hours old; their bytes."""
    when = datetime.now(UTC) - timedelta(hours=2)
    rows = []
    total = 0
    for _ in range(count):
        data = rng.randbytes(rng.randint(200, 2000))
        hexdigest = hashlib.sha256(data).hexdigest()
        folder = root / "blobs" / "sha256" / hexdigest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / hexdigest).write_bytes(data)
        rows.append((f"sha256:{hexdigest}", len(data)))
        total += len(data)
    if url.startswith("sqlite"):
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as conn, conn:
            conn.executemany(
                "INSERT INTO blob (digest, size, created_at, touched_at) VALUES (?, ?, ?, ?)",
                [(d, s, stamp, stamp) for d, s in rows],
            )
    else:
        import psycopg

        copy_rows = "COPY blob (digest, size, created_at, touched_at) FROM STDIN"
        with psycopg.connect(url) as pg:
            cursor = pg.cursor()
            with cursor.copy(copy_rows) as copy:
                for d, s in rows:
                    copy.write_row((d, s, when, when))
    return total


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as conn:
            return conn.execute(statement).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(statement).fetchall())


GARBAGE = """SELECT COUNT(*) FROM blob b
   WHERE NOT EXISTS (SELECT 1 FROM repository_blob x WHERE x.blob_id = b.id)
     AND NOT EXISTS (SELECT 1 FROM manifest_blob x WHERE x.blob_id = b.id)"""


@contextlib.contextmanager
def database(spec: str, workdir: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in workdir, or a new PostgreSQL database."""
    if spec == "sqlite":
        yield f"sqlite:///{workdir / 'cargohold.db'}"
        return
    import psycopg

    name = f"cargohold_gcbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(spec, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(spec)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(spec, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the workload ------------------------------------------------------------------------


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    """One keep-alive connection, Basic credentials, one request at a time."""

    def __init__(self, server: servers.Server) -> None:
        self.conn = http.client.HTTPConnection(servers.HOST, server.port, timeout=120)
        self.headers = server.authorization

    def call(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        self.conn.request(method, path, body=body, headers={**self.headers, **headers})
        answer = self.conn.getresponse()
        data = answer.read()
        return answer.status, answer, data

    def expect(
        self, status: int, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[http.client.HTTPResponse, bytes]:
        got, answer, data = self.call(method, path, body, **headers)
        if got != status:
            raise Wrong(f"{method} {path}: {got} {data[:200]!r}")
        return answer, data


def push(c: Client, rng: random.Random, tag: str) -> None:
    config = json.dumps({"os": "linux", "nonce": rng.random()}).encode()
    layers = [rng.randbytes(rng.randint(1024, 4096)) for _ in range(2)]
    for blob in (config, *layers):
        answer, _ = c.expect(202, "POST", f"/v2/{BENCH_REPO}/blobs/uploads/")
        location = urlsplit(answer.headers["Location"])
        sep = "&" if location.query else "?"
        path = f"{location.path}{'?' + location.query if location.query else ''}"
        c.expect(
            201,
            "PUT",
            f"{path}{sep}digest={sha256(blob)}",
            blob,
            **{"Content-Type": "application/octet-stream"},
        )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers
            ],
        }
    ).encode()
    c.expect(
        201, "PUT", f"/v2/{BENCH_REPO}/manifests/{tag}", manifest, **{"Content-Type": OCI_MANIFEST}
    )


def pull(c: Client, tag: str) -> None:
    _, body = c.expect(200, "GET", f"/v2/{BENCH_REPO}/manifests/{tag}", Accept=OCI_MANIFEST)
    doc = json.loads(body)
    for desc in (doc["config"], *doc["layers"]):
        _, data = c.expect(200, "GET", f"/v2/{BENCH_REPO}/blobs/{desc['digest']}")
        if sha256(data) != desc["digest"] or len(data) != desc["size"]:
            raise Wrong(f"blob {desc['digest']} came back different")


@dataclass
class Stats:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        ms = sorted(v * 1000 for v in values)
        if not ms:  # the collector finished before the first operation
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        return cls(len(ms), statistics.fmean(ms), q[49], q[94], q[98], ms[-1])


Sample = tuple[datetime, float]  # when an operation started, how long it took


def workload(server: servers.Server, seconds: float, seed: int) -> dict[str, list[Sample]]:
    """Push, pull, pull, ... for `seconds` (after a short warm-up)."""
    rng = random.Random(seed)
    c = Client(server)
    tags = [f"t{i}" for i in range(20)]
    for tag in tags[:5]:
        push(c, rng, tag)  # warm-up, and something to pull
    pushes: list[Sample] = []
    pulls: list[Sample] = []
    pushed = 5
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        when, start = datetime.now(UTC), time.perf_counter()
        push(c, rng, tags[pushed % len(tags)])
        pushes.append((when, time.perf_counter() - start))
        pushed += 1
        for _ in range(2):
            tag = tags[rng.randrange(min(pushed, len(tags)))]
            when, start = datetime.now(UTC), time.perf_counter()
            pull(c, tag)
            pulls.append((when, time.perf_counter() - start))
    return {"push": pushes, "pull": pulls}


def stats(samples: dict[str, list[Sample]], before: datetime | None = None) -> dict[str, Stats]:
    """Per operation, of the samples that started before `before` (all: None)."""
    return {
        op: Stats.of([took for when, took in got if before is None or when < before])
        for op, got in samples.items()
    }


# -- one database ------------------------------------------------------------------------


@dataclass
class Throughput:
    pace: float  # Collector.pace: rest this many times as long as each step took
    blobs: int
    bytes: int
    seconds: float
    passes: int


@dataclass
class Result:
    database: str
    blobs: int
    latency_off: dict[str, Stats] = field(default_factory=dict)
    latency_on: dict[str, Stats] = field(default_factory=dict)
    collected_during_load: int = 0
    load_seconds: float = 0.0
    collector_busy_seconds: float = 0.0  # from the window's start to the last deletion
    garbage_left_after_load: int = 0
    throughput: list[Throughput] = field(default_factory=list)
    stored_files: int = 0
    remaining_rows: int = 0


def _env(url: str, **gc: str) -> dict[str, str]:
    env = {"CARGOHOLD_DATABASE__URL": url}
    env.update({f"CARGOHOLD_GC__{k.upper()}": v for k, v in gc.items()})
    return env


def _migrate(url: str, data_dir: Path) -> None:
    subprocess.run(
        [str(EXE), "migrate"],
        env={**os.environ, "CARGOHOLD_DATA_DIR": str(data_dir), "CARGOHOLD_DATABASE__URL": url},
        check=True,
        capture_output=True,
    )


async def _collect(url: str, data_dir: Path, pace: float) -> Throughput:
    """The collector alone until a pass finds nothing: (blobs, bytes, seconds, passes)."""
    sys.path.insert(0, str(REPO / "src"))
    from cargohold.app import build_runtime, make_collector
    from cargohold.settings import Settings

    settings = Settings(data_dir=str(data_dir), database={"url": url})
    runtime = build_runtime(settings)
    collector = make_collector(runtime)
    collector.pace = pace
    blobs = freed = passes = 0
    start = time.perf_counter()
    try:
        while True:
            run = await collector.run_once(wait=True)
            assert run is not None
            if run.error:
                raise Wrong(f"the collector failed: {run.error}")
            passes += 1
            blobs += run.blobs_deleted
            freed += run.bytes_freed
            if run.blobs_deleted == 0 and run.backlog == 0:
                break
        return Throughput(pace, blobs, freed, time.perf_counter() - start, passes)
    finally:
        await runtime.close()


def bench_one(spec: str, workdir: Path, blobs: int, seconds: float, log: Any) -> Result:
    label = "SQLite" if spec == "sqlite" else "PostgreSQL"
    result = Result(label, blobs)
    rng = random.Random(1)
    data_dir = workdir / label.lower()
    data_dir.mkdir(parents=True)
    root = data_dir / "storage"
    with database(spec, data_dir) as url:
        _migrate(url, data_dir)
        log(f"{label}: seeding {blobs} garbage blobs")
        seed_garbage(url, root, blobs, rng)
        password = servers.new_password()
        for on in (False, True):
            env = _env(url, enabled="true" if on else "false", interval_seconds="0.1")
            garbage_before = int(query(url, GARBAGE)[0][0])
            server = servers.start_cargohold(
                EXE, data_dir, data_dir / "server.log", extra_env=env, password=password
            )
            try:
                started = datetime.now(UTC)
                mark = started.strftime("%Y-%m-%d %H:%M:%S")
                log(f"{label}: latency with the collector {'on' if on else 'off'}")
                samples = workload(server, seconds, seed=2 if on else 3)
                ended = datetime.now(UTC)
                if not server.alive():
                    raise Wrong(f"the server died:\n{server.log_tail()}")
            finally:
                server.stop()
            if on:
                result.garbage_left_after_load = int(query(url, GARBAGE)[0][0])
                result.collected_during_load = garbage_before - result.garbage_left_after_load
                result.load_seconds = (ended - started).total_seconds()
                last = query(
                    url,
                    "SELECT MAX(finished_at) FROM gc_run WHERE blobs_deleted > 0 "
                    f"AND started_at >= '{mark}{'' if spec == 'sqlite' else '+00'}'",
                )[0][0]
                busy_until = ended if last is None else min(_when(last), ended)
                result.collector_busy_seconds = (busy_until - started).total_seconds()
                # Only what ran while the collector was at work: it may finish early.
                result.latency_on = stats(samples, busy_until)
            else:
                result.latency_off = stats(samples)
        for pace in (PACE, 0.0):
            top_up = blobs - int(query(url, GARBAGE)[0][0])
            log(f"{label}: topping the garbage up by {top_up}, the collector alone, pace {pace}")
            seed_garbage(url, root, top_up, rng)
            result.throughput.append(asyncio.run(_collect(url, data_dir, pace)))
        if int(query(url, GARBAGE)[0][0]) != 0:
            raise Wrong("garbage rows left after the collector finished")
        result.remaining_rows = int(query(url, "SELECT COUNT(*) FROM blob")[0][0])
        result.stored_files = sum(1 for p in (root / "blobs").rglob("*") if p.is_file())
        if result.stored_files != result.remaining_rows:
            raise Wrong(f"{result.stored_files} files for {result.remaining_rows} blob rows")
        server = servers.start_cargohold(
            EXE,
            data_dir,
            data_dir / "server.log",
            extra_env=_env(url, enabled="false"),
            password=password,
        )
        try:
            c = Client(server)
            for i in range(20):
                pull(c, f"t{i}")  # every pushed tag still pulls, every digest checked
        finally:
            server.stop()
    return result


# -- the report --------------------------------------------------------------------------


NOTE = (
    "Pushes pay the most while the collector works through a large backlog: each of a "
    "push's write transactions may wait behind one of the collector's (SQLite has one "
    "writer; on PostgreSQL they share usage rows and the event loop), while pulls mostly "
    "read. A registry that collects continuously rarely has such a backlog; a larger "
    "`gc.pace` trades collection speed for latency, and `cargohold worker` (with "
    "`gc.enabled: false` for `serve`) moves the collector's CPU out of the serving processes "
    "(on SQLite the one writer is still shared)."
)


def render(results: list[Result], env: sysinfo.Environment, seconds: float, command: str) -> str:
    lines = [
        BEGIN,
        "## Garbage collection",
        "",
        f"Measured with `bench/gcbench.py` on {datetime.now(UTC):%Y-%m-%d}. Each store was "
        f"seeded with {results[0].blobs:,} garbage blobs (rows inserted straight into the "
        "`blob` table, two hours old, and a 200-2,000 byte file each where the filesystem "
        "driver keeps blobs; nothing links them), as a stand-in for what deleted tags and "
        "repositories leave behind.",
        "",
        "**Throughput**: the collector alone, in one process, default settings "
        "(`gc.batch_size` 200, at most 50 transactions per kind of object and pass), until a "
        "pass finds nothing; wall clock, scans and the final idle pass included. *pace* "
        "(`gc.pace`) is how long the collector rests after each step, relative to the "
        "step's time: 1 (the default, so that in a server process it takes about half of the "
        "event loop when it has much to do) and 0 (flat out), each on a fresh "
        f"{results[0].blobs:,}-blob backlog.",
        "",
        "| database | pace | blobs collected | bytes freed | seconds | passes | blobs/s | KiB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for t in r.throughput:
            lines.append(
                f"| {r.database} | {t.pace:g}{' (default)' if t.pace == PACE else ''} | "
                f"{t.blobs:,} | {t.bytes:,} | {t.seconds:.1f} | {t.passes} | "
                f"{t.blobs / t.seconds:,.0f} | {t.bytes / 1024 / t.seconds:,.0f} |"
            )
    lines += [
        "",
        f"**Latency while collecting**: one client, one request at a time, for {seconds:.0f} s "
        "per condition against `cargohold serve` with one worker process: a push (3 new "
        "blobs of 1-4 KiB, POST + PUT each, then the manifest by tag) then two pulls "
        "(manifest by tag and its 3 blobs, digests checked), each operation timed whole. "
        "*off*: `gc.enabled: false`; *on*: `gc.enabled: true`, `gc.interval_seconds: 0.1`, "
        "the same worker serving and collecting the seeded garbage; only the operations that "
        "started before its last deletion count (it may run out of garbage before the "
        "window ends).",
        "",
        "| database | operation | collector | count | mean ms | p50 ms | p95 ms | p99 ms "
        "| max ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for op in ("push", "pull"):
            for name, stats in (("off", r.latency_off[op]), ("on", r.latency_on[op])):
                lines.append(
                    f"| {r.database} | {op} | {name} | {stats.count} | {stats.mean_ms:.1f} | "
                    f"{stats.p50_ms:.1f} | {stats.p95_ms:.1f} | {stats.p99_ms:.1f} | "
                    f"{stats.max_ms:.1f} |"
                )
    lines.append("")
    for r in results:
        lines.append(
            f"- {r.database}: during the *on* window ({r.load_seconds:.0f} s with the warm-up, "
            "and the server's start) the collector deleted "
            f"{r.collected_during_load:,} blobs and "
            + (
                f"was still at work when it ended ({r.garbage_left_after_load:,} garbage blobs "
                "left)"
                if r.garbage_left_after_load
                else f"was at work for the first {r.collector_busy_seconds:.0f} s of it"
            )
            + ". After the throughput run: no garbage row left, "
            f"{r.remaining_rows} blob rows "
            f"and as many files, every pushed tag pulled back with its digests checked."
        )
    load = env.load_end or env.load_start
    lines += [
        "",
        NOTE,
        "",
        f"Machine: {env.cpu_model}, {env.logical_cpus} logical CPUs, {env.memory_gib:.0f} GiB; "
        f"{env.os_name}; {env.python}; data on {env.data_fs}. Load average at the start "
        f"{' / '.join(f'{x:.2f}' for x in env.load_start)}, at the end "
        f"{' / '.join(f'{x:.2f}' for x in load)}. The machine is shared with other work "
        "(its load shows in those figures): one round per condition, so compare the "
        "conditions of one run rather than absolute numbers across runs.",
        "",
        f"Command: `{command}`. Raw data: [bench-results/gc.json](bench-results/gc.json).",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the marked section of `path`, leaving the rest as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", action="append", help="sqlite or a postgresql:// URL")
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="per latency condition")
    parser.add_argument("--quick", action="store_true", help="5,000 blobs, 4 s: a smoke run")
    parser.add_argument("--out", type=Path, help="Markdown file to put the section in")
    parser.add_argument("--tmpdir", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.blobs, args.seconds = 5000, 4.0
    out = args.out or (QUICK_DIR / "benchmarks-gc.md" if args.quick else OUT)
    raw = out.parent / "bench-results" / "gc.json" if args.quick or args.out else RAW
    if not EXE.exists():
        print(f"no {EXE}: run `make` first", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="gcbench-", dir=args.tmpdir))
    env = sysinfo.collect(workdir)
    results = []
    try:
        for spec in args.database or ["sqlite"]:
            results.append(bench_one(spec, workdir, args.blobs, args.seconds, log))
    except Wrong as exc:
        print(f"wrong answer: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    env.load_end = os.getloadavg()
    command = "python bench/gcbench.py " + " ".join(
        re.sub(r"(//[^:@/]+):[^@/]*@", r"\1:***@", a) for a in sys.argv[1:]
    )
    write_section(out, render(results, env, args.seconds, command.strip()))
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps({"results": [asdict(r) for r in results], "machine": asdict(env)}, indent=2)
    )
    for r in results:
        print(
            f"{r.database}: "
            + ", ".join(f"pace {t.pace:g} {t.blobs / t.seconds:,.0f} blobs/s" for t in r.throughput)
            + ", "
            f"push p50 {r.latency_off['push'].p50_ms:.1f} -> {r.latency_on['push'].p50_ms:.1f} ms, "
            f"pull p50 {r.latency_off['pull'].p50_ms:.1f} -> {r.latency_on['pull'].p50_ms:.1f} ms"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
