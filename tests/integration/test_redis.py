"""Redis (`redis.url`): cache invalidation across replicas, login throttle counters shared
by every replica, locks across processes, and what happens when Redis goes away.

The replicas are `cargohold serve` processes with DIFFERENT data directories (so they share
no memory-mapped generation counter) on one PostgreSQL database, one storage root and the
Redis that the machine runs at 127.0.0.1:6379 (each module its own key prefix, removed
afterwards). Their caches keep entries for an hour: an answer that changes on another
replica within the polling deadline was invalidated, not expired."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from cargohold.auth.throttle import LoginThrottle, keys_for
from cargohold.db.migrate import upgrade
from cargohold.db.session import Database
from cargohold.services.cache import LocalGeneration, MetadataCache
from cargohold.services.records import ManifestRecord
from cargohold.settings import LockoutSettings, RedisSettings, load_settings
from cargohold.shared.locks import RedisLock, RedisLocks
from cargohold.shared.state import RedisState
from cargohold.shared.throttle import RedisLoginThrottle
from tests.api_v1.access_helpers import (
    admin_api,
    grant,
    new_org,
    new_repo,
    pull_status,
    try_push,
    v2,
)
from tests.api_v1.identity_helpers import sign_in, v2_status
from tests.support.identity import app_token, create_user
from tests.support.oci import OCI_MANIFEST, make_image, push_blob, push_image, unique_repo
from tests.support.postgres import temporary_database
from tests.support.server import REPO_ROOT, RegistryProcess, free_port

REDIS_URL = os.environ.get("CARGOHOLD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SOON = 10.0  # seconds an invalidation may take to arrive: far below the caches' hour
WAIT = 60.0  # seconds for slower conditions (Redis noticed gone, back)


def wait_for(condition: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {seconds:g} s")
        time.sleep(0.05)


async def eventually(condition: Callable[[], Any], what: str, seconds: float = SOON) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {seconds:g} s")
        await asyncio.sleep(0.01)


def unique_prefix() -> str:
    return f"cargohold-test:{uuid.uuid4().hex[:12]}:"


def drop_keys(url: str, prefix: str) -> None:
    with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url) as r:
        for key in list(r.scan_iter(match=prefix + "*", count=1000)):
            r.delete(key)


def subscribed(url: str, prefix: str) -> int:
    """How many processes listen for invalidations under `prefix`."""
    with redis.Redis.from_url(url) as r:
        answer = r.pubsub_numsub(f"{prefix}invalidate:cache", f"{prefix}invalidate:auth")
    return min(int(n) for _, n in answer)


def replica_env(
    prefix: str, storage: Path, secret: str, redis_url: str | None = REDIS_URL, **extra: str
) -> dict[str, str]:
    env = {
        "CARGOHOLD_STORAGE__FILESYSTEM__ROOT": str(storage),  # blobs visible to every replica
        "CARGOHOLD_AUTH__SECRET_KEY": secret,  # one key decrypts the shared signing keys
        "CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": "3600",
        "CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES": "3",
        "CARGOHOLD_AUTH__LOCKOUT__DELAY_SECONDS": "0",
        "CARGOHOLD_GC__ENABLED": "false",
        **extra,
    }
    if redis_url:
        env["CARGOHOLD_REDIS__URL"] = redis_url
        env["CARGOHOLD_REDIS__KEY_PREFIX"] = prefix
    return env


def start_replicas(tmp: Path, database: str, envs: list[dict[str, str]]) -> list[RegistryProcess]:
    servers: list[RegistryProcess] = []
    try:
        for i, env in enumerate(envs):  # one after the other: the first creates the admin
            servers.append(
                RegistryProcess(tmp / f"replica-{i}", database_url=database, env=env).start()
            )
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def manifest_digest(server: RegistryProcess, repo: str, reference: str) -> str | None:
    with server.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    if r.status_code != 200:
        return None
    return r.headers["Docker-Content-Digest"]


# -- three replicas: A and B with Redis, C without -----------------------------------------


class Replicas:
    def __init__(self, a: RegistryProcess, b: RegistryProcess, c: RegistryProcess) -> None:
        self.a, self.b, self.c = a, b, c
        self.prefix = ""
        self.database = ""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("redis-replicas")
    prefix = unique_prefix()
    secret = uuid.uuid4().hex
    storage = tmp / "storage"
    with temporary_database() as database:
        servers = start_replicas(
            tmp,
            database,
            [
                replica_env(prefix, storage, secret),
                replica_env(prefix, storage, secret),
                # The control: nothing tells it of changes (and its caches' lifetime is
                # made long enough not to end during a test).
                replica_env(
                    prefix,
                    storage,
                    secret,
                    redis_url=None,
                    CARGOHOLD_CACHE__MAX_STALE_SECONDS="3600",
                ),
            ],
        )
        try:
            wait_for(lambda: subscribed(REDIS_URL, prefix) >= 2, "subscribed")
            found = Replicas(*servers)
            found.prefix, found.database = prefix, database
            yield found
        finally:
            for s in servers:
                s.stop()
            drop_keys(REDIS_URL, prefix)


def test_a_moved_tag_is_seen_by_the_other_replica_at_once(replicas: Replicas) -> None:
    a, b, c = replicas.a, replicas.b, replicas.c
    repo = unique_repo("redis")
    first, second = make_image(), make_image()
    with a.client() as client:
        push_image(client, repo, first, "latest")
    for server in (b, c):  # cached there now (twice: the second answer is the cache's)
        assert manifest_digest(server, repo, "latest") == first.digest
        assert manifest_digest(server, repo, "latest") == first.digest

    with a.client() as client:
        push_image(client, repo, second, "latest")
    wait_for(lambda: manifest_digest(b, repo, "latest") == second.digest, "moved on B", SOON)
    # The replica without Redis has nothing telling it: its cache answers the old digest
    # (for as long as nothing on its own host invalidates it), so B did not just miss.
    assert manifest_digest(c, repo, "latest") == first.digest

    with a.client() as client:  # and a deleted tag
        assert client.delete(f"/v2/{repo}/manifests/latest").status_code == 202
    wait_for(lambda: manifest_digest(b, repo, "latest") is None, "deleted on B", SOON)


def test_without_redis_another_replica_sees_a_change_within_the_cache_lifetime(
    tmp_path: Path,
) -> None:
    """Hosts on one PostgreSQL database without Redis: nothing announces a change, so the
    caches keep no answer longer than cache.max_stale_seconds (here 1 s)."""
    storage = tmp_path / "storage"
    secret = uuid.uuid4().hex
    env = replica_env("", storage, secret, redis_url=None, CARGOHOLD_CACHE__MAX_STALE_SECONDS="1")
    with temporary_database() as database:
        a, b = start_replicas(tmp_path, database, [env, env])
        try:
            repo = unique_repo("stale")
            first, second = make_image(), make_image()
            with a.client() as client:
                push_image(client, repo, first, "latest")
            assert manifest_digest(b, repo, "latest") == first.digest  # cached on B
            with a.client() as client:
                push_image(client, repo, second, "latest")
            wait_for(lambda: manifest_digest(b, repo, "latest") == second.digest, "moved on B")
        finally:
            a.stop()
            b.stop()


def test_a_revoked_permission_is_refused_by_the_other_replica(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    org = new_org(a, "rds")
    repo = new_repo(a, org, "app")
    with a.client() as su:
        assert try_push(su, repo, "base")[0] == 201
    user = create_user(a)
    grant(a, repo, user.name, "read")
    with v2(b, user.auth) as client:
        assert pull_status(client, repo, "base") == 200
        assert pull_status(client, repo, "base") == 200  # from B's caches
        with admin_api(a) as api:
            deleted = api.delete(f"/repository/{repo}/permissions/user/{user.name}")
            assert deleted.status_code == 204
        wait_for(lambda: pull_status(client, repo, "base") == 403, "refused on B", SOON)


def test_a_revoked_token_and_a_changed_password_are_refused_by_the_other_replica(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    user = create_user(a)
    token = app_token(a, user.name)
    assert v2_status(b, ("$app", token)) == 200
    assert v2_status(b, user.auth) == 200  # both verified, and cached, on B
    with sign_in(a, user.auth) as session:
        tokens = session.get("/api/v1/user/apptoken").json()["tokens"]
        assert session.delete(f"/api/v1/user/apptoken/{tokens[0]['id']}").status_code == 204
        wait_for(lambda: v2_status(b, ("$app", token)) == 401, "token refused on B", SOON)

        new_password = f"pw-{uuid.uuid4().hex}"
        body = {"password": new_password, "current_password": user.password}
        assert session.put("/api/v1/user/", json=body).status_code == 200
    wait_for(lambda: v2_status(b, user.auth) == 401, "old password refused on B", SOON)
    assert v2_status(b, (user.name, new_password)) == 200


def test_login_failures_are_counted_across_replicas(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    user = create_user(a)
    wrong = (user.name, "not-the-password")
    assert v2_status(a, wrong) == 401
    assert v2_status(b, wrong) == 401
    assert v2_status(a, wrong) == 401  # the third (lockout.max_failures): locked
    assert v2_status(b, user.auth) == 401
    assert v2_status(a, user.auth) == 401
    with redis.Redis.from_url(REDIS_URL) as r:
        assert r.exists(f"{replicas.prefix}throttle:user:{user.name}:locked")
        assert 0 < r.ttl(f"{replicas.prefix}throttle:user:{user.name}:locked") <= 900
    with psycopg.connect(replicas.database) as conn:  # counted in Redis, not the database
        rows = conn.execute(
            "SELECT count(*) FROM login_throttle WHERE key = %s", (f"user:{user.name}",)
        ).fetchone()
    assert rows == (0,)


def test_upload_requests_take_the_redis_lock(replicas: Replicas) -> None:
    """Requests on one upload wait for its Redis lock, on any replica; chunks of one
    upload alternate between replicas."""
    a, b = replicas.a, replicas.b
    repo = unique_repo("redislock")
    data = os.urandom(3000)
    with a.client() as ca, b.client() as cb:
        start = ca.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        upload_id = location.rstrip("/").rsplit("/", 1)[-1]
        first = cb.patch(
            location,
            content=data[:1000],
            headers={"Content-Range": "0-999", "Content-Type": "application/octet-stream"},
        )
        assert first.status_code == 202, first.text

        async def hold_then_patch() -> int:
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            lock = RedisLock(client, f"{replicas.prefix}lock:uploads/{upload_id}", 30.0)
            try:
                async with lock:
                    patch = asyncio.create_task(
                        asyncio.to_thread(
                            ca.patch,
                            location,
                            content=data[1000:2000],
                            headers={
                                "Content-Range": "1000-1999",
                                "Content-Type": "application/octet-stream",
                            },
                        )
                    )
                    await asyncio.sleep(1.0)
                    assert not patch.done()  # waits for the lock this test holds
                answer = await patch
                return answer.status_code
            finally:
                await client.aclose()

        assert asyncio.run(hold_then_patch()) == 202
        done = cb.put(
            location,
            params={"digest": "sha256:" + hashlib.sha256(data).hexdigest()},
            content=data[2000:],
            headers={"Content-Range": "2000-2999", "Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        assert ca.get(done.headers["Location"]).content == data


# -- throttle rules: the same behaviour from the database and from Redis --------------------


class Throttles:
    """LoginThrottles of one kind on one SQLite database (and one Redis key prefix),
    closed in the event loop that used them."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.url = f"sqlite:///{tmp / 'throttle.db'}"
        self.prefix = unique_prefix()
        self.made: list[tuple[Database, RedisState | None]] = []

    def make(self, **settings: Any) -> LoginThrottle:
        values: dict[str, Any] = {
            "max_failures": 3,
            "max_failures_per_address": 5,
            "window_seconds": 600,
            "lock_seconds": 600,
        }
        values.update(settings)
        db = Database(self.url)
        lockout = LockoutSettings(**values)
        if self.kind == "database":
            self.made.append((db, None))
            return LoginThrottle(db, lockout)
        redis_settings = RedisSettings(url=REDIS_URL, key_prefix=self.prefix)
        state = RedisState(redis_settings, self.tmp / "run")
        self.made.append((db, state))
        return RedisLoginThrottle(db, lockout, state)

    async def close(self) -> None:
        for db, state in self.made:
            if state is not None:
                await state.close()
            await db.dispose()


