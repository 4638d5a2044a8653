"""Brute-force protection: failed logins counted per account name and per client
address in the database (shared by every process and replica). After `delay_after`
failures each answer is delayed; after `max_failures` within the window the key is
locked for `lock_seconds`. Unknown account names are counted like real ones, so the
answers do not tell whether an account exists."""

from __future__ import annotations

from datetime import timedelta

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import Sql, sql
from cargohold.db.values import as_datetime
from cargohold.settings import LockoutSettings

GET = sql("SELECT failures, window_start, locked_until FROM login_throttle WHERE key = :key")
# Counting a failure is read-modify-write: on PostgreSQL the row is created first, then
# locked, so that concurrent failures (an attacker's parallel guesses) are all counted.
# SQLite runs one write transaction at a time.
ENSURE = sql(
    """INSERT INTO login_throttle (key, failures, window_start, locked_until)
       VALUES (:key, 0, :now, NULL) ON CONFLICT (key) DO NOTHING"""
)
GET_FOR_UPDATE = Sql(GET.sqlite, GET.postgres + " FOR UPDATE")
UPDATE = sql(
    """UPDATE login_throttle SET failures = :failures, window_start = :window_start,
       locked_until = :locked_until WHERE key = :key"""
)
CLEAR = sql("DELETE FROM login_throttle WHERE key = :key")
PURGE = sql("DELETE FROM login_throttle WHERE window_start < :cutoff")


def account_key(username: str | None) -> str | None:
    """The key counting failures of one account name. Names that are no account (`$app`,
    `$oauthtoken`: the secret alone says whose token it is) get none: a shared key would
    let anyone lock every token login out, and guessing a 256-bit token is hopeless; the
    address key still counts those failures."""
    if not username or username.startswith("$"):
        return None
    return "user:" + username.lower()[:250]


def keys_for(username: str | None, ip: str | None) -> list[str]:
    keys = []
    account = account_key(username)
    if account:
        keys.append(account)
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

    async def failed(self, keys: list[str]) -> list[str]:
        """Count a failure; the keys this failure locked."""
        s = self.settings
        now = utcnow()

        async def work(session: DbSession) -> list[str]:
            newly_locked = []
            for key in keys:
                await session.run(ENSURE, key=key, now=now)
                row = await session.one(GET_FOR_UPDATE, key=key)
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
                    newly_locked.append(key)
                    failures, start = 0, now
                await session.run(
                    UPDATE, key=key, failures=failures, window_start=start, locked_until=until
                )
            return newly_locked

        return await run_write(self.db, work)

    async def succeeded(self, username: str) -> None:
        """A login with the right secret: forget the account's failures (not the
        address's, or an attacker could reset them with an account of their own)."""
        key = account_key(username)
        if key is None:
            return

        async def work(session: DbSession) -> None:
            await session.run(CLEAR, key=key)

        await run_write(self.db, work)

    async def purge(self) -> None:
        cutoff = utcnow() - timedelta(
            seconds=max(self.settings.window_seconds, self.settings.lock_seconds) * 2
        )

        async def work(session: DbSession) -> None:
            await session.run(PURGE, cutoff=cutoff)

        await run_write(self.db, work)
