"""Profile cargohold's hot paths with py-spy: where does a request's time go?

    .venv/bin/python bench/hotpaths.py            # ~2 min; writes docs/perf/
    .venv/bin/python bench/hotpaths.py --quick    # ~30 s smoke run; bench/.out/quick/perf/

What a run does:

  1. starts `cargohold serve --host 127.0.0.1 --port P` (CARGOHOLD_DATA_DIR = a new temporary
     directory) in its own process group; granian runs the app in one worker process, a
     child of that process: that worker is what py-spy samples;
  2. pushes a small image (a config blob, a 1 MiB layer, a manifest tagged `latest`);
  3. for each hot path, keeps a steady load on the server and, while it runs,
       - (full mode) measures the request rate without a profiler,
       - runs `py-spy record -p <worker> -r 250 -f flamegraph -o <out>/<path>.svg -d D`,
       - runs `py-spy record -p <worker> -r 250 -f raw --threads -o <out>/<path>.raw.txt -d D`
         and summarises those stacks: the event-loop thread's wall time split into
         layers (granian/ASGI glue, Starlette, cargohold router, handler, services,
         db/sqlite, storage/threads, idle), its top self-time and inclusive frames, and what
         the other threads of the worker (granian's runtime, the to_thread pool) did;
  4. stops every process it started (process groups: SIGTERM, then SIGKILL), also on errors
     and on Ctrl-C/SIGTERM, deletes the data, and writes <out>/summary.md + summary.json.

Authentication: cargohold requires it. The server starts with a first superuser (a random
password); every request of every load carries `Authorization`: with `--auth token` (the
default, what docker and podman send) a registry token for both repositories, fetched once
through the Docker token flow (valid for the whole run); with `--auth basic` the Basic
credentials (verified once, then kept: CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS=3600).

The loads (loopback only): manifest GET by tag (wrk -c32, or 32 threads of a keep-alive
client when wrk is missing), blob HEAD (32 keep-alive connections), chunked upload (POST,
PATCH 1 MiB chunks of a 32 MiB blob, PUT; 4 clients) and small monolithic uploads (POST +
PUT of a 4 KiB blob; 8 clients). Every answer is checked (status, digest, size).

Exit status: 0 when every path was profiled; 1 when the report was written but a path failed
(a wrong answer, py-spy failed, the server died); 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import math
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import procstat
import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "perf"
QUICK_OUT = REPO / "bench" / ".out" / "quick" / "perf"
HOST = servers.HOST
MIB = 1 << 20

IMAGE_REPO = "bench/profile"
UPLOAD_REPO = "bench/uploads"
TAG = "latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


# Verified Basic credentials are kept for the whole run (default 60 s), so that no argon2
# check lands in a profile with --auth basic; tokens live an hour (servers.BENCH_AUTH_ENV).
SERVER_ENV = {"CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": "3600"}
AUTH_TEXT = {
    "token": "Authentication: every request carried a registry token (`Authorization: Bearer`, "
    "a JWT for both repositories from the Docker token flow, fetched once with the "
    "superuser's credentials), as docker and podman send; cargohold verifies it (cached "
    "after the first time) on each request.",
    "basic": "Authentication: every request carried the superuser's Basic credentials "
    "(`--auth basic`); cargohold checked them once with argon2 and then found them in its "
    "cache of verified credentials (kept for the whole run).",
}

SetupError = servers.SetupError


class LoadError(Exception):
    """A wrong answer from the server, or a broken connection."""


def log(msg: str) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Processes this run starts (py-spy, wrk): each in its own session, stopped by group
# --------------------------------------------------------------------------------------

_STARTED: list[subprocess.Popen[bytes]] = []


def spawn(argv: list[str], stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
    )
    _STARTED.append(proc)
    return proc


def stop_group(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM) -> None:
    """Stop the process group of a process this run started: `first`, then SIGKILL."""
    for sig, wait in ((first, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None and not servers.group_members(proc.pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if servers.group_members(proc.pid):
        log(f"warning: process group {proc.pid} survived SIGKILL")


def stop_all_started() -> None:
    while _STARTED:
        stop_group(_STARTED.pop())


def wait_child(proc: subprocess.Popen[bytes], timeout: float, name: str) -> float:
    """Wait for `proc` (a child) to exit; the CPU seconds it used (from the rusage of the
    children reaped meanwhile: this one)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise LoadError(f"{name} still ran after {timeout:.0f}s: stopped it") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --------------------------------------------------------------------------------------