@pytest.fixture(params=["database", "redis"])
def throttles(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Throttles]:
    found = Throttles(request.param, tmp_path)
    upgrade(found.url)
    yield found
    drop_keys(REDIS_URL, found.prefix)


async def _forget(throttle: LoginThrottle, key: str) -> None:
    """As time passing would: the key's window and lock end."""
    if isinstance(throttle, RedisLoginThrottle):
        await throttle.redis.client.delete(*throttle._keys(key))
    else:
        from cargohold.db.session import run_write
        from cargohold.db.sql import sql

        async def work(session: Any) -> None:
            await session.run(sql("DELETE FROM login_throttle WHERE key = :key"), key=key)

        await run_write(throttle.db, work)


def test_throttle_rules(throttles: Throttles) -> None:
    async def scenario() -> None:
        try:
            await rules(throttles)
        finally:
            await throttles.close()

    asyncio.run(scenario())


async def rules(throttles: Throttles) -> None:
    t = throttles.make()
    # An address: locked after max_failures_per_address, other addresses are not.
    for i in range(4):
        assert await t.failed(keys_for(f"victim{i}", "10.0.0.1")) == []
    assert await t.failed(keys_for("victim4", "10.0.0.1")) == ["ip:10.0.0.1"]
    assert (await t.state(keys_for("newcomer", "10.0.0.1")))[0]
    assert not (await t.state(keys_for("newcomer", "10.0.0.2")))[0]
    assert await t.state(keys_for("victim0", "10.0.0.2")) == (False, 1)
    assert await t.state(keys_for(None, "2001:db8::1")) == (False, 0)
    # An account: locked from every address, names counted case-blind.
    assert await t.failed(keys_for("alice", "10.0.1.1")) == []
    assert await t.failed(keys_for("alice", "10.0.1.2")) == []
    assert await t.failed(keys_for("alice", "10.0.1.3")) == ["user:alice"]
    assert (await t.state(keys_for("ALICE", None)))[0]
    # A success forgets the account's failures, not the address's.
    await t.failed(keys_for("carol", "10.0.2.1"))
    await t.failed(keys_for("carol", "10.0.2.1"))
    await t.succeeded("carol")
    assert await t.state(keys_for("carol", None)) == (False, 0)
    assert await t.state(keys_for(None, "10.0.2.1")) == (False, 2)
    await t.succeeded("$app")
    # The window and the lock end: counting starts again.
    await _forget(t, "user:alice")
    assert await t.state(keys_for("alice", None)) == (False, 0)
    assert await t.failed(keys_for("alice", None)) == []
    assert await t.state(keys_for("alice", None)) == (False, 1)
    # Parallel guesses are all counted, and lock once.
    many = throttles.make(max_failures=1000, max_failures_per_address=1000)
    await asyncio.gather(*(many.failed(keys_for("eve", "10.0.3.1")) for _ in range(20)))
    assert await many.state(keys_for("eve", None)) == (False, 20)
    five = throttles.make(max_failures=5)
    locked = await asyncio.gather(*(five.failed(keys_for("mallory", None)) for _ in range(12)))
    assert sum(1 for keys in locked if keys) == 1
    await t.purge()


