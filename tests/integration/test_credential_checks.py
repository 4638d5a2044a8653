"""Verifying credentials is expensive (argon2): the same credentials arriving many times
at once are checked once, and then served from the cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.audit import drain_queue, entries, last_id
from tests.support.identity import create_user
from tests.support.server import RegistryProcess


def test_a_burst_of_the_same_credentials_is_checked_once(registry: RegistryProcess) -> None:
    account = create_user(registry)
    mark = last_id(registry)

    def ping(_: int) -> int:
        with registry.client(auth=account.auth) as c:
            return c.get("/v2/").status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(ping, range(48)))
    assert statuses == [200] * 48
    drain_queue(registry)
    logins = [e for e in entries(registry, "login", after=mark) if e.actor == account.name]
    assert len(logins) == 1, logins  # one verification, every other request waited or hit


def test_a_burst_of_a_wrong_password_is_refused_every_time(registry: RegistryProcess) -> None:
    account = create_user(registry)

    def ping(_: int) -> int:
        with registry.client(auth=(account.name, "not-the-password")) as c:
            return c.get("/v2/").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(ping, range(16))) == [401] * 16
    with registry.client(auth=account.auth) as c:
        assert c.get("/v2/").status_code == 200
