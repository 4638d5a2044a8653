"""Cache invalidation across replicas through Redis.

Without Redis, a change bumps a generation counter that the worker processes of one host
share through a memory-mapped file (`services.cache.SharedFileGeneration`), and other
hosts learn of it only when their entries expire. With Redis, `RedisGeneration` wraps
that counter: a bump still bumps the file (the host's other processes see it at once),
then announces itself on a Redis channel with one atomic script (INCR of the channel's
counter, PUBLISH of "<host> <counter>"). Each process subscribes once (`RedisState`'s
listener task) and, for every announcement from another host, adds one to its own epoch
of that generation. `current()` is the file's value plus the epoch: two attribute reads
and no round trip, on a path that runs ~10k times a second per worker.

Staleness is bounded by the pub/sub delivery delay (well under a millisecond on a LAN;
a change is announced after its transaction committed, so a reader that sees the new
epoch reads the new rows, and an answer read before it is not cached after it, as on one
host). When the subscription is not live (before the first connection, after a lost one,
or when the heartbeat, a PING after `timeout_seconds` of silence, goes unanswered),
nothing can be heard from other hosts: `current()` then changes every
`redis.degraded_cache_seconds` (or on every call, with 0), so nothing cached is reused
for longer than that. Coming back, every epoch moves on once more (whatever was missed
is forgotten), and the announcements this process could not send are sent."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from pathlib import Path

from redis.asyncio.client import PubSub

from cargohold.services.cache import Generation
from cargohold.settings import RedisSettings
from cargohold.shared.client import REDIS_ERRORS, connect

log = logging.getLogger(__name__)

MASK = (1 << 64) - 1

# Atomic, so announcements reach every subscriber in the order of their counter values.
ANNOUNCE = """
local value = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. value)
return value
"""


def host_id(run_dir: Path) -> str:
    """An id shared by the processes that share `run_dir` (and so the mmap counters):
    they skip each other's announcements, which the file already carried."""
    path = run_dir / "host-id"
    with contextlib.suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = run_dir / f"host-id.{os.getpid()}.{uuid.uuid4().hex}"
    fresh.write_text(uuid.uuid4().hex)
    try:
        os.link(fresh, path)  # atomic: the first process to get here decides
    except FileExistsError:
        pass
    finally:
        fresh.unlink()
    return path.read_text().strip()


class RedisGeneration:
    """A Generation whose bumps reach every replica (see the module docstring)."""

    def __init__(self, state: RedisState, name: str, inner: Generation) -> None:
        self.state = state
        self.name = name
        self.inner = inner
        self.epoch = 0  # announcements from other hosts, and reconnections

    def current(self) -> int:
        state = self.state
        if state.live:
            return (self.inner.current() + self.epoch) & MASK
        return (self.inner.current() + state.degraded_value()) & MASK

    def bump(self) -> None:
        self.inner.bump()
        self.state.announce(self.name)