def test_redis_throttle_keys_expire(tmp_path: Path) -> None:
    async def scenario() -> None:
        prefix = unique_prefix()
        state = RedisState(RedisSettings(url=REDIS_URL, key_prefix=prefix), tmp_path)
        db = Database(f"sqlite:///{tmp_path / 'unused.db'}")
        t = RedisLoginThrottle(
            db, LockoutSettings(max_failures=2, window_seconds=120, lock_seconds=300), state
        )
        try:
            await t.failed(["user:frank"])
            assert 0 < await state.client.ttl(f"{prefix}throttle:user:frank:failures") <= 120
            assert await t.failed(["user:frank"]) == ["user:frank"]
            assert 0 < await state.client.ttl(f"{prefix}throttle:user:frank:locked") <= 300
            assert not await state.client.exists(f"{prefix}throttle:user:frank:failures")
        finally:
            await state.close()
            await db.dispose()
            drop_keys(REDIS_URL, prefix)

    asyncio.run(scenario())


# -- invalidation inside one process's caches -----------------------------------------------


def test_generation_across_processes_and_degraded_mode(tmp_path: Path) -> None:
    """Two RedisStates with their own run directories stand for two hosts: a bump on one
    empties the other's MetadataCache; with Redis unusable the cache keeps nothing."""

    async def scenario() -> None:
        prefix = unique_prefix()
        settings = RedisSettings(url=REDIS_URL, key_prefix=prefix, degraded_cache_seconds=0)
        one = RedisState(settings, tmp_path / "one")
        two = RedisState(settings, tmp_path / "two")
        cache_one = MetadataCache(one.generation("cache", LocalGeneration()))
        cache_two = MetadataCache(two.generation("cache", LocalGeneration()))
        record = ManifestRecord("sha256:" + "a" * 64, OCI_MANIFEST, b"{}")
        try:
            # Not listening yet: nothing is kept (degraded_cache_seconds 0).
            cache_two.remember_manifest(cache_two.snapshot(), "r/x", record, "t")
            assert cache_two.tag("r/x", "t") is None
            one.start()
            two.start()
            await eventually(lambda: one.live and two.live, "listening")
            cache_two.remember_manifest(cache_two.snapshot(), "r/x", record, "t")
            assert cache_two.tag("r/x", "t") == record
            cache_one.invalidate()
            await eventually(lambda: cache_two.tag("r/x", "t") is None, "emptied by the bump")
            # A process's own announcement does not empty its cache again.
            cache_one.remember_manifest(cache_one.snapshot(), "r/x", record, "t")
            seen = one.generations["cache"].epoch
            cache_one.invalidate()
            cache_one.remember_manifest(cache_one.snapshot(), "r/x", record, "t")
            # Connected, then two bumps heard.
            await eventually(lambda: two.generations["cache"].epoch >= 3, "both bumps heard")
            await asyncio.sleep(0.1)
            assert one.generations["cache"].epoch == seen
            assert cache_one.tag("r/x", "t") == record
        finally:
            await one.close()
            await two.close()
            drop_keys(REDIS_URL, prefix)

    asyncio.run(scenario())


