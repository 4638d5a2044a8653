"""An unreachable identity provider refuses logins without counting them against the
account: an LDAP outage must not lock every user out once it is over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.audit import assert_logged, query
from tests.support.server import RegistryProcess, free_port


@pytest.fixture(scope="module")
def ldap_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    closed = free_port()  # nothing listens there
    env = {
        "CARGOHOLD_AUTH__PROVIDER": "ldap",
        "CARGOHOLD_AUTH__LDAP__URL": f"ldap://127.0.0.1:{closed}",
        "CARGOHOLD_AUTH__LDAP__BIND_DN": "cn=admin,dc=example,dc=org",
        "CARGOHOLD_AUTH__LDAP__BIND_PASSWORD": "unused",
        "CARGOHOLD_AUTH__LDAP__BASE_DN": "ou=people,dc=example,dc=org",
        "CARGOHOLD_AUTH__LDAP__TIMEOUT_SECONDS": "1",
        "CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES": "2",
        "CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": "0",
    }
    server = RegistryProcess(Path(tmp_path_factory.mktemp("ldap-down")), env=env).start()
    yield server
    server.stop()


def test_outage_refuses_without_locking(ldap_down: RegistryProcess) -> None:
    with ldap_down.client(auth=("alice", "her-password")) as c:
        for _ in range(4):
            r = c.get("/v2/")
            assert r.status_code == 401
            assert r.json()["errors"][0]["message"] == "invalid username or password"
    assert_logged(
        ldap_down,
        "login_failure",
        details={"username": "alice", "error": "provider unavailable"},
    )
    rows = query(ldap_down, "SELECT key FROM login_throttle WHERE key = 'user:alice'")
    assert rows == []  # never counted, so never locked
    # The database superuser still signs in while LDAP is down.
    with ldap_down.client() as c:
        assert c.get("/v2/").status_code == 200
