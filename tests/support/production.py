"""A production deployment for tests: three stateless replicas behind a load balancer.

    with ProductionDeployment(tmp_dir) as prod:
        with prod.client() as c:            # through the balancer, as the superuser
            ...
        prod.replicas[1].url                # one replica directly
        prod.kill(1); prod.restart(1)       # SIGKILL one, start it again on its port

What runs (everything on 127.0.0.1, stopped at the end):

- PostgreSQL: a fresh database on the machine's server (tests/support/postgres.py);
- S3: SeaweedFS from PyPI (tests/support/s3.py), its own bucket; pass `s3=` to share a
  running server (the deployment then uses a bucket of its own on it);
- Redis: the machine's, at CARGOHOLD_TEST_REDIS_URL (default redis://127.0.0.1:6379/0),
  with a key prefix of this deployment's own, whose keys are deleted at the end;
- `replica_count` `cargohold serve` processes on their own ports, each with its OWN data
  directory (nothing is shared through the filesystem: not the storage, not the cache
  generation files, not the secret key file), the same `auth.secret_key` (it decrypts
  the signing keys all of them share in the database), `storage.driver: s3`,
  `auth.realm` at the balancer (token challenges send clients there), Redis, and the job
  queue running inside `serve` (`jobs.run_in_web`, the default);
- nginx in front (tests/support/balancer.py), round-robin.

For the protocol tests it looks like `RegistryProcess`: `url`, `host`, `admin_auth`,
`authorization` and `client()` all speak to the balancer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx
import redis

from tests.support.balancer import UPSTREAM_HEADER, Balancer
from tests.support.postgres import temporary_database
from tests.support.s3 import SeaweedS3
from tests.support.server import RegistryProcess, SignedInAsAdmin

REDIS_URL = os.environ.get("CARGOHOLD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN_PATH = "/v2/auth"  # cargohold.web.registry.auth.TOKEN_PATH


def served_by(response: httpx.Response) -> int:
    """The port of the replica that answered a request through the balancer (the last one
    nginx tried, when it skipped a dead one first)."""
    upstreams = response.headers[UPSTREAM_HEADER]
    return int(upstreams.split(",")[-1].strip().rsplit(":", 1)[1])


def subscribed(prefix: str) -> int:
    """How many processes listen for cache invalidations under `prefix` (shared/state.py)."""
    with redis.Redis.from_url(REDIS_URL) as r:
        answer = r.pubsub_numsub(f"{prefix}invalidate:cache", f"{prefix}invalidate:auth")
    return min(int(n) for _, n in answer)


def drop_keys(prefix: str) -> None:
    with contextlib.suppress(redis.RedisError), redis.Redis.from_url(REDIS_URL) as r:
        for key in list(r.scan_iter(match=prefix + "*", count=1000)):
            r.delete(key)


class ProductionDeployment(SignedInAsAdmin):
    """PostgreSQL + S3 + Redis, `replica_count` replicas, a balancer in front."""

    def __init__(
        self,
        base: Path,
        *,
        replica_count: int = 3,
        s3: SeaweedS3 | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.replica_count = replica_count
        self.extra_env = env or {}
        self._own_s3 = s3 is None
        self.s3 = s3 if s3 is not None else SeaweedS3(base / "seaweed")
        self.bucket = f"prod-{uuid.uuid4().hex[:12]}"
        self.redis_prefix = f"cargohold-test:prod-{uuid.uuid4().hex[:12]}:"
        self.secret_key = secrets.token_urlsafe(32)
        self.database_url = ""
        self.replicas: list[RegistryProcess] = []
        self.balancer: Balancer | None = None
        self._stack = contextlib.ExitStack()

    # -- what the protocol tests use (RegistryProcess's surface, at the balancer) ---------

    @property
    def front(self) -> Balancer:
        assert self.balancer is not None, "the deployment is not started"
        return self.balancer

    @property
    def host(self) -> str:
        return self.front.host

    @property
    def url(self) -> str:
        return self.front.url

    # -- the replicas ----------------------------------------------------------------------

    def replica_env(self) -> dict[str, str]:
        env = self.s3.settings_env(self.bucket)
        env.update(
            {
                "CARGOHOLD_AUTH__SECRET_KEY": self.secret_key,
                "CARGOHOLD_AUTH__REALM": f"{self.url}{TOKEN_PATH}",
                "CARGOHOLD_REDIS__URL": REDIS_URL,
                "CARGOHOLD_REDIS__KEY_PREFIX": self.redis_prefix,
                "CARGOHOLD_JOBS__RUN_IN_WEB": "true",
                # A killed replica's upload locks expire after this (30 s by default):
                # nginx passes a PUT that died with its replica on to the next one (PUT is
                # idempotent), and that one waits for the lock. Shorter than the clients'
                # timeouts here (tests/integration/test_scale_out.py).
                "CARGOHOLD_REDIS__LOCK_SECONDS": "5",
            }
        )
        env.update(self.extra_env)
        return env

    def kill(self, index: int) -> None:
        """SIGKILL the replica's whole process group (no clean shutdown of anything)."""
        self.replicas[index].kill()

    def restart(self, index: int) -> RegistryProcess:
        """Start a killed or stopped replica again, on its port and its data directory."""
        old = self.replicas[index]
        old.kill()
        fresh = RegistryProcess(old.data_dir, database_url=self.database_url, env=old.extra_env)
        fresh.port = old.port  # the balancer knows it by this port
        self.replicas[index] = fresh.start()
        self.wait_subscribed()
        return fresh

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Every running replica listens for invalidations (else a change made through one
        might not reach another's cache)."""
        running = sum(1 for r in self.replicas if r.proc is not None)
        deadline = time.monotonic() + timeout
        while subscribed(self.redis_prefix) < running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{running} replicas did not all subscribe within {timeout}s")
            time.sleep(0.05)

    # -- start and stop --------------------------------------------------------------------

    def start(self) -> ProductionDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._stack.callback(drop_keys, self.redis_prefix)
        if self._own_s3:
            self._stack.enter_context(self.s3)
        self.s3.create_bucket(self.bucket)
        self.database_url = self._stack.enter_context(temporary_database())
        # Ports first: the balancer needs the replicas', the replicas its (as their realm).
        self.replicas = [
            RegistryProcess(self.base / f"replica-{i}", database_url=self.database_url)
            for i in range(self.replica_count)
        ]
        self.balancer = Balancer(self.base / "balancer", [r.port for r in self.replicas])
        self._stack.callback(self._stop_replicas)
        env = self.replica_env()
        for replica in self.replicas:
            replica.extra_env = dict(env)
        # One after the other: the first migrates the database and creates the superuser
        # and the signing key; the others find them there (starting them at once gains
        # nothing on two cores).
        for replica in self.replicas:
            replica.start()
        self._stack.enter_context(self.balancer)
        self.wait_subscribed()

    def _stop_replicas(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> ProductionDeployment:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
