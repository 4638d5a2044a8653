"""Periodic chores each process does for itself, on its own clock (the audit queue's
flush, SQLite checkpoints). Work done once per deployment is in jobs/periodic.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


class Scheduler:
    def __init__(self, tasks: list[Periodic]) -> None:
        self.tasks = tasks
        self._running: list[asyncio.Task[None]] = []

    async def _loop(self, task: Periodic) -> None:
        while True:
            await asyncio.sleep(task.interval)
            try:
                await task.run()
            except Exception:
                log.exception(
                    "periodic task %s failed; it runs again in %ss", task.name, task.interval
                )

    def start(self) -> None:
        self._running = [asyncio.create_task(self._loop(t), name=t.name) for t in self.tasks]

    async def stop(self) -> None:
        for t in self._running:
            t.cancel()
        for t in self._running:
            with suppress(asyncio.CancelledError):
                await t
        self._running = []
