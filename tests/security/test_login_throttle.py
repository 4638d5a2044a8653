"""Brute-force protection below HTTP: LoginThrottle's keys and counting against a real
database (SQLite and PostgreSQL), and the Authenticator's answers for existing and
missing accounts. Every HTTP test client is 127.0.0.1, so what depends on the client
address (per-address locks that spare other addresses) is tested here."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cargohold.auth import credentials, passwords
from cargohold.auth.credentials import AuthenticationFailed, Authenticator, Context
from cargohold.auth.identity import DatabaseProvider
from cargohold.auth.principal import Method
from cargohold.auth.throttle import LoginThrottle, account_key, keys_for
from cargohold.db.base import utcnow
from cargohold.db.migrate import upgrade
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.services.audit import AuditLog, Origin
from cargohold.services.cache import LocalGeneration
from cargohold.services.users import UserService
from cargohold.settings import LockoutSettings
from tests.support.postgres import temporary_database

ROW = sql("SELECT failures, locked_until FROM login_throttle WHERE key = :key")
EXPIRE = sql(
    "UPDATE login_throttle SET window_start = :past, locked_until = :past WHERE key = :key"
)
AUDIT = sql("SELECT kind, details FROM audit_log ORDER BY id")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'throttle.db'}"
        upgrade(url)
        yield url
    else:
        with temporary_database() as url:
            upgrade(url)
            yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def throttle(db: Database, **settings: Any) -> LoginThrottle:
    values: dict[str, Any] = {
        "max_failures": 3,
        "max_failures_per_address": 5,
        "window_seconds": 600,
        "lock_seconds": 600,
    }
    values.update(settings)
    return LoginThrottle(db, LockoutSettings(**values))


async def row(db: Database, key: str) -> tuple[Any, ...] | None:
    async with db.read() as session:
        return await session.one(ROW, key=key)


async def expire(db: Database, key: str) -> None:
    """Move a key's window and lock into the past, as time passing would."""

    async def work(session: DbSession) -> None:
        await session.run(EXPIRE, key=key, past=utcnow() - timedelta(days=1))

    await run_write(db, work)


def test_keys() -> None:
    assert keys_for("Alice", "10.0.0.1") == ["user:alice", "ip:10.0.0.1"]
    assert keys_for("team+deploy", None) == ["user:team+deploy"]  # robots are accounts
    # `$app` and `$oauthtoken` are no accounts: a shared key would let anyone lock every
    # token login; their failures count for the address only.
    assert keys_for("$app", "10.0.0.1") == ["ip:10.0.0.1"]
    assert keys_for("$oauthtoken", None) == []
    assert account_key("") is None
    assert keys_for("x" * 1000, "f" * 100) == ["user:" + "x" * 250, "ip:" + "f" * 60]


async def test_an_address_is_locked_and_other_addresses_are_not(db: Database) -> None:
    t = throttle(db)
    for i in range(4):  # password spraying: one guess per account, all from one address
        assert await t.failed(keys_for(f"victim{i}", "10.0.0.1")) == []
    assert await t.failed(keys_for("victim4", "10.0.0.1")) == ["ip:10.0.0.1"]
    assert (await t.state(keys_for("newcomer", "10.0.0.1")))[0]  # everyone from there
    assert not (await t.state(keys_for("newcomer", "10.0.0.2")))[0]
    assert await t.state(keys_for("victim0", "10.0.0.2")) == (False, 1)
    assert await t.state(keys_for(None, "2001:db8::1")) == (False, 0)


async def test_an_account_is_locked_from_every_address(db: Database) -> None:
    t = throttle(db)
    assert await t.failed(keys_for("alice", "10.0.1.1")) == []
    assert await t.failed(keys_for("alice", "10.0.1.2")) == []
    assert await t.failed(keys_for("alice", "10.0.1.3")) == ["user:alice"]
    assert (await t.state(keys_for("alice", "10.0.1.99")))[0]
    assert (await t.state(keys_for("ALICE", None)))[0]  # names are counted case-blind
    for address in ("10.0.1.1", "10.0.1.2", "10.0.1.3"):
        assert await t.state(keys_for("bob", address)) == (False, 1)


async def test_success_forgets_the_account_not_the_address(db: Database) -> None:
    t = throttle(db)
    await t.failed(keys_for("carol", "10.0.2.1"))
    await t.failed(keys_for("carol", "10.0.2.1"))
    await t.succeeded("carol")
    assert await row(db, "user:carol") is None
    assert await t.state(keys_for(None, "10.0.2.1")) == (False, 2)
    await t.succeeded("$app")  # no account key: nothing to forget, no error


async def test_window_and_lock_expire(db: Database) -> None:
    t = throttle(db)
    for _ in range(3):
        await t.failed(keys_for("dave", None))
    assert (await t.state(keys_for("dave", None)))[0]
    await expire(db, "user:dave")
    assert await t.state(keys_for("dave", None)) == (False, 0)
    assert await t.failed(keys_for("dave", None)) == []  # a new window: counting restarts
    found = await row(db, "user:dave")
    assert found is not None and int(found[0]) == 1


async def test_concurrent_failures_are_all_counted(db: Database) -> None:
    """Parallel guesses: a lost update would let an attacker past max_failures (on
    PostgreSQL, two transactions reading the same count)."""
    t = throttle(db, max_failures=1000, max_failures_per_address=1000)
    await asyncio.gather(*(t.failed(keys_for("eve", "10.0.3.1")) for _ in range(20)))
    for key in ("user:eve", "ip:10.0.3.1"):
        found = await row(db, key)
        assert found is not None and int(found[0]) == 20, (key, found)
    t = throttle(db, max_failures=5)
    locked = await asyncio.gather(*(t.failed(keys_for("mallory", None)) for _ in range(12)))
    assert sum(1 for keys in locked if keys) == 1  # locked once, by the fifth failure


