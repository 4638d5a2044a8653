"""`cargohold worker` processes competing on one database (PostgreSQL, and SQLite shared
by the processes of one host), with the test-only job kinds (jobs/testing.py), whose
effects are files:

- acceptance 3 of issue 6: a job enqueued once runs to completion once in effect, with
  three workers competing for it and the one running it killed with SIGKILL mid-job;
- a periodic task runs in one process at a time across three;
- SIGTERM lets a short job finish and gives a long one back;
- an unknown --kinds is refused.

Waits poll for outcomes; nothing asserts how long anything took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cargohold.db.migrate import upgrade
from tests.support.postgres import temporary_database
from tests.support.server import REPO_ROOT

LEASE = "2"  # seconds: a killed worker's job is taken over this long after its last renewal


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cargohold.db'}"
        upgrade(url)
        yield url
    else:
        with temporary_database() as url:
            upgrade(url)
            yield url


class Workers:
    """`cargohold worker` processes on one database and data directory."""

    def __init__(self, tmp_path: Path, url: str, **env: str) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
        self.env.update(
            {
                "CARGOHOLD_DATA_DIR": str(tmp_path),
                "CARGOHOLD_DATABASE__URL": url,
                # Replicas share it (each would otherwise generate one at first start).
                "CARGOHOLD_AUTH__SECRET_KEY": "job-workers-test-secret",
                "CARGOHOLD_JOBS__TEST_KINDS": "1",
                "CARGOHOLD_JOBS__LEASE_SECONDS": LEASE,
                "CARGOHOLD_JOBS__POLL_SECONDS": "0.2",
                "CARGOHOLD_JOBS__CONCURRENCY": "2",
            }
        )
        self.env.update(env)
        self.procs: list[subprocess.Popen[bytes]] = []

    def log(self, i: int) -> Path:
        return self.tmp_path / f"worker-{i}.log"

    def start(self, count: int, *args: str) -> None:
        for _ in range(count):
            i = len(self.procs)
            with open(self.log(i), "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "cargohold", "worker", *args],
                        cwd=REPO_ROOT,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 60
        for i, proc in enumerate(self.procs):
            while b"background work" not in self.log(i).read_bytes():
                assert proc.poll() is None, self.log(i).read_text()
                assert time.monotonic() < deadline, self.log(i).read_text()
                time.sleep(0.05)

    def by_pid(self, pid: int) -> subprocess.Popen[bytes]:
        [proc] = [p for p in self.procs if p.pid == pid]
        return proc

    def stop(self) -> dict[int, int | None]:
        """SIGTERM to every live worker; their exit codes by pid."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for proc in self.procs:
            try:
                codes[proc.pid] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[proc.pid] = None
        return codes

    def logs(self) -> str:
        return "\n".join(self.log(i).read_text() for i in range(len(self.procs)))