# -- locks across processes -------------------------------------------------------------------

LOCK_WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    import redis.asyncio as aioredis
    from cargohold.shared.locks import RedisLock

    url, name, journal, rounds, lease = sys.argv[1:6]

    async def main():
        client = aioredis.Redis.from_url(url)
        for _ in range(int(rounds)):
            async with RedisLock(client, name, float(lease)):
                with open(journal, "a") as f:
                    f.write(f"in {os.getpid()}\\n")
                await asyncio.sleep(0.01)
                with open(journal, "a") as f:
                    f.write(f"out {os.getpid()}\\n")
        await client.aclose()

    asyncio.run(main())
    """
)

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as aioredis
    from cargohold.shared.locks import RedisLock

    url, name, lease = sys.argv[1:4]

    async def main():
        lock = RedisLock(aioredis.Redis.from_url(url), name, float(lease))
        await lock.acquire()
        print("held", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _python(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", *args], cwd=REPO_ROOT, text=True, **kwargs)


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    name = unique_prefix() + "lock:uploads/x"
    journal = tmp_path / "journal"
    workers = [_python(LOCK_WORKER, REDIS_URL, name, str(journal), "15", "5") for _ in range(3)]
    for w in workers:
        assert w.wait(timeout=120) == 0
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 * 15 * 2
    for enter, leave in zip(lines[0::2], lines[1::2], strict=True):
        assert enter.startswith("in ") and leave == "out " + enter[3:], (enter, leave)
    assert len({line.split()[1] for line in lines}) == 3


def test_lock_is_renewed_while_held_and_expires_when_its_holder_dies(tmp_path: Path) -> None:
    name = unique_prefix() + "lock:held"
    holder = _python(HOLDER, REDIS_URL, name, "1", stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        async def try_once() -> bool:
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            try:
                taken = await client.set(name, "other", nx=True, px=1000)
                return bool(taken)
            finally:
                await client.aclose()

        # Held for three leases: renewed, so never free.
        for _ in range(30):
            assert not asyncio.run(try_once())
            time.sleep(0.1)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)

        async def acquire() -> None:
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            try:
                lock = RedisLock(client, name, 5.0)
                await asyncio.wait_for(lock.acquire(), WAIT)  # once the dead lease expired
                assert await client.get(name) == lock.token.encode()
                await lock.release()
                assert not await client.exists(name)
            finally:
                await client.aclose()

        asyncio.run(acquire())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_release_never_removes_another_holders_lock(tmp_path: Path) -> None:
    async def scenario() -> None:
        name = unique_prefix() + "lock:stolen"
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            lock = RedisLock(client, name, 30.0)
            await lock.acquire()
            await client.set(name, "someone-else")  # as if it had expired and been taken
            await lock.release()
            assert await client.get(name) == b"someone-else"
            await client.delete(name)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_locks_fall_back_when_redis_is_unusable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there

    async def scenario() -> None:
        settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout_seconds=0.5)
        state = RedisState(settings, tmp_path)
        used: list[str] = []

        @contextlib.asynccontextmanager
        async def fallback(key: str) -> Any:
            used.append(key)
            yield

        locks = RedisLocks(state, 5.0, fallback)
        try:
            async with locks.exclusive("uploads/y"):  # never started: tries Redis first
                pass
            state.start()  # the listener never connects: not usable, straight to the fallback
            async with locks.exclusive("uploads/z"):
                pass
        finally:
            await state.close()
        assert used == ["uploads/y", "uploads/z"]

    asyncio.run(scenario())


# -- settings ------------------------------------------------------------------------------


def test_redis_settings() -> None:
    assert load_settings().redis.url == ""
    settings = load_settings(redis={"url": "redis://:s3cret@redis.example.org:6379/2"})
    masked = settings.masked()["redis"]["url"]
    assert "s3cret" not in masked and masked.startswith("redis://")
    with pytest.raises(Exception, match=r"redis\.url"):
        load_settings(redis={"url": "http://redis.example.org"})


def test_without_redis_the_client_library_is_not_imported(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from cargohold.app import build_runtime
        from cargohold.settings import load_settings
        runtime = build_runtime(load_settings(data_dir={str(tmp_path)!r}))
        assert runtime.redis is None
        assert "redis" not in sys.modules, "redis imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


# -- Redis goes away, and comes back ---------------------------------------------------------


class OwnRedis:
    """A redis-server of this test's own on a free port, stopped and started at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            with contextlib.suppress(redis.RedisError), redis.Redis.from_url(self.url) as r:
                return bool(r.ping())
            return False

        wait_for(answers, "redis-server answering")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def health(server: RegistryProcess) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{server.url}/health/endtoend", timeout=30)
    return r.status_code, r.json()


