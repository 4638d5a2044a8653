"""Graceful shutdown of `cargohold serve` (docs/operations.md, "Stopping a server").

SIGTERM to the serving process (what Kubernetes and `docker stop` send): granian stops
accepting at once, so new connections are refused (a load balancer moves on to another
replica), lets the requests in flight finish, and only then runs the lifespan's shutdown,
which stops the background work: running jobs are given back (queued again, the attempt
not counted) and running periodic tasks handed back. A stopping worker is killed only
after `server.shutdown_timeout_seconds` plus `jobs.stop_seconds` plus a few seconds; before
that setting existed, granian killed it after a fixed 10 s, cutting longer uploads.

The uploads are streamed slowly; the test waits on what the server did (an upload's file
growing, a connection refused), never on how long anything took."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.oci import unique_repo
from tests.support.server import RegistryProcess

WAIT = 60.0  # seconds a condition may take to come true (never asserted on)
CHUNK = 64 * 1024
HEAD = 24  # chunks sent before the signal: more than the 1 MiB the server buffers
TAIL = 40  # chunks sent after new connections are refused, spread over AFTER_SIGNAL
# After the signal the uploads go on this long: more than the 10 s after which granian
# used to kill a stopping worker.
AFTER_SIGNAL = 12.0
LEASE = 300  # jobs.lease_seconds: a task row still leased after the stop would show it


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {WAIT:g} s")
        time.sleep(0.05)


class SlowBody:
    """A request body of fixed bytes: HEAD chunks at once, then nothing until `go` is
    set, then TAIL chunks spread over AFTER_SIGNAL seconds."""

    def __init__(self, go: threading.Event) -> None:
        self.go = go
        self.data = os.urandom((HEAD + TAIL) * CHUNK)
        self.digest = "sha256:" + hashlib.sha256(self.data).hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        chunks = [self.data[i : i + CHUNK] for i in range(0, len(self.data), CHUNK)]
        yield from chunks[:HEAD]
        if not self.go.wait(WAIT):
            return  # the test failed already: end the body
        for chunk in chunks[HEAD:]:
            time.sleep(AFTER_SIGNAL / TAIL)
            yield chunk


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def upload_file(server: RegistryProcess, location: str) -> Path:
    return server.data_dir / "storage" / "uploads" / location.rstrip("/").rsplit("/", 1)[-1]


def db_rows(server: RegistryProcess, statement: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(server.data_dir / "cargohold.db")
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def stamp(when: datetime) -> str:
    """A time as the database stores it (UTC, microseconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def test_sigterm_finishes_uploads_in_flight(tmp_path: Path) -> None:
    env = {
        "CARGOHOLD_SERVER__WORKERS": "2",
        "CARGOHOLD_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "60",
        "CARGOHOLD_JOBS__TEST_KINDS": "1",
        "CARGOHOLD_JOBS__POLL_SECONDS": "0.2",
        "CARGOHOLD_JOBS__STOP_SECONDS": "1",
        "CARGOHOLD_JOBS__LEASE_SECONDS": str(LEASE),
    }
    server = RegistryProcess(tmp_path / "server", env=env).start()
    repo = unique_repo("shutdown")
    go = threading.Event()
    try:
        # Background work in progress: a long job, and the test periodic task firing.
        effects = tmp_path / "job"
        effects.mkdir()
        now = stamp(datetime.now(UTC))
        db_rows(
            server,
            "INSERT INTO job (kind, payload, state, run_at, attempts, max_attempts, created_at) "
            "VALUES ('test.sleep_and_record', ?, 'queued', ?, 0, 5, ?)",
            json.dumps({"dir": str(effects), "seconds": 600}),
            now,
            now,
        )
        wait_for(lambda: list(effects.glob("ran-*")), "running the job")
        periodic = server.data_dir / "test-periodic"
        wait_for(lambda: list(periodic.glob("fired-*")), "firing the periodic task")

        # Two uploads in flight: a monolithic PUT (the whole blob in the closing request)
        # and a streamed PATCH of a chunked upload.
        with server.client() as c:
            put_at = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
            patch_at = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        put_body, patch_body = SlowBody(go), SlowBody(go)
        answers: dict[str, httpx.Response | Exception] = {}

        def send(method: str, url: str, body: SlowBody, **params: str) -> None:
            try:
                with server.client(timeout=WAIT * 2) as c:
                    answers[method] = c.request(
                        method,
                        url,
                        params=params,
                        content=iter(body),
                        headers={"Content-Type": "application/octet-stream"},
                    )
            except Exception as exc:  # reported by the assertions below
                answers[method] = exc

        threads = [
            threading.Thread(
                target=send, args=("PUT", put_at, put_body), kwargs={"digest": put_body.digest}
            ),
            threading.Thread(target=send, args=("PATCH", patch_at, patch_body)),
        ]
        for t in threads:
            t.start()
        # Both requests are being served: their bytes reach the upload files.
        for location in (put_at, patch_at):
            path = upload_file(server, location)
            wait_for(lambda p=path: p.exists() and p.stat().st_size >= 1 << 20, "receiving")

        assert server.proc is not None
        main = server.proc
        signalled_at = datetime.now(UTC)
        os.kill(main.pid, signal.SIGTERM)  # the serving process only, as Kubernetes does
        wait_for(lambda: refused(server.port), "refusing new connections")
        go.set()  # the rest of both bodies, while nothing new gets in
        for t in threads:
            t.join(WAIT * 2)
        assert main.wait(WAIT * 2) == 0
    finally:
        go.set()
        if server.proc is not None and server.proc.poll() is not None:
            server.proc = None
        server.stop()
    log = server.log_path.read_text(errors="replace")

    # The uploads in flight finished: the PUT published its blob, the PATCH was recorded.
    put, patch = answers["PUT"], answers["PATCH"]
    assert isinstance(put, httpx.Response), put
    assert put.status_code == 201, put.text
    assert isinstance(patch, httpx.Response), patch
    assert patch.status_code == 202, patch.text
    assert patch.headers["Range"] == f"0-{len(patch_body.data) - 1}"
    # Nothing was killed, nothing failed.
    assert "Killing worker" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # The background work stopped cleanly: the job was given back (queued again, its
    # attempt not counted), the periodic task's row handed back rather than left leased,
    # and its run, if one was going on, ended through its own cleanup.
    assert db_rows(server, "SELECT state, attempts FROM job") == [("queued", 0)]
    [(next_run,)] = db_rows(
        server, "SELECT next_run_at FROM periodic_task WHERE name = 'test.periodic'"
    )
    assert next_run < stamp(signalled_at + timedelta(seconds=LEASE / 2))
    assert not (periodic / "running").exists()

    # Started again on the same data: the blob is intact, the chunked upload goes on.
    server.start()
    try:
        with server.client() as c:
            r = c.get(f"/v2/{repo}/blobs/{put_body.digest}")
            assert r.status_code == 200
            assert hashlib.sha256(r.content).hexdigest() == put_body.digest.split(":")[1]
            r = c.get(patch_at)
            assert r.status_code == 204
            assert r.headers["Range"] == f"0-{len(patch_body.data) - 1}"
            r = c.put(patch.headers["Location"], params={"digest": patch_body.digest})
            assert r.status_code == 201, r.text
            r = c.get(f"/v2/{repo}/blobs/{patch_body.digest}")
            assert r.status_code == 200
            assert r.content == patch_body.data
    finally:
        server.stop()