def _query(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    """Statements with ? parameters, on either database, in a connection of their own."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            with conn:
                return conn.execute(statement, params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url) as pg:
        cursor = pg.execute(statement.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def _enqueue(url: str, payload: str) -> int:
    [(job_id,)] = _query(
        url,
        "INSERT INTO job (kind, payload, state, run_at, attempts, max_attempts, created_at) "
        "VALUES ('test.sleep_and_record', ?, 'queued', ?, 0, 5, ?) RETURNING id",
        payload,
        *([_now(url)] * 2),
    )
    return int(str(job_id))


def _now(url: str) -> object:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") if url.startswith("sqlite") else now


def _wait(what: str, check: object, workers: Workers, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen:\n{workers.logs()}"
        time.sleep(0.05)


def _files(folder: Path, prefix: str) -> list[list[str]]:
    """Files named prefix-a-b-c, as [a, b, c]."""
    return sorted(p.name.split("-")[1:] for p in folder.glob(f"{prefix}-*"))


def test_a_job_runs_once_in_effect_with_its_worker_killed_mid_job(
    tmp_path: Path, database_url: str
) -> None:
    out = tmp_path / "effects"
    out.mkdir()
    workers = Workers(tmp_path, database_url)
    workers.start(3, "--kinds", "test.sleep_and_record")
    killed: int | None = None
    try:
        # The first attempt of the long job hangs until its worker is killed; a second
        # attempt takes 0.2 s. Short jobs keep the three workers competing meanwhile.
        long_job = _enqueue(
            database_url, f'{{"dir": "{out}", "first_seconds": 3600, "seconds": 0.2}}'
        )
        short = [_enqueue(database_url, f'{{"dir": "{out}", "seconds": 0.3}}') for _ in range(24)]

        def holder() -> list[list[str]]:
            return [f for f in _files(out, "ran") if f[0] == str(long_job)]

        _wait("the long job's first attempt", holder, workers)
        [[_, attempt, pid]] = holder()
        assert attempt == "1"
        killed = int(pid)
        workers.by_pid(killed).send_signal(signal.SIGKILL)

        jobs = [long_job, *short]

        def all_done() -> bool:
            rows = _query(database_url, "SELECT state FROM job")
            return len(rows) == len(jobs) and all(r[0] == "done" for r in rows)

        _wait("every job done", all_done, workers)
    finally:
        codes = workers.stop()
    assert workers.by_pid(killed).returncode == -signal.SIGKILL
    assert all(code == 0 for pid, code in codes.items() if pid != killed), workers.logs()

    # The long job: run twice (killed, then by another worker), its effect made once.
    runs = [f for f in _files(out, "ran") if f[0] == str(long_job)]
    assert [(a, int(p) == killed) for _, a, p in runs] == [("1", True), ("2", False)]
    dones = [f for f in _files(out, "done") if f[0] == str(long_job)]
    assert len(dones) == 1 and dones[0][1] == "2" and int(dones[0][2]) != killed
    [(state, attempts, owner)] = _query(
        database_url, "SELECT state, attempts, lease_owner FROM job WHERE id = ?", long_job
    )
    assert (state, attempts) == ("done", 2)
    assert f":{killed}:" not in str(owner)

    # Every job's effect exists once; a job ran more than once only if the killed
    # worker ran it first.
    assert sorted(int(f[0]) for f in _files(out, "effect")) == sorted(jobs)
    for job in short:
        by = [int(p) for j, _, p in _files(out, "ran") if j == str(job)]
        assert len([p for p in by if p != killed]) == 1, (job, by)
    finishers = {int(p) for j, _, p in _files(out, "done") if int(j) in short}
    assert len(finishers) >= 2  # the workers competed for the jobs


def test_a_periodic_task_runs_in_one_process_at_a_time(tmp_path: Path, database_url: str) -> None:
    """test.periodic is due every 0.1 s and runs 0.2 s: three processes each running it
    on their own would overlap at once."""
    workers = Workers(tmp_path, database_url, CARGOHOLD_JOBS__POLL_SECONDS="0.05")
    workers.start(3, "--kinds", "test.periodic")
    folder = tmp_path / "test-periodic"
    try:
        _wait("12 runs", lambda: len(_files(folder, "fired")) >= 12, workers)
    finally:
        codes = workers.stop()
    assert all(code == 0 for code in codes.values()), workers.logs()
    assert _files(folder, "overlap") == []
    assert not (folder / "running").exists()  # the run cut short by SIGTERM cleaned up
    [(owner,)] = _query(
        database_url, "SELECT last_owner FROM periodic_task WHERE name = 'test.periodic'"
    )
    assert int(str(owner).split(":")[1]) in {p.pid for p in workers.procs}


def test_sigterm_lets_a_short_job_finish_and_gives_the_long_one_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cargohold.db'}"
    upgrade(url)
    out = tmp_path / "effects"
    out.mkdir()
    workers = Workers(tmp_path, url, CARGOHOLD_JOBS__STOP_SECONDS="5")
    workers.start(1, "--kinds", "test.sleep_and_record")
    try:
        short = _enqueue(url, f'{{"dir": "{out}", "seconds": 0.5}}')
        long_job = _enqueue(url, f'{{"dir": "{out}", "seconds": 3600}}')
        _wait("both jobs running", lambda: len(_files(out, "ran")) == 2, workers)
    finally:
        codes = workers.stop()
    assert list(codes.values()) == [0], workers.logs()
    assert _query(url, "SELECT state FROM job WHERE id = ?", short) == [("done",)]
    assert _query(url, "SELECT state, attempts, lease_owner FROM job WHERE id = ?", long_job) == [
        ("queued", 0, None)
    ]


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["CARGOHOLD_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cargohold", "worker", "--kinds", "gc,no-such-thing"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no-such-thing" in result.stderr and "expire-tags" in result.stderr
