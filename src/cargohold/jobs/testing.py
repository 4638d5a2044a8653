"""Job kinds and a periodic task for the test suite only, registered when the setting
jobs.test_kinds is true (CARGOHOLD_JOBS__TEST_KINDS=1); never in production.

Their effects are files, so tests can watch them from outside the worker processes:

- `test.sleep_and_record` {dir, seconds, first_seconds?}: creates `ran-<job>-<attempt>-<pid>`,
  sleeps (`first_seconds` on the first attempt if given, else `seconds`), then creates its
  effect `effect-<job>` with O_EXCL: idempotent, as every handler must be (a second run
  finds the effect there and adds nothing), then `done-<job>-<attempt>-<pid>`.
- `test.fail` {}: fails every attempt.
- `test.periodic` (every 0.1 s): under <data_dir>/test-periodic, creates `running` with
  O_EXCL for its 0.2 s run (an `overlap-...` file if it exists: two runs at once), and
  `fired-<ns>-<pid>` per run."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from cargohold.jobs.periodic import PeriodicTask
from cargohold.jobs.worker import Handler, JobContext

PERIODIC_INTERVAL = 0.1
PERIODIC_RUN = 0.2


def _create(path: Path) -> bool:
    """Create `path` exclusively; False when it exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


async def sleep_and_record(payload: dict[str, Any], context: JobContext) -> None:
    out = Path(payload["dir"])
    pid = os.getpid()
    _create(out / f"ran-{context.id}-{context.attempt}-{pid}")
    seconds = float(payload.get("seconds", 0))
    if context.attempt == 1 and "first_seconds" in payload:
        seconds = float(payload["first_seconds"])
    await asyncio.sleep(seconds)
    _create(out / f"effect-{context.id}")
    _create(out / f"done-{context.id}-{context.attempt}-{pid}")


async def fail(payload: dict[str, Any], context: JobContext) -> None:
    raise RuntimeError(f"test failure on attempt {context.attempt}")


def handlers() -> dict[str, Handler]:
    return {"test.sleep_and_record": sleep_and_record, "test.fail": fail}


def periodic_tasks(data_dir: str) -> list[PeriodicTask]:
    out = Path(data_dir) / "test-periodic"

    async def run() -> None:
        out.mkdir(parents=True, exist_ok=True)
        marker = out / "running"
        mine = _create(marker)
        if not mine:
            _create(out / f"overlap-{time.time_ns()}-{os.getpid()}")
        _create(out / f"fired-{time.time_ns()}-{os.getpid()}")
        try:
            await asyncio.sleep(PERIODIC_RUN)
        finally:
            if mine:
                marker.unlink()

    return [PeriodicTask("test.periodic", PERIODIC_INTERVAL, run)]