def test_replicas_keep_working_while_redis_is_down(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("redis-down")
    own = OwnRedis(tmp)
    own.start()
    prefix, secret, storage = unique_prefix(), uuid.uuid4().hex, tmp / "storage"
    env = replica_env(prefix, storage, secret, own.url, CARGOHOLD_REDIS__TIMEOUT_SECONDS="0.5")
    try:
        with temporary_database() as database:
            d, e = start_replicas(tmp, database, [env, env])
            try:
                _redis_down_scenario(own, d, e, prefix, database)
            finally:
                d.stop()
                e.stop()
    finally:
        own.stop()


def _redis_down_scenario(
    own: OwnRedis, d: RegistryProcess, e: RegistryProcess, prefix: str, database: str
) -> None:
    wait_for(lambda: subscribed(own.url, prefix) >= 2, "subscribed")
    assert health(d)[0] == 200 and health(d)[1]["services"]["redis"]["ok"] is True
    repo = unique_repo("redisdown")
    images = [make_image() for _ in range(4)]
    with d.client() as client:
        push_image(client, repo, images[0], "latest")
    assert manifest_digest(e, repo, "latest") == images[0].digest
    user = create_user(d)
    assert v2_status(e, user.auth) == 200

    own.stop()
    _, body = wait_for(lambda: (h := health(d))[0] == 503 and h, "reported")
    assert body["failed"] == ["redis"] and body["services"]["database"]["ok"] is True
    # Pushes (their upload locks fall back to the storage driver's), pulls, logins.
    with d.client() as client:
        push_image(client, repo, images[1], "latest")
        push_blob(client, repo, os.urandom(100))
    # E hears nothing, but keeps nothing for longer than redis.degraded_cache_seconds.
    wait_for(lambda: manifest_digest(e, repo, "latest") == images[1].digest, "moved on E")
    assert v2_status(e, user.auth) == 200
    assert v2_status(e, (user.name, "wrong")) == 401
    with psycopg.connect(database) as conn:  # counted in the database meanwhile
        rows = conn.execute(
            "SELECT failures FROM login_throttle WHERE key = %s", (f"user:{user.name}",)
        ).fetchall()
    assert rows == [(1,)]
    assert "Redis is unreachable" in d.log_tail(400)

    own.start()  # empty: no counters, no keys
    wait_for(lambda: health(d)[0] == 200 and health(e)[0] == 200, "healthy again")
    wait_for(lambda: subscribed(own.url, prefix) >= 2, "subscribed again")
    assert manifest_digest(e, repo, "latest") == images[1].digest
    assert manifest_digest(e, repo, "latest") == images[1].digest  # cached again
    with d.client() as client:
        push_image(client, repo, images[2], "latest")
    wait_for(lambda: manifest_digest(e, repo, "latest") == images[2].digest, "moved", SOON)
    assert "Redis answers again" in d.log_tail(400)
