"""X-Forwarded-For and X-Forwarded-Proto are believed only from `server.trusted_proxies`:
behind a load balancer the audit log and the per-address login throttle see the client,
and the token challenge names the scheme the client used; from anyone else the headers
change nothing (a client cannot choose its own address for the throttle)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.audit import entries, last_id
from tests.support.server import RegistryProcess

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"CARGOHOLD_SERVER__TRUSTED_PROXIES": '["127.0.0.1", "::1"]'}
    server = RegistryProcess(tmp_path_factory.mktemp("proxied"), env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    server = RegistryProcess(tmp_path_factory.mktemp("direct")).start()
    yield server
    server.stop()


def _failed_login_ip(server: RegistryProcess) -> str | None:
    after = last_id(server)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v2/auth", auth=("nobody-here", "wrong"), headers=FORWARDED)
    assert r.status_code == 401
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # login failures are queued, written in batches
        found = entries(server, "login_failure", after=after)
        if found:
            return found[-1].ip
        time.sleep(0.1)
    raise AssertionError("no login_failure entry")


def _realm(server: RegistryProcess) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v2/", headers=FORWARDED)
    assert r.status_code == 401
    return r.headers["WWW-Authenticate"]


def test_a_trusted_proxy_gives_the_clients_address_and_scheme(
    behind_proxy: RegistryProcess,
) -> None:
    assert _failed_login_ip(behind_proxy) == "203.0.113.7"
    assert 'realm="https://' in _realm(behind_proxy)


def test_without_trusted_proxies_the_headers_change_nothing(direct: RegistryProcess) -> None:
    assert _failed_login_ip(direct) == "127.0.0.1"
    assert 'realm="http://' in _realm(direct)
