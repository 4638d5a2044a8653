"""Brute force over HTTP (issue 4, acceptance 4): failed logins for one account, or from
one address, are slowed, then locked for the configured time, recorded in the audit log,
and answered the same way whether or not the account exists.

A server of its own with small settings: 3 failures lock an account, 10 an address, for a
few seconds; no credential cache, so every attempt reaches the throttle. Each test starts
with the address's count cleared (every client here is 127.0.0.1), and what depends on
distinct addresses is tested in test_login_throttle.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.registry_support import (
    SERVICE,
    last_audit_id,
    new_app_token,
    new_user,
    query,
    wait_for_audit,
)
from tests.support.audit import assert_logged
from tests.support.identity import unique_name
from tests.support.server import RegistryProcess

MAX_FAILURES = 3
MAX_FAILURES_PER_ADDRESS = 10
LOCK_SECONDS = 4
ADDRESS = "ip:127.0.0.1"
REFUSED = "invalid username or password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data_dir: Path = tmp_path_factory.mktemp("registry-lockout")
    env = {
        "CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES": str(MAX_FAILURES),
        "CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES_PER_ADDRESS": str(MAX_FAILURES_PER_ADDRESS),
        "CARGOHOLD_AUTH__LOCKOUT__WINDOW_SECONDS": "600",
        "CARGOHOLD_AUTH__LOCKOUT__LOCK_SECONDS": str(LOCK_SECONDS),
        "CARGOHOLD_AUTH__LOCKOUT__DELAY_AFTER": "1",
        "CARGOHOLD_AUTH__LOCKOUT__DELAY_SECONDS": "0.1",
        "CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": "0",
    }
    process = RegistryProcess(data_dir, env=env).start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def fresh_address(server: RegistryProcess) -> None:
    """Each test starts with no failures counted for 127.0.0.1."""
    query(server, "DELETE FROM login_throttle WHERE key = ?", ADDRESS)


def _v2(server: RegistryProcess, auth: tuple[str, str]) -> httpx.Response:
    with server.client(auth=auth) as c:
        return c.get("/v2/")


def _token(server: RegistryProcess, auth: tuple[str, str]) -> httpx.Response:
    with server.client(auth=auth) as c:
        return c.get("/v2/auth", params={"service": SERVICE})


def _shape(resp: httpx.Response) -> tuple[int, str, str | None]:
    """What a client can compare between two refusals."""
    return resp.status_code, resp.text, resp.headers.get("www-authenticate")


def _throttle_row(server: RegistryProcess, key: str) -> tuple[Any, ...] | None:
    rows = query(server, "SELECT failures, locked_until FROM login_throttle WHERE key = ?", key)
    return rows[0] if rows else None


def _wait_until_unlocked(server: RegistryProcess, key: str) -> None:
    found = _throttle_row(server, key)
    assert found is not None and found[1] is not None, (key, found)
    until = datetime.fromisoformat(str(found[1])).replace(tzinfo=UTC)
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.3)


def _audit_for(server: RegistryProcess, after: int, name: str, count: int) -> list[dict[str, Any]]:
    """The audit rows about logins as `name`, once `count` of them are written."""

    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["details"].get("username") == name]

    return mine(wait_for_audit(server, after, lambda rows: len(mine(rows)) >= count))


def test_an_account_is_locked_then_unlocked(server: RegistryProcess) -> None:
    start = last_audit_id(server)
    user, bystander = new_user(server), new_user(server)
    wrong = (user.name, "not-the-password")
    refusals = [_v2(server, wrong) for _ in range(MAX_FAILURES)]
    locked = _v2(server, user.auth)  # the right password, during the lock
    assert {_shape(r) for r in refusals} == {_shape(locked)}
    assert locked.status_code == 401
    assert locked.json()["errors"][0] == {
        "code": "UNAUTHORIZED",
        "message": REFUSED,
        "detail": None,
    }
    # The token endpoint and the API's sign-in are refused alike: one lock for all.
    assert _token(server, user.auth).status_code == 401
    with server.client(auth=None) as c:
        r = c.post("/api/v1/signin", json={"username": user.name, "password": user.password})
        assert r.status_code == 401
    # Another account from the same address is not locked.
    assert _v2(server, bystander.auth).status_code == 200
    rows = _audit_for(server, start, user.name, MAX_FAILURES + 4)
    kinds = [r["kind"] for r in rows]
    assert kinds[:MAX_FAILURES] == ["login_failure"] * MAX_FAILURES
    assert kinds.count("account_locked") == 1
    assert kinds.count("login_failure") == MAX_FAILURES + 3
    lock = assert_logged(
        server,
        "account_locked",
        actor_kind="anonymous",
        ip="127.0.0.1",
        details={
            "username": user.name,
            "keys": [f"user:{user.name}"],
            "lock_seconds": LOCK_SECONDS,
        },
        after=start,
    )
    assert lock.actor is None  # nobody signed in
    assert lock.id == next(r["id"] for r in rows if r["kind"] == "account_locked")
    during = [r for r in rows if r["kind"] == "login_failure"][MAX_FAILURES:]
    assert all(r["details"]["locked"] for r in during)
    # The lock ends after lock_seconds; then the right password works, the wrong one not.
    _wait_until_unlocked(server, f"user:{user.name}")
    assert _v2(server, wrong).status_code == 401
    assert _v2(server, user.auth).status_code == 200
    assert _throttle_row(server, f"user:{user.name}") is None  # the success forgot them


def test_existing_and_missing_accounts_are_answered_alike(server: RegistryProcess) -> None:
    start = last_audit_id(server)
    existing = new_user(server)
    missing = unique_name("ghost")
    answers: dict[str, list[tuple[int, str, str | None]]] = {}
    for name in (existing.name, missing):
        sequence = [_v2(server, (name, "guess-1")), _token(server, (name, "guess-2"))]
        sequence += [_v2(server, (name, "guess-3")), _token(server, (name, "guess-4"))]
        sequence.append(_v2(server, (name, existing.password)))
        answers[name] = [_shape(r) for r in sequence]
    assert answers[existing.name] == answers[missing]
    assert {status for status, _, _ in answers[missing]} == {401}
    # The same records and the same lock for both.
    for name in (existing.name, missing):
        rows = _audit_for(server, start, name, 6)
        assert [r["kind"] for r in rows] == [
            "login_failure",
            "login_failure",
            "login_failure",
            "account_locked",
            "login_failure",
            "login_failure",
        ]
        assert_logged(
            server,
            "account_locked",
            actor_kind="anonymous",
            details={"username": name, "keys": [f"user:{name}"], "lock_seconds": LOCK_SECONDS},
            after=start,
        )
        found = _throttle_row(server, f"user:{name}")
        assert found is not None and found[1] is not None
    assert _v2(server, existing.auth).status_code == 401  # still locked
    assert not query(
        server, "SELECT 1 FROM user_account WHERE username = ?", missing
    )  # counting a name never creates it


def test_an_address_is_locked_across_accounts(server: RegistryProcess) -> None:
    """Password spraying: one guess each for many names locks the address, so even an
    account with its right password is refused from there until the lock ends."""
    start = last_audit_id(server)
    user = new_user(server)
    for _ in range(MAX_FAILURES_PER_ADDRESS):
        assert _v2(server, (unique_name("spray"), "Summer2026!")).status_code == 401
    refused = _v2(server, user.auth)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["message"] == REFUSED
    rows = wait_for_audit(
        server,
        start,
        lambda rows: any(ADDRESS in r["details"].get("keys", []) for r in rows),
    )
    assert [r["details"]["keys"] for r in rows if r["kind"] == "account_locked"] == [[ADDRESS]]
    assert_logged(
        server,
        "account_locked",
        actor_kind="anonymous",
        ip="127.0.0.1",
        details={"keys": [ADDRESS], "lock_seconds": LOCK_SECONDS},
        after=start,
    )
    _wait_until_unlocked(server, ADDRESS)
    assert _v2(server, user.auth).status_code == 200


def test_token_logins_are_not_locked_by_guessed_tokens(server: RegistryProcess) -> None:
    """Wrong tokens sent as `$app` count for the address only: they must not lock the
    shared name `$app` for every user's tokens."""
    user = new_user(server)
    token = new_app_token(server, user)
    fake = token[:-8] + "AAAAAAAA"
    for _ in range(MAX_FAILURES + 2):
        assert _v2(server, ("$app", fake)).status_code == 401
    assert _v2(server, ("$app", token)).status_code == 200
    assert _throttle_row(server, "user:$app") is None
    found = _throttle_row(server, ADDRESS)
    assert found is not None and int(found[0]) == MAX_FAILURES + 2


def test_a_robot_is_an_account_too(server: RegistryProcess) -> None:
    start = last_audit_id(server)
    owner = new_user(server)
    robot = f"{owner.name}+ci"
    for _ in range(MAX_FAILURES):
        assert _v2(server, (robot, "guessed-token")).status_code == 401
    rows = _audit_for(server, start, robot, MAX_FAILURES + 1)
    assert [r["kind"] for r in rows].count("account_locked") == 1
    assert_logged(
        server,
        "account_locked",
        actor_kind="anonymous",
        details={"username": robot, "keys": [f"user:{robot}"]},
        after=start,
    )
