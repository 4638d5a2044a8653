"""Identity behaviour that depends on settings, on servers of their own:
`auth.refuse_password_on_cli` (the real password is refused on /v2, the encrypted CLI
password works), `auth.superusers` (those names cannot be signed up for) and
`auth.user_creation` (sign-up off)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api_v1.identity_helpers import (
    admin,
    anonymous,
    assert_api_error,
    new_user,
    sign_in,
    token_endpoint_status,
    v2_status,
)
from tests.support.identity import unique_name
from tests.support.server import RegistryProcess

CHIEF = "chief"


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Raw passwords refused on the registry protocol; `chief` a superuser by setting."""
    server = RegistryProcess(
        tmp_path_factory.mktemp("registry-strict"),
        env={
            "CARGOHOLD_AUTH__REFUSE_PASSWORD_ON_CLI": "true",
            "CARGOHOLD_AUTH__SUPERUSERS": f'["{CHIEF}"]',
        },
    )
    server.ready_statuses = frozenset({200, 401})  # the superuser's password is refused too
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    server = RegistryProcess(
        tmp_path_factory.mktemp("registry-closed"),
        env={"CARGOHOLD_AUTH__USER_CREATION": "false"},
    ).start()
    yield server
    server.stop()


def test_refuse_password_on_cli_leaves_the_cli_key(strict: RegistryProcess) -> None:
    with admin(strict) as su:  # the API takes the password: it is not the CLI
        user = new_user(strict, su)
    assert v2_status(strict, user.auth) == 401
    assert token_endpoint_status(strict, user.auth) == 401
    with sign_in(strict, user.auth) as session:
        answer = session.post("/api/v1/user/clientkey", json={"password": user.password})
        assert answer.status_code == 200, answer.text
        key = answer.json()["key"]
    assert v2_status(strict, (user.name, key)) == 200
    assert token_endpoint_status(strict, (user.name, key)) == 200


def test_sign_up_refuses_superuser_names_of_the_settings(strict: RegistryProcess) -> None:
    """A name in auth.superusers makes its holder a superuser: nobody may sign up for it."""
    with anonymous(strict) as client:
        for name in (CHIEF, "admin"):
            body = {"username": name, "password": "pw-long-enough"}
            assert_api_error(client.post("/api/v1/user/", json=body), 409)
        assert_api_error(client.get(f"/api/v1/users/{CHIEF}"), 404)
        fine = {"username": unique_name(), "password": "pw-long-enough"}
        assert client.post("/api/v1/user/", json=fine).status_code == 201


def test_sign_up_can_be_switched_off(closed: RegistryProcess) -> None:
    name = unique_name()
    with anonymous(closed) as client:
        body = {"username": name, "password": "pw-long-enough"}
        assert_api_error(client.post("/api/v1/user/", json=body), 403)
        assert_api_error(client.get(f"/api/v1/users/{name}"), 404)
    with admin(closed) as su:  # superusers still create users
        user = new_user(closed, su)
    assert v2_status(closed, user.auth) == 200
