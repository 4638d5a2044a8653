"""Brute-force protection: failed logins counted per account name and per client
address in the database (shared by every process and replica). After `delay_after`
failures each answer is delayed; after `max_failures` within the window the key is
locked for `lock_seconds`. Unknown account names are counted like real ones, so the
answers do not tell whether an account exists."""

from __future__ import annotations

from datetime import timedelta

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.settings import LockoutSettings

GET = sql("SELECT failures, window_start, locked_until FROM login_throttle WHERE key = :key")
UPSERT = sql(
    """INSERT INTO login_throttle (key, failures, window_start, locked_until)
       VALUES (:key, :failures, :window_start, :locked_until)
       ON CONFLICT (key) DO UPDATE SET failures = :failures, window_start = :window_start,
       locked_until = :locked_until"""
)
CLEAR = sql("DELETE FROM login_throttle WHERE key = :key")
PURGE = sql("DELETE FROM login_throttle WHERE window_start < :cutoff")


def keys_for(username: str | None, ip: str | None) -> list[str]:
    keys = []
    if username:
        keys.append("user:" + username.lower()[:250])
    if ip:
        keys.append("ip:" + ip[:60])
    return keys


class LoginThrottle:
    def __init__(self, db: Database, settings: LockoutSettings) -> None:
        self.db = db
        self.settings = settings

    async def state(self, keys: list[str]) -> tuple[bool, int]:
        """(locked, failures so far) over the given keys."""
        now = utcnow()
        window = timedelta(seconds=self.settings.window_seconds)
        locked, failures = False, 0
        async with self.db.read() as session:
            for key in keys:
                row = await session.one(GET, key=key)
                if row is None:
                    continue
                until = as_datetime(row[2])
                if until is not None and until > now:
                    locked = True
                start = as_datetime(row[1])
                if start is not None and now - start < window:
                    failures = max(failures, int(row[0]))
        return locked, failures

    async def failed(self, keys: list[str]) -> bool:
        """Count a failure; True when this failure locked one of the keys."""
        s = self.settings
        now = utcnow()

        async def work(session: DbSession) -> bool:
            newly_locked = False
            for key in keys:
                row = await session.one(GET, key=key)
                failures, start, until = 0, now, None
                if row is not None:
                    start = as_datetime(row[1]) or now
                    until = as_datetime(row[2])
                    failures = int(row[0])
                    if (now - start).total_seconds() >= s.window_seconds:
                        failures, start = 0, now
                failures += 1
                limit = s.max_failures_per_address if key.startswith("ip:") else s.max_failures
                if failures >= limit and (until is None or until <= now):
                    until = now + timedelta(seconds=s.lock_seconds)
                    newly_locked = True
                    failures, start = 0, now
                await session.run(
                    UPSERT, key=key, failures=failures, window_start=start, locked_until=until
                )
            return newly_locked

        return await run_write(self.db, work)

    async def succeeded(self, username: str) -> None:
        async def work(session: DbSession) -> None:
            await session.run(CLEAR, key=keys_for(username, None)[0])

        await run_write(self.db, work)

    async def purge(self) -> None:
        cutoff = utcnow() - timedelta(
            seconds=max(self.settings.window_seconds, self.settings.lock_seconds) * 2
        )

        async def work(session: DbSession) -> None:
            await session.run(PURGE, cutoff=cutoff)

        await run_write(self.db, work)
