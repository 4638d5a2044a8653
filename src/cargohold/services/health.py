"""Dependency checks: does each service this process needs answer? One check per
configured service, run concurrently, each with a short timeout. Used by GET
/health/endtoend (cached, without error details) and `cargohold config check --online`
(with them).

Every check is cheap: the database runs `SELECT 1`; storage stats a sentinel object
(`storage.layout.HEALTH_SENTINEL`), writing it first when it is missing, so a fresh or
wiped store also proves it takes writes; LDAP binds as the service account; OpenID
Connect fetches the discovery document; Redis answers a PING."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cargohold.db.session import Database
from cargohold.db.sql import sql
from cargohold.settings import Settings
from cargohold.storage.driver import ObjectNotFound, StorageDriver
from cargohold.storage.layout import HEALTH_SENTINEL
from cargohold.storage.locations import StorageLocations

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0  # seconds, per check; the checks run concurrently
CACHE_SECONDS = 1.0  # /health/endtoend answers from the last result this long

SELECT_ONE = sql("SELECT 1")

Check = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    ms: float
    # Why it failed ("timeout" or the exception): for the CLI and the server log only,
    # never in an HTTP answer (it can name hosts and ports).
    error: str | None = None

    @property
    def reason(self) -> str | None:
        """What an HTTP answer may say about a failure: "timeout" or "error"."""
        if self.ok:
            return None
        return "timeout" if self.error and self.error.startswith("timeout") else "error"


async def check_database(db: Database) -> None:
    async with db.read() as session:
        if await session.value(SELECT_ONE) != 1:
            raise RuntimeError("SELECT 1 did not answer 1")


async def check_storage(storage: StorageDriver) -> None:
    try:
        await storage.stat(HEALTH_SENTINEL)
    except ObjectNotFound:
        await storage.put_bytes(HEALTH_SENTINEL, b"cargohold health check\n")
        await storage.stat(HEALTH_SENTINEL)


def identity_check(settings: Settings, timeout: float = CHECK_TIMEOUT) -> Check | None:
    """The configured identity provider's check; None for the database provider (the
    database check covers it)."""
    auth = settings.auth
    if auth.provider == "ldap":
        from cargohold.auth.ldap import LdapProvider  # ldap3 only when configured

        # The thread of a bind cannot be cancelled: bound ldap3's own timeouts too.
        limited = auth.ldap.model_copy(update={"timeout_seconds": max(1, math.ceil(timeout))})
        return LdapProvider(limited).check
    if auth.provider == "oidc":
        from cargohold.auth.oidc import OidcClient

        async def discovery() -> None:
            # A new client each time: OidcClient keeps the document for an hour.
            await OidcClient(auth.oidc, timeout=timeout).metadata()

        return discovery
    return None


def storage_checks(storage: StorageDriver | StorageLocations) -> dict[str, Check]:
    """`storage` for the default location, `storage.<name>` for each other one."""
    if not isinstance(storage, StorageLocations):
        return {"storage": lambda: check_storage(storage)}
    checks: dict[str, Check] = {}
    for name in sorted(storage.drivers, key=lambda n: n != storage.default):
        driver = storage.drivers[name]
        label = "storage" if name == storage.default else f"storage.{name}"
        checks[label] = functools.partial(check_storage, driver)
    return checks


def dependency_checks(
    settings: Settings,
    db: Database,
    storage: StorageDriver | StorageLocations,
    *,
    timeout: float = CHECK_TIMEOUT,
) -> dict[str, Check]:
    """The checks of the services `settings` configure, by the name answers use."""
    checks: dict[str, Check] = {"database": lambda: check_database(db)}
    checks.update(storage_checks(storage))
    identity = identity_check(settings, timeout)
    if identity is not None:
        checks["identity_provider"] = identity
    redis = redis_check(settings)
    if redis is not None:
        checks["redis"] = redis
    return checks


def redis_check(settings: Settings) -> Check | None:
    """A PING on a new connection, when `redis.url` is set. A Redis outage fails this
    check although requests go on working (ARCHITECTURE.md, "Caches")."""
    if not settings.redis.url:
        return None
    from cargohold.shared.client import check  # the client library only when configured

    return lambda: check(settings.redis)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


async def _timed(name: str, check: Check, seconds: float) -> CheckResult:
    start = time.perf_counter()
    error: str | None = None
    try:
        await asyncio.wait_for(check(), seconds)
    except TimeoutError:
        error = f"timeout: no answer within {seconds:g} s"
    except Exception as exc:
        error = _describe(exc)
    ms = (time.perf_counter() - start) * 1000
    return CheckResult(name, error is None, ms, error)


async def run_checks(
    checks: dict[str, Check], *, seconds: float = CHECK_TIMEOUT
) -> list[CheckResult]:
    """Every check at once; each fails after `seconds` or on its own exception."""
    return list(await asyncio.gather(*(_timed(n, c, seconds) for n, c in checks.items())))


class CachedChecks:
    """The checks behind an unauthenticated endpoint: the last result is reused for
    CACHE_SECONDS and concurrent callers share one run, so hammering the endpoint costs
    each dependency at most one check per second per process."""

    def __init__(
        self,
        checks: dict[str, Check],
        *,
        timeout: float = CHECK_TIMEOUT,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.checks = checks
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._last: tuple[float, list[CheckResult]] | None = None
        self._running: asyncio.Future[list[CheckResult]] | None = None

    async def results(self) -> list[CheckResult]:
        last = self._last
        if last is not None and time.monotonic() - last[0] < self.cache_seconds:
            return last[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # Shielded: a caller that goes away does not cancel the run the others wait for.
        return await asyncio.shield(self._running)

    async def _run(self) -> list[CheckResult]:
        try:
            results = await run_checks(self.checks, seconds=self.timeout)
            for r in results:
                if not r.ok:
                    log.warning("health check of %s failed: %s", r.name, r.error)
            self._last = (time.monotonic(), results)
            return results
        finally:
            self._running = None


def _failing(exc: Exception) -> Check:
    async def check() -> None:
        raise exc

    return check


async def check_online(settings: Settings, *, seconds: float = CHECK_TIMEOUT) -> list[CheckResult]:
    """`cargohold config check --online`: connect to each configured service once, with
    its own database connection and storage driver (nothing is migrated)."""
    from cargohold.storage.registry import build_locations

    checks: dict[str, Check] = {}
    db: Database | None = None
    storage: StorageLocations | None = None
    try:
        db = Database(settings.database.url, pool_size=1)
    except Exception as exc:
        checks["database"] = _failing(exc)
    else:
        checks["database"] = lambda: check_database(db)
    try:
        storage = build_locations(settings)
    except Exception as exc:
        checks["storage"] = _failing(exc)
    else:
        checks.update(storage_checks(storage))
    try:
        identity = identity_check(settings, seconds)
    except Exception as exc:
        checks["identity_provider"] = _failing(exc)
    else:
        if identity is not None:
            checks["identity_provider"] = identity
    try:
        redis = redis_check(settings)
    except Exception as exc:
        checks["redis"] = _failing(exc)
    else:
        if redis is not None:
            checks["redis"] = redis
    try:
        return await run_checks(checks, seconds=seconds)
    finally:
        if db is not None:
            await db.dispose()
        if storage is not None:
            await storage.close()