# -- the Authenticator: existing and missing accounts alike --------------------------------


class CountingHasher:
    """Wraps the argon2 hasher and counts verifications (the expensive step)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.verified = 0

    def verify(self, stored: str, password: str) -> bool:
        self.verified += 1
        result: bool = self.inner.verify(stored, password)
        return result

    def hash(self, password: str) -> str:
        result: str = self.inner.hash(password)
        return result


@pytest.fixture
def instrumented(monkeypatch: pytest.MonkeyPatch) -> tuple[CountingHasher, list[float]]:
    hasher = CountingHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", hasher)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    fake = types.SimpleNamespace(
        sleep=sleep,
        shield=asyncio.shield,
        get_running_loop=asyncio.get_running_loop,
        Future=asyncio.Future,
    )
    monkeypatch.setattr(credentials, "asyncio", fake)
    return hasher, sleeps


async def _authenticator(db: Database, **lockout: Any) -> tuple[Authenticator, AuditLog]:
    audit = AuditLog(db)
    t = throttle(db, **lockout)
    auth = Authenticator(
        db,
        DatabaseProvider(db),
        t,
        audit,
        LocalGeneration(),
        cache_seconds=60.0,
        delay_after=t.settings.delay_after,
        delay_seconds=t.settings.delay_seconds,
    )
    users = UserService(db, audit)
    await users.create("existing", "the-right-password")
    await users.create("disabled", "the-right-password")

    async def disable(session: DbSession) -> None:
        await session.run(
            sql("UPDATE user_account SET enabled = :no WHERE username = 'disabled'"), no=False
        )

    await run_write(db, disable)
    return auth, audit


async def _attempt(auth: Authenticator, name: str, secret: str, ip: str) -> str:
    try:
        await auth.basic(name, secret, Context(Origin(ip, "test")))
    except AuthenticationFailed as exc:
        return str(exc)
    return "accepted"


async def test_existing_and_missing_accounts_take_the_same_path(
    db: Database, instrumented: tuple[CountingHasher, list[float]]
) -> None:
    hasher, sleeps = instrumented
    auth, audit = await _authenticator(db, delay_after=1, delay_seconds=0.25)
    traces = {}
    for i, name in enumerate(("existing", "nobody-here", "disabled")):
        trace = []
        for _ in range(5):  # 3 failures lock the account; 2 more attempts while locked
            before_hash, before_sleep = hasher.verified, len(sleeps)
            answer = await _attempt(auth, name, "a-wrong-password", f"10.1.0.{i}")
            trace.append((answer, hasher.verified - before_hash, sleeps[before_sleep:]))
        traces[name] = trace
    expected = [
        ("invalid username or password", 1, []),  # argon2 runs, whoever the name is
        ("invalid username or password", 1, [0.25]),  # past delay_after: slowed down
        ("invalid username or password", 1, [0.25]),  # this one locks
        ("invalid username or password", 0, [0.25]),  # locked: refused, still slowed
        ("invalid username or password", 0, [0.25]),
    ]
    assert traces == {name: expected for name in traces}
    await audit.flush()
    async with db.read() as session:
        rows = [(kind, json_of(details)) for kind, details in await session.all(AUDIT)]
    for name in traces:
        mine = [(k, d) for k, d in rows if d.get("username") == name]
        assert [k for k, _ in mine] == ["login_failure"] * 3 + ["account_locked"] + [
            "login_failure"
        ] * 2
        assert [d.get("locked") for k, d in mine if k == "login_failure"] == [
            False,
            False,
            False,
            True,
            True,
        ]
        assert mine[3][1]["keys"] == [f"user:{name}"]
    for name in traces:
        found = await row(db, f"user:{name}")
        assert found is not None and found[1] is not None  # locked, existing or not
    # The right password is refused during the lock too, without an argon2 check.
    before = hasher.verified
    assert await _attempt(auth, "existing", "the-right-password", "10.1.0.9") != "accepted"
    assert hasher.verified == before


async def test_a_lock_refuses_a_password_verified_a_moment_ago(
    db: Database, instrumented: tuple[CountingHasher, list[float]]
) -> None:
    """Verified credentials are cached; a lock empties that cache, so the right password
    is refused from the cache too. After the lock the right password works again."""
    hasher, _ = instrumented
    auth, _ = await _authenticator(db)
    principal = await auth.basic("existing", "the-right-password", Context(Origin("10.2.0.1")))
    assert principal.method is Method.PASSWORD
    before = hasher.verified
    assert await _attempt(auth, "existing", "the-right-password", "10.2.0.1") == "accepted"
    assert hasher.verified == before  # served from the cache
    for _ in range(3):
        assert await _attempt(auth, "existing", "wrong-password", "10.2.0.2") != "accepted"
    assert await _attempt(auth, "existing", "the-right-password", "10.2.0.1") != "accepted"
    await expire(db, "user:existing")
    assert await _attempt(auth, "existing", "the-right-password", "10.2.0.1") == "accepted"


def json_of(details: Any) -> dict[str, Any]:
    value = json.loads(details) if isinstance(details, str) else details
    assert isinstance(value, dict)
    return value
