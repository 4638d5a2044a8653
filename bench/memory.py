#!/usr/bin/env python3
"""Memory benchmark: push and pull a 4 GiB blob through cargohold, sampling its RSS.

Goal (from the performance issue): pushing or pulling a 4 GiB blob never holds more
than a few MiB of it in memory. This starts cargohold (fresh data directory, free port
on 127.0.0.1, own process group), then, while a thread sums the resident memory of the
server's process tree from /proc every 50 ms:

  push_monolithic  POST, then one PUT ?digest= with the whole blob (Content-Length)
  push_chunked     POST, PATCHes of --chunk-size with Content-Range, then PUT ?digest=
  push_streamed    POST, one PATCH with Transfer-Encoding: chunked (what docker does), PUT
  pull             GET of the whole blob (zero-copy pathsend), sha256 checked
  pull_range       GET with Range: bytes=1- (the server's own 1 MiB read loop), checked
  pull_slow        GET of the whole blob read at --slow-rate, hung up after --slow-bytes
  pull_range_slow  the same with Range: bytes=1-: does the server wait for a slow reader?

The blob's bytes come from a repeating pseudo-random pattern generated on the fly, so
the client never holds the blob either; it hashes what it sends and receives as it
streams. Every answer is checked (status codes, digests, sizes, the bytes of a range).
Per phase the report gives the server's RSS before it (median of the idle second
before), the peak during it, and their difference.

Writes docs/benchmarks-memory.md and docs/bench-results/memory.json (with --quick:
bench/.out/quick/benchmarks-memory.md). Needs about 2 x the blob size + 1 GiB free in
the temporary directory (one stored blob plus one upload in flight).

Examples (from the repository root):
  .venv/bin/python bench/memory.py            # 4 GiB, ~3-5 min
  .venv/bin/python bench/memory.py --quick    # 64 MiB smoke run, < 1 min

Exit status: 0 measured (whatever the numbers); 1 a phase failed (a wrong answer,
a server crash); 2 the benchmark could not run. Timing and memory never make it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import procstat
import report
import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks-memory.md"
SCRATCH_OUT = REPO / "bench" / ".out"
MIB, GIB = 1 << 20, 1 << 30
PIECE = MIB  # what the client sends or reads at a time
PATTERN_PERIOD = MIB + 4099  # odd, so that chunk boundaries fall on different pattern offsets
REPOSITORY = "bench/memory"
# "A few MiB": this harness reads it as at most 16 MiB more than before the phase.
GOAL_DELTA_MIB = 16.0
# cargohold requires authentication: the client sends the superuser's Basic credentials on
# every request, and the server keeps them verified for the whole run, so that the one
# argon2 check (19 MiB of memory) falls in the warm-up, not inside a phase.
SERVER_ENV = {"CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": "3600"}


SetupError = servers.SetupError


class PhaseError(Exception):
    """A phase got a wrong answer from the server."""


def log(msg: str) -> None:
    print(f"[memory] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The blob: a repeating pseudo-random pattern, generated on the fly
# --------------------------------------------------------------------------------------


class Pattern:
    """An endless byte stream repeating `period` pseudo-random bytes; any slice of it
    up to `period` bytes long is a zero-copy view."""

    def __init__(self, seed: int = 4, period: int = PATTERN_PERIOD) -> None:
        block = random.Random(seed).randbytes(period)
        self.period = period
        self._double = memoryview(block + block)

    def view(self, pos: int, length: int) -> memoryview:
        if length > self.period:
            raise ValueError("a view is at most one period long")
        off = pos % self.period
        return self._double[off : off + length]

    def pieces(self, start: int, length: int, piece: int = PIECE) -> Iterator[memoryview]:
        pos, end = start, start + length
        while pos < end:
            n = min(piece, end - pos, self.period)
            yield self.view(pos, n)
            pos += n


def hashed(pieces: Iterator[memoryview], hasher: Any) -> Iterator[memoryview]:
    """Pass pieces through, hashing them as they go."""
    for p in pieces:
        hasher.update(p)
        yield p


@dataclass(frozen=True)
class BlobSpec:
    size: int
    digest: str  # sha256:<hex> of the whole blob
    range_digest: str  # sha256 of bytes 1..size-1, for the Range: bytes=1- pulls


def describe_blob(pattern: Pattern, size: int) -> BlobSpec:
    whole, tail = hashlib.sha256(), hashlib.sha256()
    first = True
    for p in pattern.pieces(0, size):
        whole.update(p)
        tail.update(p[1:] if first else p)
        first = False
    return BlobSpec(size, f"sha256:{whole.hexdigest()}", f"sha256:{tail.hexdigest()}")


# --------------------------------------------------------------------------------------
# HTTP client (http.client, one keep-alive connection per phase)
# --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One keep-alive connection; `auth` (the Authorization header) goes on every request."""

    def __init__(
        self, port: int, timeout: float = 600.0, auth: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.auth = dict(auth or {})
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(servers.HOST, self.port, timeout=self.timeout)

    def close(self) -> None:
        self.conn.close()

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self._connect()

    def request(
        self,
        method: str,
        path: str,
        body: Iterator[memoryview] | bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Answer:
        hdrs = {**self.auth, **(headers or {})}
        if body is None and method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        try:
            self.conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The server may have answered early (an error) and closed: show that answer.
            try:
                resp = self.conn.getresponse()
                raise PhaseError(
                    f"{method} {path}: connection broken while sending ({exc}); the server "
                    f"said {resp.status}: {resp.read()[:300]!r}"
                ) from exc
            except (OSError, http.client.HTTPException):
                raise PhaseError(f"{method} {path}: connection broken while sending") from exc
        resp = self.conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def expect(answer: Answer, status: int, what: str) -> Answer:
    if answer.status != status:
        raise PhaseError(f"{what}: expected {status}, got {answer.status}: {answer.body[:300]!r}")
    return answer


def with_query(location: str, **params: str) -> str:
    parts = urlsplit(location)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return f"{parts.path}?{query}"


def start_upload(client: Client) -> str:
    ans = expect(client.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/"), 202, "POST upload")
    location = ans.headers.get("location")
    if not location:
        raise PhaseError("POST upload: no Location header")
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def check_created(answer: Answer, digest: str, what: str) -> None:
    expect(answer, 201, what)
    got = answer.headers.get("docker-content-digest")
    if got != digest:
        raise PhaseError(f"{what}: Docker-Content-Digest {got}, expected {digest}")


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------


@dataclass
class Context:
    port: int
    pattern: Pattern
    blob: BlobSpec
    chunk_size: int
    slow_bytes: int
    slow_rate: float  # bytes per second
    auth: dict[str, str] = field(default_factory=dict)  # Authorization header


def push_monolithic(ctx: Context) -> int:
    client = Client(ctx.port, auth=ctx.auth)
    try:
        location = start_upload(client)
        hasher = hashlib.sha256()
        body = hashed(ctx.pattern.pieces(0, ctx.blob.size), hasher)
        ans = client.request(
            "PUT",
            with_query(location, digest=ctx.blob.digest),
            body,
            {"Content-Length": str(ctx.blob.size), "Content-Type": "application/octet-stream"},
        )
        check_created(ans, ctx.blob.digest, "monolithic PUT")
        if f"sha256:{hasher.hexdigest()}" != ctx.blob.digest:
            raise PhaseError("the client sent other bytes than it hashed beforehand")
        return ctx.blob.size
    finally:
        client.close()


def push_chunked(ctx: Context) -> int:
    client = Client(ctx.port, auth=ctx.auth)
    try:
        location = start_upload(client)
        hasher = hashlib.sha256()
        pos = 0
        while pos < ctx.blob.size:
            n = min(ctx.chunk_size, ctx.blob.size - pos)
            body = hashed(ctx.pattern.pieces(pos, n), hasher)
            headers = {
                "Content-Length": str(n),
                "Content-Range": f"{pos}-{pos + n - 1}",
                "Content-Type": "application/octet-stream",
            }
            ans = expect(client.request("PATCH", location, body, headers), 202, f"PATCH at {pos}")
            if ans.headers.get("range") != f"0-{pos + n - 1}":
                raise PhaseError(f"PATCH at {pos}: Range {ans.headers.get('range')}")
            location = ans.headers.get("location", location)
            pos += n
        digest = f"sha256:{hasher.hexdigest()}"  # computed while streaming
        if digest != ctx.blob.digest:
            raise PhaseError("the client sent other bytes than it hashed beforehand")
        ans = client.request("PUT", with_query(location, digest=digest))
        check_created(ans, digest, "closing PUT")
        return ctx.blob.size
    finally:
        client.close()


def push_streamed(ctx: Context) -> int:
    client = Client(ctx.port, auth=ctx.auth)
    try:
        location = start_upload(client)
        hasher = hashlib.sha256()
        body = hashed(ctx.pattern.pieces(0, ctx.blob.size), hasher)
        headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"}
        ans = expect(
            client.request("PATCH", location, body, headers, chunked=True), 202, "streamed PATCH"
        )
        if ans.headers.get("range") != f"0-{ctx.blob.size - 1}":
            raise PhaseError(f"streamed PATCH: Range {ans.headers.get('range')}")
        digest = f"sha256:{hasher.hexdigest()}"
        if digest != ctx.blob.digest:
            raise PhaseError("the client sent other bytes than it hashed beforehand")
        location = ans.headers.get("location", location)
        check_created(client.request("PUT", with_query(location, digest=digest)), digest, "PUT")
        return ctx.blob.size
    finally:
        client.close()


def _pull(
    ctx: Context,
    *,
    byte_range: bool,
    limit: int | None = None,
    rate: float | None = None,
) -> int:
    """GET the blob (bytes 1.. with byte_range), streaming into one 1 MiB buffer.

    With `limit`, read that many bytes (at `rate` bytes/s) and hang up."""
    client = Client(ctx.port, auth=ctx.auth)
    start = 1 if byte_range else 0
    expected_len = ctx.blob.size - start
    headers = {**ctx.auth, **({"Range": "bytes=1-"} if byte_range else {})}
    try:
        client.conn.request("GET", f"/v2/{REPOSITORY}/blobs/{ctx.blob.digest}", headers=headers)
        resp = client.conn.getresponse()
        want = 206 if byte_range else 200
        if resp.status != want:
            raise PhaseError(f"GET: expected {want}, got {resp.status}: {resp.read(300)!r}")
        if resp.getheader("Content-Length") != str(expected_len):
            raise PhaseError(f"GET: Content-Length {resp.getheader('Content-Length')}")
        if byte_range and resp.getheader("Content-Range") != (
            f"bytes 1-{ctx.blob.size - 1}/{ctx.blob.size}"
        ):
            raise PhaseError(f"GET: Content-Range {resp.getheader('Content-Range')}")
        buf = bytearray(PIECE)
        view = memoryview(buf)
        hasher = hashlib.sha256()
        got = 0
        began = time.monotonic()
        stop_at = expected_len if limit is None else min(limit, expected_len)
        while got < stop_at:
            n = resp.readinto(view[: min(PIECE, stop_at - got)])
            if not n:
                break
            if limit is None:
                hasher.update(view[:n])
            elif view[:n].tobytes() != ctx.pattern.view(start + got, n).tobytes():
                raise PhaseError(f"GET: wrong bytes at offset {start + got}")
            got += n
            if rate:
                ahead = got / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if got != stop_at:
            raise PhaseError(f"GET: body ended after {got} of {stop_at} bytes")
        if limit is None:
            want_digest = ctx.blob.range_digest if byte_range else ctx.blob.digest
            if f"sha256:{hasher.hexdigest()}" != want_digest:
                raise PhaseError("GET: the bytes do not match the digest")
        return got
    finally:
        client.close()  # with `limit`: hangs up in the middle of the body


def pull(ctx: Context) -> int:
    return _pull(ctx, byte_range=False)


def pull_range(ctx: Context) -> int:
    return _pull(ctx, byte_range=True)


def pull_slow(ctx: Context) -> int:
    return _pull(ctx, byte_range=False, limit=ctx.slow_bytes, rate=ctx.slow_rate)


def pull_range_slow(ctx: Context) -> int:
    return _pull(ctx, byte_range=True, limit=ctx.slow_bytes, rate=ctx.slow_rate)


@dataclass(frozen=True)
class PhaseDef:
    name: str
    what: str
    run: Callable[[Context], int]


PHASES = [
    PhaseDef("push_monolithic", "POST, then PUT ?digest= with the whole blob", push_monolithic),
    PhaseDef(
        "push_chunked", "POST, PATCH x {chunks} of {chunk} (Content-Range), PUT", push_chunked
    ),
    PhaseDef("push_streamed", "POST, one PATCH with chunked transfer encoding, PUT", push_streamed),
    PhaseDef("pull", "GET, whole blob (pathsend), sha256 checked", pull),
    PhaseDef("pull_range", "GET with Range: bytes=1- (206), bytes checked", pull_range),
    PhaseDef("pull_slow", "GET, read {slow} at {rate}/s, then hang up", pull_slow),
    PhaseDef(
        "pull_range_slow", "GET Range: bytes=1-, read {slow} at {rate}/s, hang up", pull_range_slow
    ),
]


def warm_up(port: int, auth: dict[str, str]) -> None:
    """Push and pull a small blob twice, so imports and first-use allocations (and the one
    argon2 check of the credentials) are done before the baseline is taken."""
    data = random.Random(7).randbytes(3 * MIB + 5)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    for _ in range(2):
        client = Client(port, timeout=60, auth=auth)
        try:
            location = start_upload(client)
            half = len(data) // 2
            ans = client.request(
                "PATCH",
                location,
                data[:half],
                {"Content-Length": str(half), "Content-Range": f"0-{half - 1}"},
            )
            expect(ans, 202, "warm-up PATCH")
            location = ans.headers.get("location", location)
            ans = client.request(
                "PUT",
                with_query(location, digest=digest),
                data[half:],
                {"Content-Length": str(len(data) - half)},
            )
            check_created(ans, digest, "warm-up PUT")
            for headers in ({}, {"Range": "bytes=1-"}):
                ans = client.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}", headers=headers)
                want = data[1:] if headers else data
                if ans.status not in (200, 206) or ans.body != want:
                    raise PhaseError(f"warm-up GET {headers}: {ans.status}")
        finally:
            client.close()


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    what: str
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    before: procstat.Window | None = None  # the idle second before the phase
    during: procstat.Window | None = None
    after: procstat.Window | None = None  # the idle second after it
    kernel_peak: int | None = None  # sum of VmHWM over the tree, reset just before the phase

    @property
    def delta(self) -> int | None:
        if self.before is None or self.during is None:
            return None
        return self.during.peak_rss - self.before.median_rss

    @property
    def kernel_delta(self) -> int | None:
        """Upper bound of the rise, from the kernel's high-water marks (sampling-proof)."""
        if self.before is None or self.kernel_peak is None:
            return None
        return self.kernel_peak - self.before.median_rss

    @property
    def judged_delta(self) -> int | None:
        """What the goal is judged on: the larger of the sampled and the kernel's figure."""
        known = [d for d in (self.delta, self.kernel_delta) if d is not None]
        return max(known) if known else None

    @property
    def anon_delta(self) -> int | None:
        if self.before is None or self.during is None:
            return None
        return self.during.peak_anon - self.before.median_anon

    @property
    def met(self) -> bool | None:
        d = self.judged_delta
        return None if d is None or self.error else procstat.mib(d) <= GOAL_DELTA_MIB


@dataclass
class Run:
    quick: bool
    started: float
    size: int
    chunk_size: int
    slow_bytes: int
    slow_rate: float
    interval: float
    digest: str = ""
    digest_seconds: float = 0.0
    baseline: procstat.Window | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    hwm: dict[str, int] = field(default_factory=dict)  # "pid name" -> VmHWM at the end
    tree: str = ""
    client_peak_rss: int = 0
    duration_s: float = 0.0
    server_cmd: str = ""
    invocation: str = ""
    problems: list[str] = field(default_factory=list)
    series: list[tuple[float, int, int]] = field(default_factory=list)  # t, rss, anon
    warnings: list[str] = field(default_factory=list)


def fmt_size(n: int) -> str:
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n} B"


def fmt_mib(n: int | None, signed: bool = False) -> str:
    if n is None:
        return "-"
    v = procstat.mib(n)
    return f"{v:+.1f} MiB" if signed else f"{v:.1f} MiB"


def phase_what(p: PhaseDef, run: Run) -> str:
    chunks = -(-run.size // run.chunk_size)
    return p.what.format(
        chunks=chunks,
        chunk=fmt_size(run.chunk_size),
        slow=fmt_size(run.slow_bytes),
        rate=fmt_size(int(run.slow_rate)),
    )


def render_markdown(run: Run, env: sysinfo.Environment) -> str:
    date = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(run.started))
    out = [
        f"# Memory benchmark: a {fmt_size(run.size)} blob through cargohold",
        "<!-- Generated by bench/memory.py; do not edit by hand. -->",
    ]
    if run.quick:
        out.append(
            "> **Quick smoke run** (`--quick`): a small blob; it checks that the harness works."
        )
    out.extend(f"> **Warning**: {w}" for w in run.warnings)
    out.append(
        "**Goal** (performance issue): pushing or pulling a 4 GiB blob never holds more than a "
        f"few MiB of it in memory. Read here as: the server's resident memory rises by at most "
        f"**{GOAL_DELTA_MIB:.0f} MiB** during a phase, measured from the median of the idle "
        "second before it to the highest sample during it."
    )
    out.append(
        f"Measured on {date}: one cargohold (`cargohold serve`, default settings: SQLite, "
        "filesystem storage, 1 worker) with an empty data directory; the client in the same "
        f"machine over 127.0.0.1. RSS = VmRSS summed over the server's process tree "
        f"({run.tree}), read from /proc every {run.interval * 1000:.0f} ms by a thread of the "
        f"client. The blob ({fmt_size(run.size)}, {run.digest}) repeats a "
        f"{PATTERN_PERIOD}-byte pseudo-random pattern generated on the fly; the whole run took "
        f"{run.duration_s / 60:.1f} min. cargohold requires authentication: every request "
        "carried the Basic credentials of the superuser the server started with, and the server "
        "kept them verified for the whole run (`CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS=3600`), "
        "so their one argon2 check (19 MiB) happened in the warm-up, before the baseline."
    )
    head = [
        "phase",
        "what the client does",
        "time",
        "MiB/s",
        "RSS before",
        "peak RSS",
        "delta",
        "kernel's bound",
        "anon delta",
        "RSS after",
        f"goal: delta <= {GOAL_DELTA_MIB:.0f} MiB",
    ]
    rows = []
    for p in run.phases:
        rate = p.bytes / MIB / p.seconds if p.seconds and p.bytes else None
        verdict = "failed" if p.error else ("met" if p.met else "**MISSED**")
        rows.append(
            [
                p.name,
                p.what,
                f"{p.seconds:.1f} s",
                report.fmt(rate),
                fmt_mib(p.before.median_rss if p.before else None),
                fmt_mib(p.during.peak_rss if p.during else None),
                f"**{fmt_mib(p.delta, signed=True)}**",
                fmt_mib(p.kernel_delta, signed=True),
                fmt_mib(p.anon_delta, signed=True),
                fmt_mib(p.after.median_rss if p.after else None),
                verdict,
            ]
        )
    out.append("## Results\n\n" + report.md_table(head, rows, {2, 3, 4, 5, 6, 7, 8, 9}))
    base = run.baseline
    gaps = [p.during.max_gap_s for p in run.phases if p.during]
    legend = [
        "RSS before / after: median over the idle second before / after the phase. Peak RSS: "
        "the highest sample during the phase. Delta = peak - before. Kernel's bound: each "
        "process's high-water mark (VmHWM) is reset just before the phase (`echo 5 > "
        "/proc/PID/clear_refs`) and read after it; their sum minus RSS before bounds the rise "
        "from above whatever the sampling missed (it adds peaks that may have come at "
        "different times). The goal is judged on the larger of delta and kernel's bound. "
        "Anon delta: delta of RssAnon (heap and anonymous mappings, where buffered request or "
        "response bytes would be; file-backed pages of shared libraries make up the rest).",
    ]
    if base is not None:
        legend.append(
            f"Baseline after warm-up (a 3 MiB blob pushed and pulled twice), idle: "
            f"**{fmt_mib(base.median_rss)}** (RssAnon {fmt_mib(base.median_anon)}), "
            f"{base.samples} samples."
        )
    if gaps:
        legend.append(
            f"The longest gap between two samples during a phase was {max(gaps) * 1000:.0f} ms "
            "(a busy machine delays the sampling thread; the kernel's bound does not depend on "
            "it). Per process at the end: "
            + ", ".join(f"{k}: VmHWM {fmt_mib(v)}" for k, v in run.hwm.items())
            + " (since the last reset)."
        )
    legend.append(
        f"The client's own peak RSS (ru_maxrss, {sys.executable.rsplit('/', 1)[-1]}): "
        f"{fmt_mib(run.client_peak_rss)}. Hashing the blob on the client before the pushes "
        f"(for the digest in the monolithic PUT) took {run.digest_seconds:.1f} s."
    )
    out.append("\n\n".join(legend))
    errors = [f"* `{p.name}`: {p.error}" for p in run.phases if p.error] + [
        f"* {x}" for x in run.problems
    ]
    if errors:
        out.append("## Errors\n\n" + "\n".join(errors))
    out.append(_machine(env))
    out.append(
        "## Commands\n\n```sh\n"
        f"# this run\n{run.invocation}\n"
        f"# started by it (own process group; stopped with kill -TERM -- -PGID, then -KILL)\n"
        f"{run.server_cmd}\n```\n\n"
        "Raw data (every phase, every RSS sample): "
        "[bench-results/memory.json](bench-results/memory.json) next to this file."
    )
    return "\n\n".join(out) + "\n"


def _machine(env: sysinfo.Environment) -> str:
    load_end = env.load_end or env.load_start
    return (
        "## Machine\n\n"
        f"{env.cpu_model}, {env.logical_cpus} logical CPUs (flags: {', '.join(env.cpu_flags)}), "
        f"{env.memory_gib:.0f} GiB; {env.os_name}, {env.kernel}; {env.python}; data on "
        f"{env.data_fs}. Load average (1/5/15 min) at the start "
        f"{' / '.join(f'{x:.2f}' for x in env.load_start)}, at the end "
        f"{' / '.join(f'{x:.2f}' for x in load_end)}. "
        + " ".join(f"{k}: {v}." for k, v in env.versions.items())
        + " The machine is shared: other tenants' work shows in the load average."
    )


def to_json(run: Run, env: sysinfo.Environment) -> dict[str, Any]:
    doc = asdict(run)
    for p, d in zip(run.phases, doc["phases"], strict=True):
        d["delta"] = p.delta
        d["anon_delta"] = p.anon_delta
        d["kernel_delta"] = p.kernel_delta
        d["met"] = p.met
    doc["goal_delta_mib"] = GOAL_DELTA_MIB
    doc["environment"] = asdict(env)
    doc["series"] = [(round(t, 3), r, a) for t, r, a in run.series]
    return doc


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": MIB, "g": GIB}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="bench/memory.py",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="64 MiB blob: a smoke run, < 1 min")
    p.add_argument("--size", type=parse_size, help="blob size (default 4GiB; --quick 64MiB)")
    p.add_argument(
        "--chunk-size", type=parse_size, help="PATCH size of push_chunked (64MiB; --quick 8MiB)"
    )
    p.add_argument(
        "--slow-bytes", type=parse_size, help="bytes read by the slow pulls (512MiB; --quick 16MiB)"
    )
    p.add_argument(
        "--slow-rate", type=parse_size, help="bytes/s of the slow pulls (64MiB; --quick 32MiB)"
    )
    p.add_argument(
        "--phases",
        help=f"comma-separated subset of {','.join(x.name for x in PHASES)} "
        "(pulls need a push first)",
    )
    p.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, s")
    p.add_argument("--out", type=Path, help="report (default docs/benchmarks-memory.md)")
    p.add_argument("--tmpdir", type=Path, help="where the data directory goes")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory and log")
    p.add_argument(
        "--cargohold", type=Path, default=REPO / ".venv" / "bin" / "cargohold", help="executable"
    )
    p.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra env"
    )
    p.add_argument(
        "--rev",
        help="benchmark this commit instead of the work tree: its src/ is exported with "
        "`git archive` into the temporary directory and put first on PYTHONPATH",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    invocation = ".venv/bin/python bench/memory.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    return servers.run_cli(lambda: run(args, invocation.strip()), log)


def run(args: argparse.Namespace, invocation: str) -> int:
    started = time.time()
    size = args.size or (64 * MIB if args.quick else 4 * GIB)
    chunk = args.chunk_size or (8 * MIB if args.quick else 64 * MIB)
    slow_bytes = args.slow_bytes or (16 * MIB if args.quick else 512 * MIB)
    slow_rate = float(args.slow_rate or (32 * MIB if args.quick else 64 * MIB))
    if size < 2 or chunk < 1:
        raise SetupError("--size must be >= 2 bytes and --chunk-size >= 1")
    selected = PHASES
    if args.phases:
        names = [x.strip() for x in args.phases.split(",") if x.strip()]
        unknown = set(names) - {x.name for x in PHASES}
        if unknown or not names:
            raise SetupError(f"unknown phase(s): {', '.join(sorted(unknown)) or '(none)'}")
        selected = [x for x in PHASES if x.name in names]
    if not os.access(args.cargohold, os.X_OK):
        raise SetupError(f"cargohold not found at {args.cargohold} (make install)")
    extra_env = {}
    for item in args.server_env:
        if "=" not in item:
            raise SetupError(f"--server-env {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        extra_env[k] = v
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    need, free = 2 * size + GIB, shutil.disk_usage(tmp).free
    if free < need:
        raise SetupError(f"{tmp} has {free >> 20} MiB free; this run needs ~{need >> 20} MiB")
    out = (
        args.out.resolve()
        if args.out
        else (SCRATCH_OUT / "quick" / DEFAULT_OUT.name if args.quick else DEFAULT_OUT)
    )

    pattern = Pattern()
    log(f"hashing the {fmt_size(size)} blob (generated, never held in memory)")
    t0 = time.monotonic()
    blob = describe_blob(pattern, size)
    run_ = Run(
        quick=args.quick,
        started=started,
        size=size,
        chunk_size=chunk,
        slow_bytes=slow_bytes,
        slow_rate=slow_rate,
        interval=args.interval,
        digest=blob.digest,
        digest_seconds=time.monotonic() - t0,
        invocation=invocation,
    )
    ctx_args = (pattern, blob, chunk, slow_bytes, slow_rate)

    workdir = Path(tempfile.mkdtemp(prefix="cargohold-memory-", dir=tmp))
    env = sysinfo.collect(workdir)
    revision, fingerprint = sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO)
    failed = True
    server: servers.Server | None = None
    sampler: procstat.Sampler | None = None
    try:
        if args.rev:
            try:
                sha, source_env = sysinfo.export_source(
                    REPO, args.rev, workdir / "source", args.cargohold.parent / "python"
                )
            except ValueError as exc:
                raise SetupError(str(exc)) from exc
            log(f"benchmarking commit {sha} (src/ exported to {workdir / 'source'})")
            revision = f"{sha} (--rev {args.rev})"
            fingerprint = sysinfo.source_fingerprint(workdir / "source")
            extra_env = {**source_env, **extra_env}
        server = servers.start_cargohold(
            args.cargohold,
            workdir / "data",
            workdir / "cargohold.log",
            extra_env={**SERVER_ENV, **extra_env},
        )
        run_.server_cmd = " ".join(
            [
                *(f"{k}={'***' if k.endswith('PASSWORD') else v}" for k, v in server.env.items()),
                *server.argv,
            ]
        ).replace(str(REPO) + "/", "")
        ctx = Context(server.port, *ctx_args, auth=server.authorization)
        log(f"cargohold on {server.url}, process group {server.pid}")
        warm_up(server.port, ctx.auth)
        run_.tree = ", ".join(f"{pid} {name}" for pid, name in server.tree())
        sampler = procstat.Sampler(server.pid, args.interval)
        sampler.start()
        settle = 1.0
        time.sleep(3.0 if not args.quick else 1.5)
        now = time.monotonic()
        run_.baseline = sampler.window(now - (2.0 if not args.quick else 1.0), now)
        for phase in selected:
            result = PhaseResult(phase.name, phase_what(phase, run_))
            begin = time.monotonic()
            result.before = sampler.window(begin - settle, begin)
            hwm_reset = procstat.reset_peaks(server.pid)
            log(f"{phase.name}: {result.what}")
            try:
                result.bytes = phase.run(ctx)
            except (PhaseError, OSError, http.client.HTTPException) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                log(f"{phase.name} failed: {result.error}")
            end = time.monotonic()
            result.seconds = end - begin
            if hwm_reset:
                result.kernel_peak = procstat.tree_peak(server.pid)
            time.sleep(0.06)  # one more sample inside the phase's window
            result.during = sampler.window(begin, time.monotonic())
            time.sleep(settle + 0.2)
            result.after = sampler.window(time.monotonic() - settle, time.monotonic())
            run_.phases.append(result)
            if result.during:
                log(
                    f"{phase.name}: {result.seconds:.1f} s, peak {fmt_mib(result.during.peak_rss)}"
                    f", delta {fmt_mib(result.delta, signed=True)}, kernel's bound "
                    f"{fmt_mib(result.kernel_delta, signed=True)}"
                )
            if not server.alive():
                run_.problems.append(f"cargohold exited during {phase.name}")
                break
        sampler.stop()
        for pid, rss in procstat.tree_rss(server.pid).items():
            run_.hwm[f"{pid} {servers.process_name(pid)}"] = rss.hwm
        env.load_end = os.getloadavg()
        failed = any(p.error for p in run_.phases) or bool(run_.problems)
        if failed:
            log(f"last lines of the server's log ({server.log_path}):\n{server.log_tail()}")
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            with contextlib.suppress(servers.ServerError):
                log(f"stopping cargohold (process group {server.pid})")
                server.stop()
        if args.keep_data or failed:
            if not args.keep_data:  # keep the log of a failed run, not the blobs
                shutil.rmtree(workdir / "data", ignore_errors=True)
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if sampler is not None:
        run_.series = [(s.t - sampler.samples[0].t, s.rss, s.anon) for s in sampler.samples]
    run_.client_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_.duration_s = time.time() - started
    env.versions = {"cargohold": sysinfo.cargohold_version(args.cargohold.parent / "python")}
    env.versions["repository"] = f"git {revision} (source fingerprint {fingerprint})"
    at_end = (sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO))
    if not args.rev and at_end != (revision, fingerprint):
        run_.warnings.append(
            f"cargohold's source changed while this ran (git {revision} -> {at_end[0]}, source "
            f"fingerprint {fingerprint} -> {at_end[1]}); the server ran the code of the start."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(run_, env))
    raw = out.parent / "bench-results" / f"{out.stem.removeprefix('benchmarks-')}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(to_json(run_, env), indent=1) + "\n")
    print(render_table_text(run_))
    log(f"wrote {out} and {raw} in {run_.duration_s:.0f}s")
    return 1 if failed else 0


def render_table_text(run: Run) -> str:
    lines = [
        f"{'phase':<17} {'time':>7} {'before':>10} {'peak':>10} {'delta':>11} {'kernel':>11}  goal"
    ]
    for p in run.phases:
        verdict = "failed" if p.error else ("met" if p.met else "MISSED")
        lines.append(
            f"{p.name:<17} {p.seconds:>6.1f}s "
            f"{fmt_mib(p.before.median_rss if p.before else None):>10} "
            f"{fmt_mib(p.during.peak_rss if p.during else None):>10} "
            f"{fmt_mib(p.delta, signed=True):>11} {fmt_mib(p.kernel_delta, signed=True):>11}"
            f"  {verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