class RedisState:
    """One per process: the Redis client, the invalidation listener, and whether Redis
    is usable right now (`live`), which the throttle and the locks also go by."""

    def __init__(self, settings: RedisSettings, run_dir: Path) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client = connect(settings)
        self.host = host_id(run_dir)
        self.live = False  # subscribed and hearing Redis
        self.generations: dict[str, RedisGeneration] = {}
        self._announce = self.client.register_script(ANNOUNCE)
        self._last: dict[str, int] = {}  # the last counter value heard, per generation
        self._queued: set[str] = set()  # announcements scheduled and not yet sent
        self._owed: set[str] = set()  # announcements that failed: sent when Redis is back
        self._sending: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._degraded_base = int.from_bytes(os.urandom(8), "little")
        self._ticks = itertools.count()
        self._down_since: float | None = None  # for the log: one warning per outage
        self.reconnections = 0

    # -- names ---------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def channel(self, name: str) -> str:
        return self.key("invalidate", name)

    # -- generations ---------------------------------------------------------------------

    def generation(self, name: str, inner: Generation) -> RedisGeneration:
        generation = RedisGeneration(self, name, inner)
        self.generations[name] = generation
        return generation

    def degraded_value(self) -> int:
        seconds = self.settings.degraded_cache_seconds
        if seconds <= 0:
            return self._degraded_base + next(self._ticks)
        return self._degraded_base + int(time.monotonic() / seconds)

    @property
    def usable(self) -> bool:
        """Worth a round trip: subscribed, or never started (a CLI command)."""
        return self.live or self._listener is None

    # -- announcing ----------------------------------------------------------------------

    def announce(self, name: str) -> None:
        """Tell the other replicas, after the change committed (the caller's bump)."""
        if name in self._queued:
            return  # a send not yet started will carry this change too
        if not self.usable:
            self._owed.add(name)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._owed.add(name)  # sent by close(), or when the listener connects
            return
        self._queued.add(name)
        task = loop.create_task(self._send(name))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, name: str) -> None:
        self._queued.discard(name)  # from here on a new change needs a new announcement
        try:
            await self._announce(
                keys=[self.key("generation", name)], args=[self.channel(name), self.host]
            )
        except REDIS_ERRORS as exc:
            self._owed.add(name)
            log.warning(
                "could not announce a %s invalidation to the other replicas (%s); "
                "sent when Redis answers again",
                name,
                exc,
            )

    def _send_owed(self) -> None:
        owed, self._owed = self._owed, set()
        for name in owed:
            self.announce(name)

    # -- listening -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener (in a running event loop; once per process)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="redis-invalidations"
            )

    async def _listen(self) -> None:
        channels = {self.channel(name): name for name in self.generations}
        subscriber = connect(self.settings, retries=0)  # a reconnection must not be silent
        delay = 0.05
        try:
            while True:
                pubsub = subscriber.pubsub()
                try:
                    await self._subscribe(pubsub, channels)
                    self._connected()
                    delay = 0.05
                    await self._hear(pubsub, channels)
                except REDIS_ERRORS as exc:
                    self._lost(exc)
                finally:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            await subscriber.aclose()

    async def _subscribe(self, pubsub: PubSub, channels: dict[str, str]) -> None:
        await pubsub.subscribe(*channels)
        confirmed = 0
        while confirmed < len(channels):
            message = await pubsub.get_message(timeout=self.settings.timeout_seconds)
            if message is None:
                raise TimeoutError("Redis did not confirm the subscription")
            if message["type"] == "subscribe":
                confirmed += 1
            elif message["type"] == "message":
                self._heard(message, channels)

    async def _hear(self, pubsub: PubSub, channels: dict[str, str]) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self.settings.timeout_seconds)
            if message is None:
                if pinged:
                    raise TimeoutError("Redis did not answer the heartbeat")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] == "message":
                self._heard(message, channels)

    def _heard(self, message: dict[str, object], channels: dict[str, str]) -> None:
        channel = message["channel"]
        name = channels.get(channel.decode() if isinstance(channel, bytes) else str(channel))
        generation = self.generations.get(name or "")
        if generation is None:
            return
        data = message["data"]
        text = data.decode() if isinstance(data, bytes) else str(data)
        host, _, counter = text.partition(" ")
        try:
            value = int(counter)
        except ValueError:
            value = -1
        last = self._last.get(generation.name)
        self._last[generation.name] = value
        # One subscription hears every announcement in counter order: a jump means some
        # were lost (or Redis lost its counter), so forget as if another host spoke.
        missed = last is not None and value != last + 1
        if host != self.host or missed:
            generation.epoch += 1

    def _connected(self) -> None:
        for generation in self.generations.values():
            generation.epoch += 1  # whatever was announced meanwhile went unheard
        self._last.clear()
        self.live = True
        if self._down_since is not None:
            self.reconnections += 1
            log.warning(
                "Redis answers again after %.1f s: caches are invalidated across replicas",
                time.monotonic() - self._down_since,
            )
        self._down_since = None
        self._send_owed()

    def _lost(self, exc: BaseException) -> None:
        self.live = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "Redis is unreachable (%s): cached tags, permissions and credentials are "
                "reused for %g s at most, login failures are counted in the database, "
                "upload locks are the storage driver's, until it answers again",
                exc or type(exc).__name__,
                self.settings.degraded_cache_seconds,
            )

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self.live = False
        if self._owed:  # a command (no listener) or an outage: one last try
            for name in list(self._owed):
                await self._send(name)
        if self._sending:
            await asyncio.wait(list(self._sending), timeout=self.settings.timeout_seconds * 2)
        await self.client.aclose()
