"""Failed-login counting in Redis: the same rules and interface as `auth.throttle`'s
database LoginThrottle, with counters every replica shares at the cost of one round trip.

Per throttle key, `<prefix>throttle:<key>:failures` counts failures (INCR; it expires
`window_seconds` after the first one, the database's fixed window) and
`<prefix>throttle:<key>:locked` exists while the key is locked (`lock_seconds`). Counting
and locking run as one script, so parallel guesses on several replicas are all counted
and lock once. While Redis is not usable the database throttle answers instead (its
counts start from zero, and are not carried over when Redis is back)."""

from __future__ import annotations

import logging
import time

from cargohold.auth.throttle import LoginThrottle, account_key
from cargohold.db.session import Database
from cargohold.settings import LockoutSettings
from cargohold.shared.client import REDIS_ERRORS
from cargohold.shared.state import RedisState

log = logging.getLogger(__name__)

# KEYS: failures, locked. ARGV: window, limit, lock seconds. 1 if this failure locked.
FAILED = """
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if failures >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

WARN_EVERY = 60.0  # seconds between two warnings that Redis could not count


class RedisLoginThrottle(LoginThrottle):
    """The database throttle (the base class) is the fallback."""

    def __init__(self, db: Database, settings: LockoutSettings, redis: RedisState) -> None:
        super().__init__(db, settings)
        self.redis = redis
        self._failed = redis.client.register_script(FAILED)
        self._warned = 0.0

    def _keys(self, key: str) -> tuple[str, str]:
        base = self.redis.key("throttle", key)
        return f"{base}:failures", f"{base}:locked"

    def _unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("login throttle: Redis failed (%s); counting in the database", exc)

    async def state(self, keys: list[str]) -> tuple[bool, int]:
        """(locked, failures so far) over the given keys."""
        if not keys:
            return False, 0
        if self.redis.usable:
            try:
                async with self.redis.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        failures, locked = self._keys(key)
                        pipe.get(failures)
                        pipe.exists(locked)
                    answers = await pipe.execute()
            except REDIS_ERRORS as exc:
                self._unavailable(exc)
            else:
                counts = [int(a) for a in answers[0::2] if a is not None]
                return any(answers[1::2]), max(counts, default=0)
        return await super().state(keys)

    async def failed(self, keys: list[str]) -> list[str]:
        """Count a failure; the keys this failure locked."""
        if self.redis.usable:
            s = self.settings
            newly_locked = []
            try:
                for key in keys:
                    limit = s.max_failures_per_address if key.startswith("ip:") else s.max_failures
                    locked = await self._failed(
                        keys=list(self._keys(key)), args=[s.window_seconds, limit, s.lock_seconds]
                    )
                    if locked == 1:
                        newly_locked.append(key)
            except REDIS_ERRORS as exc:
                self._unavailable(exc)
            else:
                return newly_locked
        return await super().failed(keys)

    async def succeeded(self, username: str) -> None:
        """The right secret: forget the account's failures (not the address's)."""
        key = account_key(username)
        if key is None:
            return
        if self.redis.usable:
            try:
                await self.redis.client.delete(self._keys(key)[0])
            except REDIS_ERRORS as exc:
                self._unavailable(exc)
        await super().succeeded(username)  # counts kept there during an outage

    async def purge(self) -> None:
        # Redis keys expire by themselves; the database keeps what outages counted.
        await super().purge()