# A small keep-alive HTTP/1.1 client on a raw socket, for the upload loads (a thread each)
# --------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def render_request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None
) -> bytes:
    """A request head (for a body, put Content-Length in `headers`)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
    return "".join([*lines, "\r\n"]).encode()


class Conn:
    """One keep-alive connection; `auth` (the Authorization header) goes on every request."""

    def __init__(
        self, port: int, timeout: float = 120.0, auth: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.auth = dict(auth or {})
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf.clear()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | bytearray | memoryview = b"",
    ) -> Reply:
        hdrs = {**self.auth, **(headers or {})}
        if body or method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = str(len(body))
        head = render_request(self.port, method, target, hdrs)
        sock = self._socket()
        try:
            sock.sendall(head)
            if body:
                sock.sendall(body)
            reply = self._read(head_only=method == "HEAD")
        except OSError as exc:
            self.close()
            raise LoadError(f"connection error: {exc}") from exc
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(1 << 16)
        if not data:
            raise LoadError("the server closed the connection")
        self._buf += data

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _read(self, head_only: bool) -> Reply:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        status_line, *lines = block.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if head_only or status in (204, 304) or status < 200:
            return Reply(status, headers, b"")
        if "content-length" in headers:
            return Reply(status, headers, self._take(int(headers["content-length"])))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._line()
            while self._line():  # trailers, then the empty line
                pass
            return Reply(status, headers, b"".join(parts))
        raise LoadError(f"answer {status} has neither Content-Length nor chunked encoding")


def expect(reply: Reply, status: int, what: str) -> Reply:
    if reply.status != status:
        raise LoadError(f"{what}: expected {status}, got {reply.status}: {reply.body[:300]!r}")
    return reply


def location(reply: Reply, what: str) -> str:
    loc = reply.headers.get("location")
    if not loc:
        raise LoadError(f"{what}: no Location header")
    parts = urlsplit(loc)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_digest(loc: str, digest: str) -> str:
    return f"{loc}{'&' if '?' in loc else '?'}digest={digest}"


def check_created(reply: Reply, digest: str, what: str) -> None:
    expect(reply, 201, what)
    if reply.headers.get("docker-content-digest") != digest:
        raise LoadError(
            f"{what}: Docker-Content-Digest {reply.headers.get('docker-content-digest')}"
        )


def sha256(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# The image the read paths use
# --------------------------------------------------------------------------------------


@dataclass
class Image:
    manifest_digest: str
    manifest_size: int
    layer_digest: str
    layer_size: int


def push_blob(conn: Conn, repo: str, data: bytes) -> str:
    digest = sha256(data)
    loc = location(expect(conn.request("POST", f"/v2/{repo}/blobs/uploads/"), 202, "POST"), "POST")
    reply = conn.request(
        "PUT", with_digest(loc, digest), {"Content-Type": "application/octet-stream"}, data
    )
    check_created(reply, digest, "PUT blob")
    return digest


def push_image(port: int, auth: dict[str, str]) -> Image:
    conn = Conn(port, auth=auth)
    try:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
        layer = random.Random(7).randbytes(MIB)
        config_digest = push_blob(conn, IMAGE_REPO, config)
        layer_digest = push_blob(conn, IMAGE_REPO, layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            },
            separators=(",", ":"),
        ).encode()
        digest = sha256(manifest)
        reply = conn.request(
            "PUT", f"/v2/{IMAGE_REPO}/manifests/{TAG}", {"Content-Type": OCI_MANIFEST}, manifest
        )
        check_created(reply, digest, "PUT manifest")
        got = expect(
            conn.request("GET", f"/v2/{IMAGE_REPO}/manifests/{TAG}", {"Accept": OCI_MANIFEST}),
            200,
            "GET manifest",
        )
        if got.body != manifest:
            raise LoadError("GET manifest: not the bytes pushed")
        return Image(digest, len(manifest), layer_digest, len(layer))
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# Loads
# --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one load thread did; only that thread writes it."""

    requests: int = 0
    nbytes: int = 0  # request body bytes sent
    units: int = 0  # whole operations: blobs pushed


@dataclass
class Rate:
    seconds: float
    requests: int
    nbytes: int = 0
    units: int = 0
    how: str = ""  # how it was counted

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.nbytes / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def units_per_s(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0


class Load(Protocol):
    what: str
    client: str

    def start(self) -> None: ...
    def begin_window(self, seconds: float) -> None: ...
    def end_window(self) -> Rate: ...
    def client_cpu(self) -> float: ...
    def stop(self) -> None: ...


Step = Callable[[Conn, Tally, threading.Event], None]


class ThreadLoad:
    """`threads` threads, each with its own keep-alive connection, calling `step` until
    stopped. Windows are measured from the threads' tallies."""

    def __init__(
        self,
        port: int,
        threads: int,
        make_step: Callable[[int], Step],
        what: str,
        warmup: float,
        auth: dict[str, str],
    ) -> None:
        self.port = port
        self.auth = auth
        self.what = what
        self.client = f"this harness, {threads} threads with a keep-alive connection each"
        self.warmup = warmup
        self._make_step = make_step
        self._tallies = [Tally() for _ in range(threads)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._mark: tuple[float, int, int, int] = (0.0, 0, 0, 0)

    def _run(self, index: int) -> None:
        conn = Conn(self.port, auth=self.auth)
        tally = self._tallies[index]
        try:
            step = self._make_step(index)
            while not self._stop.is_set():
                step(conn, tally, self._stop)
        except BaseException as exc:
            if not self._stop.is_set():
                self._error = exc
                self._stop.set()
        finally:
            conn.close()

    def start(self) -> None:
        for i in range(len(self._tallies)):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._sleep(self.warmup)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)
        self.check()

    def check(self) -> None:
        if self._error is not None:
            raise LoadError(str(self._error)) from self._error
        if self._stop.is_set():
            raise LoadError("the load stopped")

    def _totals(self) -> tuple[float, int, int, int]:
        ts = list(self._tallies)
        return (
            time.monotonic(),
            sum(t.requests for t in ts),
            sum(t.nbytes for t in ts),
            sum(t.units for t in ts),
        )

    def begin_window(self, seconds: float) -> None:
        self.check()
        self._mark = self._totals()

    def end_window(self) -> Rate:
        self.check()
        now = self._totals()
        t0, r0, b0, u0 = self._mark
        return Rate(now[0] - t0, now[1] - r0, now[2] - b0, now[3] - u0, "counted by the client")

    def client_cpu(self) -> float:
        return -1.0  # inside this process: procstat.CpuMeter's client share

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self._threads.clear()


class WrkLoad:
    """A wrk run per window: it starts `margin` seconds before the window and ends after."""

    def __init__(
        self, wrk: str, url: str, headers: dict[str, str], connections: int, workdir: Path
    ) -> None:
        self.url = url
        self.headers = headers
        self.connections = connections
        shown = " ".join(f"-H '{k}: ...'" for k in headers)
        self.what = f"wrk -t2 -c{connections} {shown} (GET {urlsplit(url).path})"
        self.client = f"wrk -t2 -c{connections}"
        self.wrk = wrk
        self.margin = 0.75
        self._output = workdir / "wrk.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self._seconds = 0
        self._cpu = 0.0

    def start(self) -> None:
        pass

    def begin_window(self, seconds: float) -> None:
        self._seconds = math.ceil(seconds + 2 * self.margin)
        argv = [self.wrk, "-t2", f"-c{self.connections}", f"-d{self._seconds}s"]
        for k, v in self.headers.items():
            argv += ["-H", f"{k}: {v}"]
        with open(self._output, "wb") as out:
            self._proc = spawn([*argv, self.url], out, subprocess.STDOUT)
        time.sleep(self.margin)
        if self._proc.poll() is not None:
            raise LoadError(f"wrk exited at once: {self._output.read_text()[:500]}")

    def end_window(self) -> Rate:
        assert self._proc is not None
        self._cpu = wait_child(self._proc, self._seconds + 30, "wrk")
        _STARTED.remove(self._proc)
        self._proc = None
        text = self._output.read_text(errors="replace")
        m = re.search(r"(\d+) requests in ([\d.]+)s", text)
        if m is None:
            raise LoadError(f"cannot read wrk's output: {text[:500]}")
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if bad:
            raise LoadError(f"wrk: {bad.group(1)} answers were not 2xx")
        errors = re.search(r"Socket errors: (.*)", text)
        if errors and re.search(r"[1-9]", errors.group(1)):
            raise LoadError(f"wrk: socket errors: {errors.group(1)}")
        how = f"wrk's own count over its {self._seconds} s run around the window"
        return Rate(float(m.group(2)), int(m.group(1)), how=how)

    def client_cpu(self) -> float:
        return self._cpu

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc)


