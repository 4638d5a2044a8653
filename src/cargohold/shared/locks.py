"""A lock across processes and replicas in Redis.

`SET <prefix>lock:<key> <token> NX PX <lease>` takes it; the holder renews it every third
of the lease (PEXPIRE, only while the value is still its token) and releases it with a
compare-and-delete script, so a holder never removes a lock that expired and was taken
by another. A holder that dies leaves a lock that expires after the lease. Waiters poll
with back-off (10 ms up to 250 ms).

`RedisLocks.exclusive(key)` has the signature of `StorageDriver.exclusive` and stands in
for it around writes to an upload in progress (`redis.upload_locks`): one round trip to
take and one to release instead of the S3 driver's conditional PUTs. When Redis is not
usable it falls back to the storage driver's own lock (an flock, or the S3 lease); the
database's conditional `grow_upload` stays the last guard against two appends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from cargohold.shared.client import REDIS_ERRORS
from cargohold.shared.state import RedisState

log = logging.getLogger(__name__)

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLock:
    """One holder of one lock: `async with RedisLock(client, name, 30.0): ...`."""

    def __init__(self, client: aioredis.Redis, name: str, lease_seconds: float) -> None:
        self.client = client
        self.name = name
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.token = uuid.uuid4().hex
        self.lost = False  # the lease expired or was taken while held (logged)
        self._renewer: asyncio.Task[None] | None = None
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    async def acquire(self) -> None:
        delay = 0.01
        try:
            while not await self.client.set(self.name, self.token, nx=True, px=self.lease_ms):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
        except BaseException:
            # Cancelled or failed after a SET that Redis may have carried out: remove the
            # lock if it is ours, or it would stay taken for a whole lease.
            _background(self._release_quietly())
            raise
        self._renewer = asyncio.ensure_future(self._renewing())

    async def _release_quietly(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._release(keys=[self.name], args=[self.token])

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                renewed = await self._renew(keys=[self.name], args=[self.token, self.lease_ms])
            except REDIS_ERRORS as exc:
                log.warning("could not renew the lock %s: %s", self.name, exc)
                continue
            if not renewed:
                self.lost = True
                log.error("the lock %s expired or was taken over while held", self.name)
                return

    async def release(self) -> None:
        if self._renewer is not None:
            renewer, self._renewer = self._renewer, None
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        try:
            await self._release(keys=[self.name], args=[self.token])
        except REDIS_ERRORS as exc:  # it expires after the lease
            log.warning("could not release the lock %s: %s", self.name, exc)

    async def __aenter__(self) -> RedisLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


Exclusive = Callable[[str], AbstractAsyncContextManager[None]]

_tasks: set[asyncio.Task[None]] = set()  # fire-and-forget clean-ups, referenced until done


def _background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class RedisLocks:
    def __init__(
        self, state: RedisState, lease_seconds: float, fallback: Exclusive | None = None
    ) -> None:
        self.state = state
        self.lease_seconds = lease_seconds
        self.fallback = fallback

    def lock(self, key: str) -> RedisLock:
        return RedisLock(self.state.client, self.state.key("lock", key), self.lease_seconds)

    @asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        """Hold `key` against every process using this Redis; the fallback's lock while
        Redis is not usable (see the module docstring)."""
        lock: RedisLock | None = None
        if self.state.usable or self.fallback is None:
            lock = self.lock(key)
            try:
                await lock.acquire()
            except REDIS_ERRORS as exc:
                if self.fallback is None:
                    raise
                log.warning("Redis lock %s failed (%s): the storage driver's lock", key, exc)
                lock = None
        if lock is None:
            assert self.fallback is not None
            async with self.fallback(key):
                yield
            return
        try:
            yield
        finally:
            await lock.release()