class MuxLoad:
    """`connections` keep-alive connections driven by one thread with a selector, each
    sending `request` again as soon as its answer is in. Cheaper per request than a thread
    per connection (no GIL hand-offs), so the server, not this client, is the bottleneck
    sooner. Every answer is checked: status 200, and `must_have` in its head."""

    def __init__(
        self,
        port: int,
        connections: int,
        request: bytes,
        *,
        head_only: bool,
        must_have: list[bytes],
        what: str,
        warmup: float,
    ) -> None:
        self.port = port
        self.connections = connections
        self.request = request
        self.head_only = head_only
        self.must_have = [m.lower() for m in must_have]
        self.what = what
        self.client = f"this harness: {connections} keep-alive connections on one selector thread"
        self.warmup = warmup
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._mark = (0.0, 0)

    def _answer_done(self, sock: socket.socket) -> None:
        self.count += 1
        if sock.send(self.request) != len(self.request):
            raise LoadError("could not send a whole request at once")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        socks: list[socket.socket] = []
        try:
            for _ in range(self.connections):
                sock = socket.create_connection((HOST, self.port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                socks.append(sock)
                # per connection: received bytes, body bytes still to come
                sel.register(sock, selectors.EVENT_READ, [bytearray(), 0])
                sock.sendall(self.request)
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    self._readable(key.fileobj, key.data)  # type: ignore[arg-type]
        except BaseException as exc:
            if not self._stop.is_set():
                self._error = exc
                self._stop.set()
        finally:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
            sel.close()

    def _readable(self, sock: socket.socket, state: list[Any]) -> None:
        data = sock.recv(1 << 16)
        if not data:
            raise LoadError("the server closed a connection")
        buf: bytearray = state[0]
        buf += data
        while True:
            if state[1]:  # inside a body
                taken = min(state[1], len(buf))
                del buf[:taken]
                state[1] -= taken
                if state[1]:
                    return
                self._answer_done(sock)
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 200 "):
                raise LoadError(f"expected 200: {head[:200]!r}")
            for needle in self.must_have:
                if needle not in head:
                    raise LoadError(f"{needle!r} missing in the answer: {head[:300]!r}")
            length = 0
            if not self.head_only:
                m = re.search(rb"\r\ncontent-length: *(\d+)", head)
                if m is None:
                    raise LoadError(f"no Content-Length: {head[:300]!r}")
                length = int(m.group(1))
            if length:
                state[1] = length
                continue
            self._answer_done(sock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mux-load", daemon=True)
        self._thread.start()
        self._stop.wait(self.warmup)
        self.check()

    def check(self) -> None:
        if self._error is not None:
            raise LoadError(str(self._error)) from self._error
        if self._stop.is_set():
            raise LoadError("the load stopped")

    def begin_window(self, seconds: float) -> None:
        self.check()
        self._mark = (time.monotonic(), self.count)

    def end_window(self) -> Rate:
        self.check()
        t0, n0 = self._mark
        return Rate(time.monotonic() - t0, self.count - n0, how="counted by the client")

    def client_cpu(self) -> float:
        return -1.0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def chunked_upload_step(blob_size: int, chunk: int) -> Callable[[int], Step]:
    """POST, PATCH `chunk`-byte pieces with Content-Range, PUT ?digest=. Every blob is
    new (a counter in each chunk), so each PUT publishes: fsync, rename, fsync of the
    directory, rows."""
    pid = os.getpid()

    def make(index: int) -> Step:
        buf = bytearray(random.Random(index).randbytes(chunk))
        count = 0

        def step(conn: Conn, tally: Tally, stop: threading.Event) -> None:
            nonlocal count
            count += 1
            reply = expect(conn.request("POST", f"/v2/{UPLOAD_REPO}/blobs/uploads/"), 202, "POST")
            tally.requests += 1
            loc = location(reply, "POST")
            hasher = hashlib.sha256()
            for start in range(0, blob_size, chunk):
                if stop.is_set():
                    return  # abandoned: the server purges it later
                struct.pack_into("<QQQQ", buf, 0, pid, index, count, start)
                piece = memoryview(buf)[: min(chunk, blob_size - start)]
                hasher.update(piece)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                }
                reply = expect(conn.request("PATCH", loc, headers, piece), 202, "PATCH")
                loc = location(reply, "PATCH")
                tally.requests += 1
                tally.nbytes += len(piece)
            digest = "sha256:" + hasher.hexdigest()
            check_created(conn.request("PUT", with_digest(loc, digest)), digest, "PUT")
            tally.requests += 1
            tally.units += 1

        return step

    return make


def small_upload_step(size: int) -> Callable[[int], Step]:
    """POST, then PUT ?digest= with the whole (new, random) blob as the body."""

    def make(_: int) -> Step:
        def step(conn: Conn, tally: Tally, stop: threading.Event) -> None:
            data = os.urandom(size)
            digest = sha256(data)
            reply = expect(conn.request("POST", f"/v2/{UPLOAD_REPO}/blobs/uploads/"), 202, "POST")
            tally.requests += 1
            headers = {"Content-Type": "application/octet-stream"}
            put = conn.request("PUT", with_digest(location(reply, "POST"), digest), headers, data)
            check_created(put, digest, "PUT")
            tally.requests += 1
            tally.nbytes += size
            tally.units += 1

        return step

    return make


# --------------------------------------------------------------------------------------
# The hot paths
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    duration: float  # seconds of each window
    warmup: float
    baseline: bool  # measure the rate without a profiler first
    upload_blob: int
    upload_chunk: int
    upload_clients: int
    small_blob: int
    small_clients: int
    connections: int
    rate: int  # py-spy samples per second


FULL = Sizes(8.0, 1.5, True, 32 * MIB, MIB, 4, 4096, 8, 32, 250)
QUICK = Sizes(2.0, 0.5, False, 8 * MIB, MIB, 2, 4096, 8, 32, 250)


@dataclass(frozen=True)
class PathDef:
    name: str  # file stem under the output directory
    title: str


PATHS = (
    PathDef("manifest-get", f"manifest GET by tag: GET /v2/{IMAGE_REPO}/manifests/{TAG}"),
    PathDef("blob-head", f"blob HEAD: HEAD /v2/{IMAGE_REPO}/blobs/<1 MiB layer>"),
    PathDef("upload-chunked", "chunked upload: POST, PATCH 1 MiB chunks, PUT ?digest="),
    PathDef("upload-small", "small monolithic uploads: POST, PUT ?digest= with a 4 KiB body"),
)


def make_load(
    name: str,
    port: int,
    image: Image,
    sizes: Sizes,
    wrk: str | None,
    workdir: Path,
    auth: dict[str, str],
) -> Load:
    c = sizes.connections
    if name == "manifest-get":
        target = f"/v2/{IMAGE_REPO}/manifests/{TAG}"
        if wrk:
            url = f"http://{HOST}:{port}{target}"
            return WrkLoad(wrk, url, {"Accept": OCI_MANIFEST, **auth}, c, workdir)
        return MuxLoad(
            port,
            c,
            render_request(port, "GET", target, {"Accept": OCI_MANIFEST, **auth}),
            head_only=False,
            must_have=[f"docker-content-digest: {image.manifest_digest}".encode()],
            what=f"GET {target} with Accept: {OCI_MANIFEST}, {c} connections",
            warmup=sizes.warmup,
        )
    if name == "blob-head":
        target = f"/v2/{IMAGE_REPO}/blobs/{image.layer_digest}"
        return MuxLoad(
            port,
            c,
            render_request(port, "HEAD", target, auth),
            head_only=True,
            must_have=[
                f"docker-content-digest: {image.layer_digest}".encode(),
                f"content-length: {image.layer_size}".encode(),
            ],
            what=f"HEAD of the 1 MiB layer, {c} connections",
            warmup=sizes.warmup,
        )
    if name == "upload-chunked":
        what = (
            f"{sizes.upload_clients} clients, each: POST, PATCH {sizes.upload_chunk // MIB} MiB "
            f"chunks of a new {sizes.upload_blob // MIB} MiB blob, PUT ?digest="
        )
        step = chunked_upload_step(sizes.upload_blob, sizes.upload_chunk)
        return ThreadLoad(port, sizes.upload_clients, step, what, sizes.warmup, auth)
    if name == "upload-small":
        what = (
            f"{sizes.small_clients} clients, each: POST, PUT ?digest= with a new "
            f"{sizes.small_blob} B blob"
        )
        step = small_upload_step(sizes.small_blob)
        return ThreadLoad(port, sizes.small_clients, step, what, sizes.warmup, auth)
    raise ValueError(name)


# --------------------------------------------------------------------------------------
# Reading py-spy's raw output
# --------------------------------------------------------------------------------------

GLUE = "granian/ASGI glue"
STARLETTE = "Starlette"
ROUTER = "cargohold router"
HANDLER = "handler"
SERVICES = "services"
DB = "db/sqlite"
STORAGE = "storage/threads"
IDLE = "idle"
LAYERS = (GLUE, STARLETTE, ROUTER, HANDLER, SERVICES, DB, STORAGE)

ROUTER_FILES = (
    "cargohold/app.py",
    "cargohold/web/context.py",
    "cargohold/web/registry/router.py",
    "cargohold/web/registry/errors.py",
    "cargohold/auth/",
)
# Frames of the worker's start-up (the worker is forked from `cargohold serve`, so its main
# thread keeps the command's frames): on every stack of the loop thread, no request's time.
SCAFFOLDING = (
    "typer/",
    "click/",
    "multiprocessing/",
    "granian/server/",
    "cargohold/cli.py",
)
# Leaves of threads that wait for work. py-spy's own idle detection drops the loop's epoll
# wait, but counts a pool thread blocked on its queue as active.
WAIT_LEAVES = {
    ("_worker", "concurrent/futures/thread.py"),
    ("wait", "threading.py"),
    ("get", "queue.py"),
    ("select", "selectors.py"),
}
NATIVE = "<native: granian (Rust) + uvloop, entered from>"
NO_FRAME = "<no Python frame: native code>"

Frame = tuple[str, str, int]  # function, file (as py-spy shortens it), line


def layer_of(frame: Frame) -> str | None:
    """The layer a frame's file belongs to; None for the standard library and the rest,
    whose time goes to the nearest caller that has a layer."""
    func, path, _ = frame
    if path.startswith("granian/"):
        return GLUE
    if path.startswith("starlette/"):
        return STARLETTE
    if path.startswith(ROUTER_FILES):
        return ROUTER
    if path.startswith("cargohold/web/"):
        return HANDLER
    if path.startswith(("cargohold/services/", "cargohold/domain/")):
        return SERVICES
    if path.startswith(("cargohold/db/", "sqlalchemy/", "sqlite3/", "aiosqlite/", "psycopg")):
        return DB
    if path.startswith(("cargohold/storage/", "concurrent/futures/", "asyncio/threads.py")):
        return STORAGE
    if path.startswith("anyio/") and "thread" in path:
        return STORAGE
    if path == "asyncio/base_events.py" and func.endswith("run_in_executor"):
        return STORAGE
    return None


def parse_frame(text: str) -> Frame:
    """'Router.dispatch (cargohold/web/registry/router.py:87)' -> (func, file, line)."""
    func, sep, where = text.rpartition(" (")
    if not sep:
        return text, "", 0
    path, _, line = where.rstrip(")").rpartition(":")
    return func, path, int(line) if line.isdigit() else 0


@dataclass
class Stack:
    tid: int
    thread: str
    frames: list[Frame]  # outermost first
    count: int


def parse_raw(text: str) -> list[Stack]:
    """py-spy `-f raw --threads` lines: 'thread (TID): name;frame;frame COUNT'."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts = stack.split(";")
        m = re.match(r"thread \((0x[0-9a-fA-F]+|\d+)\)(?::\s*(.*))?$", parts[0].strip())
        if m is None:
            tid, name, frames = 0, "", parts
        else:
            tid, name, frames = int(m.group(1), 0), m.group(2) or "", parts[1:]
        out.append(Stack(tid, name, [parse_frame(f) for f in frames if f.strip()], int(count)))
    return out


@dataclass
class ThreadUse:
    kind: str  # event loop, to_thread pool, granian runtime
    threads: int
    cores: float  # busy samples / samples per thread: 1.0 = one core all the time
    top: list[tuple[str, float]] = field(default_factory=list)  # leaf label, % of one core


@dataclass
class Summary:
    expected: int  # samples one thread gives over the window (rate x duration)
    loop_samples: int  # busy samples of the event-loop thread
    self_layers: dict[str, float] = field(default_factory=dict)  # % of the loop's wall time
    inclusive_layers: dict[str, float] = field(default_factory=dict)
    top_self: list[tuple[str, str, float, int]] = field(default_factory=list)  # func, file, %, line
    top_inclusive: list[tuple[str, str, float]] = field(default_factory=list)
    threads: list[ThreadUse] = field(default_factory=list)


def _label(frame: Frame) -> str:
    return f"{frame[0]} ({frame[1]}:{frame[2]})" if frame[1] else frame[0]


def _self_layer(frames: list[Frame]) -> str:
    for frame in reversed(frames):
        layer = layer_of(frame)
        if layer is not None:
            return layer
    return GLUE  # no Python frame, or only start-up frames: granian's native server


def _is_scaffolding(frame: Frame) -> bool:
    return frame[0] == "<module>" or frame[1].startswith(SCAFFOLDING)


def _waiting(frames: list[Frame]) -> bool:
    return bool(frames) and (frames[-1][0].rsplit(".", 1)[-1], frames[-1][1]) in WAIT_LEAVES


def _leaf(frames: list[Frame]) -> Frame:
    """The innermost frame; a start-up frame as the leaf means native code called from it."""
    if not frames:
        return (NO_FRAME, "", 0)
    leaf = frames[-1]
    return (NATIVE, leaf[1], leaf[2]) if _is_scaffolding(leaf) else leaf


def summarise(stacks: Sequence[Stack], loop_tid: int, expected: int, top: int = 15) -> Summary:
    """Split the event-loop thread's wall time into layers, self time and inclusive time,
    and say what the other threads did."""
    expected = max(expected, 1)
    loop = [s for s in stacks if s.tid == loop_tid and not _waiting(s.frames)]
    busy = sum(s.count for s in loop)
    wall = max(expected, busy)
    summary = Summary(expected=expected, loop_samples=busy)

    self_layers: Counter[str] = Counter()
    incl_layers: Counter[str] = Counter()
    self_funcs: Counter[tuple[str, str]] = Counter()
    self_lines: dict[tuple[str, str], Counter[int]] = {}
    incl_funcs: Counter[tuple[str, str]] = Counter()
    for s in loop:
        self_layers[_self_layer(s.frames)] += s.count
        for layer in {layer_of(f) for f in s.frames}:
            if layer is not None:
                incl_layers[layer] += s.count
        func, path, line = _leaf(s.frames)
        self_funcs[(func, path)] += s.count
        self_lines.setdefault((func, path), Counter())[line] += s.count
        for key in {(f[0], f[1]) for f in s.frames if not _is_scaffolding(f)}:
            incl_funcs[key] += s.count
    summary.self_layers = {layer: 100 * self_layers[layer] / wall for layer in LAYERS}
    summary.self_layers[IDLE] = 100 * (wall - busy) / wall
    summary.inclusive_layers = {layer: 100 * incl_layers[layer] / wall for layer in LAYERS}
    for (func, path), count in self_funcs.most_common(top):
        hottest = self_lines[(func, path)].most_common(1)[0][0]
        summary.top_self.append((func, path, 100 * count / wall, hottest))
    summary.top_inclusive = [(f, p, 100 * c / wall) for (f, p), c in incl_funcs.most_common(top)]

    kinds: dict[int, str] = {}
    for s in stacks:
        if s.tid == loop_tid:
            kinds[s.tid] = "event loop (main thread)"
        elif any(f[1].startswith("concurrent/futures/") for f in s.frames):
            kinds[s.tid] = "to_thread pool"
        else:
            kinds.setdefault(s.tid, "granian runtime (Rust; seen when it holds a Python state)")
    for kind in dict.fromkeys(kinds.values()):
        mine = [s for s in stacks if kinds.get(s.tid) == kind and not _waiting(s.frames)]
        leaves: Counter[str] = Counter()
        for s in mine:
            leaves[_label(_leaf(s.frames))] += s.count
        summary.threads.append(
            ThreadUse(
                kind,
                len({s.tid for s in stacks if kinds.get(s.tid) == kind}),
                sum(s.count for s in mine) / expected,
                [(label, 100 * c / expected) for label, c in leaves.most_common(6)],
            )
        )
    return summary


# --------------------------------------------------------------------------------------
# py-spy
# --------------------------------------------------------------------------------------


def find_py_spy(given: str | None) -> str | None:
    if given:
        return given if os.access(given, os.X_OK) else None
    exe = REPO / ".venv" / "bin" / "py-spy"
    if os.access(exe, os.X_OK):
        return str(exe)
    return shutil.which("py-spy")


def tool_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


@dataclass
class Recording:
    argv: str
    ok: bool
    cpu_s: float = 0.0
    messages: list[str] = field(default_factory=list)  # py-spy's own lines: samples, lags


def record(spy: str, worker: int, fmt: str, out: Path, rate: int, duration: float) -> Recording:
    argv = [spy, "record", "-p", str(worker), "-r", str(rate), "-f", fmt, "-o", str(out)]
    argv += ["-d", str(max(1, round(duration)))]
    if fmt == "raw":
        argv.append("--threads")
    with tempfile.TemporaryFile() as err:
        proc = spawn(argv, err, subprocess.STDOUT)
        try:
            cpu = wait_child(proc, duration + 60, "py-spy")
        finally:
            if proc in _STARTED:
                stop_group(proc, signal.SIGINT)
                _STARTED.remove(proc)
        err.seek(0)
        text = err.read().decode(errors="replace")
    shown = " ".join(argv).replace(str(REPO) + "/", "").replace(str(out.parent) + "/", "<out>/")
    # Keep py-spy's sample count and its warnings (falling behind), not its chatter.
    messages = [
        re.sub(r"^Wrote .* data to '.*'\. ", "", line.removeprefix("py-spy> ").strip())
        for line in text.splitlines()
        if line.strip() and ("Samples:" in line or "behind" in line or "rror" in line)
    ]
    ok = proc.returncode == 0 and out.is_file() and out.stat().st_size > 0
    return Recording(shown, ok, cpu, messages[-6:])


def check_ptrace(spy: str, pid: int) -> None:
    """py-spy needs ptrace on the worker; say so clearly instead of failing four times."""
    try:
        res = subprocess.run(
            [spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupError("py-spy dump hung for 30s") from exc
    if res.returncode != 0:
        raise SetupError(
            f"py-spy cannot read process {pid} (ptrace not permitted? run as root or set "
            f"kernel.yama.ptrace_scope=0): {(res.stderr or res.stdout).strip()[:300]}"
        )


# --------------------------------------------------------------------------------------
# One hot path
# --------------------------------------------------------------------------------------


@dataclass
class Window:
    label: str  # without profiler, py-spy flamegraph, py-spy raw
    rate: Rate
    worker_cpu_pct: float  # % of one core
    loop_cpu_pct: float  # the worker's main thread alone: on a CPU, not just not idle
    server_cpu_pct: float
    client_cpu_pct: float
    profiler_cpu_pct: float
    other_cpu_pct: float  # the rest of the machine
    steal_pct: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    recording: Recording | None = None


@dataclass
class PathRun:
    name: str
    title: str
    what: str = ""
    client: str = ""
    windows: list[Window] = field(default_factory=list)
    summary: Summary | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of one thread, seconds."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / procstat.TICKS


def measure_window(
    label: str,
    load: Load,
    server: servers.Server,
    worker: int,
    seconds: float,
    run: Callable[[], Recording | None],
) -> Window:
    load.begin_window(seconds)
    meter = procstat.CpuMeter(server.pid)
    worker0, loop0 = procstat.cpu_seconds(worker), thread_cpu_seconds(worker, worker)
    recording = run()
    worker_s = procstat.cpu_seconds(worker) - worker0
    loop_s = thread_cpu_seconds(worker, worker) - loop0
    use = meter.stop()
    rate = load.end_window()
    wall = use.wall_s
    profiler_pct = 100 * recording.cpu_s / wall if recording else 0.0
    external_client = load.client_cpu()
    client_pct = use.client_pct if external_client < 0 else 100 * external_client / wall
    other = use.other_pct - profiler_pct - (0.0 if external_client < 0 else client_pct)
    return Window(
        label=label,
        rate=rate,
        worker_cpu_pct=100 * worker_s / wall,
        loop_cpu_pct=100 * loop_s / wall,
        server_cpu_pct=use.server_pct,
        client_cpu_pct=client_pct,
        profiler_cpu_pct=profiler_pct,
        other_cpu_pct=max(other, 0.0),
        steal_pct=use.steal_pct,
        load_start=use.load_start,
        load_end=use.load_end,
        recording=recording,
    )


def profile_path(
    pdef: PathDef,
    load: Load,
    server: servers.Server,
    worker: int,
    spy: str,
    sizes: Sizes,
    out: Path,
) -> PathRun:
    run = PathRun(pdef.name, pdef.title, load.what, load.client)
    svg, raw = out / f"{pdef.name}.svg", out / f"{pdef.name}.raw.txt"
    for old in (svg, raw):
        old.unlink(missing_ok=True)
    d = sizes.duration
    try:
        load.start()
        if sizes.baseline:
            log(f"{pdef.name}: {d:.0f}s without profiler")

            def pause() -> None:
                time.sleep(d)

            run.windows.append(measure_window("without profiler", load, server, worker, d, pause))
            log(f"{pdef.name}:   {fmt_rate(run.windows[-1].rate)}")
        for fmt, path, label in (
            ("flamegraph", svg, "py-spy flamegraph"),
            ("raw", raw, "py-spy raw"),
        ):
            log(f"{pdef.name}: py-spy -f {fmt}, {d:.0f}s")
            spy_run = functools.partial(record, spy, worker, fmt, path, sizes.rate, d)
            window = measure_window(label, load, server, worker, d, spy_run)
            run.windows.append(window)
            rec = window.recording
            log(f"{pdef.name}:   {fmt_rate(window.rate)}")
            if rec is None or not rec.ok:
                msgs = "; ".join(rec.messages) if rec else ""
                raise LoadError(f"py-spy -f {fmt} wrote nothing: {msgs}")
            run.files.append(path.name)
        expected = sizes.rate * max(1, round(d))
        run.summary = summarise(parse_raw(raw.read_text()), worker, expected)
    except LoadError as exc:
        run.error = str(exc)
        log(f"{pdef.name}: FAILED: {exc}")
    finally:
        load.stop()
    if run.error is None and not server.alive():
        run.error = f"cargohold exited (code {server.exit_code})"
    elif run.error is None and not servers.is_running(worker):
        run.error = f"the worker process {worker} exited during the profile"
    return run


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fmt_rate(rate: Rate) -> str:
    text = f"{rate.per_s:,.0f} requests/s"
    if rate.units:
        text += f", {rate.units_per_s:,.1f} blobs/s ({rate.mib_per_s:,.1f} MiB/s)"
    return text


def fmt_load(load: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


@dataclass
class ProfileRun:
    quick: bool
    started: str
    duration_s: float
    invocation: str
    sizes: Sizes
    server_cmd: str
    worker: int
    versions: dict[str, str]
    paths: list[PathRun]
    warnings: list[str] = field(default_factory=list)
    auth: str = "token"  # what the requests carried: "token" or "basic"


def render_markdown(run: ProfileRun, env: sysinfo.Environment) -> str:
    s = run.sizes
    lines = [
        "# Profiles of cargohold's hot paths",
        "",
        f"Generated by `{run.invocation}` on {run.started} in {run.duration_s:.0f} s "
        "(readings and next steps: [README.md](README.md)).",
        "",
    ]
    if run.quick:
        lines += ["**Quick smoke run**: short windows; not for reading.", ""]
    lines += [f"> warning: {w}" for w in run.warnings]
    lines += [
        f"Server: `{run.server_cmd}`; py-spy sampled the worker process (PID {run.worker}, "
        f"the child of `cargohold serve`) at {s.rate} Hz for {s.duration:.0f} s per profile, "
        "pausing it for each sample (py-spy's default).",
        "",
        AUTH_TEXT[run.auth],
        "",
        "How to read the tables:",
        "",
        "- Percentages are of the **event-loop thread's wall time**: of the rate x duration = "
        f"{s.rate * max(1, round(s.duration))} samples py-spy takes of that thread, those in "
        "which it was not idle (py-spy leaves out the samples where the thread waits in "
        "epoll). The layers and `idle` add up to 100 %.",
        "- A sample's *self* layer is that of its innermost frame that has one (standard "
        "library frames count for their caller); *inclusive* counts a layer once for every "
        "sample it is anywhere on.",
        "- `<native: granian (Rust) + uvloop>`: the loop thread in native code entered from the "
        "worker's main frame: granian's Rust server and uvloop (both invisible to py-spy "
        "without `--native`). It is counted as `granian/ASGI glue`. Likewise the self time "
        "of a line that calls granian's `send`/`receive` (`Response.__call__`, "
        "`Request.stream`) includes granian's native work behind it.",
        "- Not idle is not on a CPU: a thread that waits for the GIL, or for a CPU on a busy "
        "machine, counts as busy. Compare with the *loop thread CPU* column (from /proc).",
        "- Other threads are in cores (1.0 = one thread busy all the time); a pool thread "
        "blocked on its work queue counts as idle. `_WorkItem.run` as a leaf is a C function "
        "handed to `to_thread` directly (`hasher.update`, `os.close`), whose time py-spy "
        "cannot see into.",
        "- Requests/s are what the client saw on a shared machine, and the profiled windows "
        "are slowed by py-spy itself (it stops the worker for every sample). Load average "
        "(1/5/15 min) and the CPU used by the rest of the machine are given for each window.",
        "",
    ]
    for p in run.paths:
        lines += _path_section(p)
    lines += [
        "## Machine",
        "",
        f"- CPU: {env.cpu_model}, {env.logical_cpus} logical CPUs, {env.memory_gib:.0f} GiB",
        f"- OS: {env.os_name}, {env.kernel}; data on {env.data_fs}",
        f"- load average at start {fmt_load(env.load_start)}, at end "
        f"{fmt_load(env.load_end or env.load_start)}",
    ]
    lines += [f"- {k}: {v}" for k, v in run.versions.items()]
    return "\n".join(lines) + "\n"


def _path_section(p: PathRun) -> list[str]:
    lines = [f"## {p.name}: {p.title}", ""]
    if p.what:
        lines += [f"Load: {p.what}.", ""]
    if p.error:
        lines += [f"**Failed**: {p.error}", ""]
    if p.windows:
        lines += [
            "| window | requests/s | upload | worker CPU | loop thread CPU | client | py-spy "
            "| rest of machine | load avg start | load avg end |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for w in p.windows:
            upload = (
                f"{w.rate.units_per_s:,.1f} blobs/s, {w.rate.mib_per_s:,.1f} MiB/s"
                if w.rate.units
                else ""
            )
            lines.append(
                f"| {w.label} | {w.rate.per_s:,.0f} | {upload} | {w.worker_cpu_pct:.0f} % "
                f"| {w.loop_cpu_pct:.0f} % "
                f"| {w.client_cpu_pct:.0f} % | {w.profiler_cpu_pct:.0f} % "
                f"| {w.other_cpu_pct:.0f} % | {fmt_load(w.load_start)} | {fmt_load(w.load_end)} |"
            )
        how = {w.rate.how for w in p.windows}
        lines += ["", f"Requests counted: {'; '.join(sorted(how))}. Client: {p.client}.", ""]
        for w in p.windows:
            if w.recording:
                lines.append(f"- `{w.recording.argv}`: {'; '.join(w.recording.messages)}")
        lines.append("")
    s = p.summary
    if s is None:
        return lines
    lines += [
        f"Event-loop thread: busy in {s.loop_samples} of {s.expected} samples.",
        "",
        "| layer | self % | inclusive % |",
        "|---|---:|---:|",
    ]
    for layer in (*LAYERS, IDLE):
        incl = s.inclusive_layers.get(layer)
        lines.append(
            f"| {layer} | {s.self_layers[layer]:.1f} | {'' if incl is None else f'{incl:.1f}'} |"
        )
    lines += ["", "Top self time (event-loop thread):", "", "| function | file:hottest line | % |"]
    lines.append("|---|---|---:|")
    for func, path, pct, line in s.top_self:
        lines.append(f"| `{func}` | {path}:{line} | {pct:.1f} |")
    lines += ["", "Top inclusive time (event-loop thread, start-up frames left out):", ""]
    lines += ["| function | file | % |", "|---|---|---:|"]
    lines += [f"| `{func}` | {path} | {pct:.1f} |" for func, path, pct in s.top_inclusive]
    lines += ["", "Threads of the worker:", ""]
    for t in s.threads:
        tops = ", ".join(f"`{label}` {pct:.0f} %" for label, pct in t.top[:4] if pct >= 0.5)
        lines.append(
            f"- {t.kind} ({t.threads} thread(s)): {t.cores:.2f} cores"
            + (f"; {tops}" if tops else "")
        )
    lines += ["", f"Files: {', '.join(f'[{f}]({f})' for f in p.files)}", ""]
    return lines


def render_text(run: ProfileRun) -> str:
    out = []
    for p in run.paths:
        out.append(f"{p.name}: " + (f"FAILED: {p.error}" if p.error else ""))
        for w in p.windows:
            out.append(f"  {w.label:18} {fmt_rate(w.rate)}; load {fmt_load(w.load_end)}")
        if p.summary:
            layers = ", ".join(
                f"{k} {v:.0f}%" for k, v in p.summary.self_layers.items() if v >= 0.5
            )
            out.append(f"  event loop: {layers}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Profile cargohold's hot paths with py-spy (flamegraphs + a summary).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="~30 s smoke run, short windows")
    p.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default {DEFAULT_OUT.relative_to(REPO)}; "
        f"with --quick {QUICK_OUT.relative_to(REPO)})",
    )
    p.add_argument(
        "--paths",
        default=",".join(x.name for x in PATHS),
        help="comma-separated hot paths to profile",
    )
    p.add_argument("--duration", type=float, help="seconds per window (8; --quick 2)")
    p.add_argument("--rate", type=int, help="py-spy samples per second (250)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unprofiled window")
    p.add_argument("--no-wrk", action="store_true", help="Python client for manifest GET too")
    p.add_argument(
        "--auth",
        choices=("token", "basic"),
        default="token",
        help="what every request carries: a registry token (Docker token flow, as docker and "
        "podman) or the superuser's Basic credentials",
    )
    p.add_argument("--cargohold", type=Path, default=REPO / ".venv" / "bin" / "cargohold")
    p.add_argument("--py-spy", dest="py_spy", help="py-spy executable (.venv/bin/py-spy)")
    p.add_argument("--tmpdir", help="where the data directory goes (system temp)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for /v2/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    invocation = " ".join([".venv/bin/python bench/hotpaths.py", *words])
    try:
        return servers.run_cli(lambda: run(args, invocation), log)
    finally:
        stop_all_started()


def select_paths(text: str) -> list[PathDef]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {p.name: p for p in PATHS}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SetupError(f"unknown paths {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def run(args: argparse.Namespace, invocation: str) -> int:
    t_start = time.monotonic()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        **{
            **asdict(base),
            "duration": args.duration or base.duration,
            "rate": args.rate or base.rate,
            "baseline": base.baseline and not args.no_baseline,
        }
    )
    paths = select_paths(args.paths)
    if not os.access(args.cargohold, os.X_OK):
        raise SetupError(f"cargohold not found at {args.cargohold} (make install)")
    spy = find_py_spy(args.py_spy)
    if spy is None:
        raise SetupError("py-spy not found (.venv/bin/pip install py-spy)")
    wrk = shutil.which("wrk")
    use_wrk = None if args.no_wrk else wrk
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    # Chunked uploads write every blob to disk: allow 500 MiB/s over all of their windows.
    windows = 3 if sizes.baseline else 2
    need = int(500 * MIB * (windows * (sizes.duration + 2) + sizes.warmup)) + (1 << 30)
    if shutil.disk_usage(tmp).free < need:
        raise SetupError(f"{tmp} has less than {need >> 20} MiB free")
    out: Path = (args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)).resolve()
    out.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix="cargohold-profile-", dir=tmp))
    env = sysinfo.collect(workdir)
    revision, fingerprint = sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO)
    results: list[PathRun] = []
    server: servers.Server | None = None
    worker = 0
    failed = True  # until every path ran: keeps the server log on an error
    try:
        server = servers.start_cargohold(
            args.cargohold,
            workdir / "data",
            workdir / "cargohold.log",
            timeout=args.start_timeout,
            extra_env=SERVER_ENV,
        )
        workers = [p for p in servers.process_tree(server.pid) if p != server.pid]
        if len(workers) != 1:
            raise SetupError(f"expected one worker process under {server.pid}, found {workers}")
        worker = workers[0]
        log(f"cargohold on {server.url} (process group {server.pid}, worker {worker})")
        check_ptrace(spy, worker)
        auth = (
            server.bearer([f"repository:{r}:pull,push" for r in (IMAGE_REPO, UPLOAD_REPO)])
            if args.auth == "token"
            else server.authorization
        )
        try:
            image = push_image(server.port, auth)
        except (LoadError, OSError, http.client.HTTPException) as exc:
            raise SetupError(f"pushing the test image failed: {exc}") from exc
        for pdef in paths:
            load = make_load(pdef.name, server.port, image, sizes, use_wrk, workdir, auth)
            results.append(profile_path(pdef, load, server, worker, spy, sizes, out))
            if not server.alive() or not servers.is_running(worker):
                break
        failed = any(r.error for r in results) or len(results) < len(paths)
    finally:
        env.load_end = os.getloadavg()
        stop_all_started()
        if server is not None:
            log(f"stopping cargohold (process group {server.pid})")
            try:
                server.stop()
            except servers.ServerError as exc:
                log(f"warning: {exc}")
        if args.keep_data:
            log(f"kept {workdir}")
        elif failed:
            shutil.rmtree(workdir / "data", ignore_errors=True)
            log(f"kept the server log in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    assert server is not None
    shown_cmd = " ".join(["CARGOHOLD_DATA_DIR=<tmp>", *server.argv]).replace(str(REPO) + "/", "")
    versions = {
        "cargohold": sysinfo.cargohold_version(args.cargohold.parent / "python"),
        "repository": f"git {revision} (source fingerprint {fingerprint})",
        "py-spy": tool_version([spy, "--version"]),
        "wrk": tool_version([wrk, "-v"]).split(" Copyright")[0] if wrk else "not installed",
    }
    report = ProfileRun(
        quick=args.quick,
        started=started,
        duration_s=time.monotonic() - t_start,
        invocation=invocation,
        sizes=sizes,
        server_cmd=shown_cmd,
        worker=worker,
        versions=versions,
        paths=results,
        auth=args.auth,
    )
    if (sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO)) != (revision, fingerprint):
        report.warnings.append("cargohold's source changed while this ran")
    (out / "summary.md").write_text(render_markdown(report, env))
    doc = {"run": asdict(report), "environment": asdict(env)}
    (out / "summary.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(render_text(report))
    log(f"wrote {out}/summary.md, summary.json and {len(results)} profiles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
