"""App-specific tokens (/api/v1/user/apptoken) and the encrypted CLI password
(/api/v1/user/clientkey): shown once, never again; revoked at once on /v2 and /api/v1;
no token makes a wider one; audited."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.api_v1.identity_helpers import (
    admin,
    anonymous,
    assert_api_error,
    bearer_client,
    column,
    new_token,
    new_user,
    sign_in,
    token_endpoint_status,
    v2_status,
)
from tests.support.audit import assert_logged, last_id
from tests.support.identity import Account
from tests.support.server import RegistryProcess


def _user(registry: RegistryProcess) -> Account:
    with admin(registry) as su:
        return new_user(registry, su)


def _secrets_in_audit(registry: RegistryProcess, secret: str) -> list[str]:
    return column(
        registry, "SELECT kind FROM audit_log WHERE details LIKE :s", s=f"%{secret[4:20]}%"
    )


def test_app_token_lifecycle(registry: RegistryProcess) -> None:
    user = _user(registry)
    mark = last_id(registry)
    with sign_in(registry, user.auth) as session:
        created = new_token(session, ["user:read"], title="ci pipeline", expiration="30d")
        secret = created["token_code"]
        assert secret.startswith("cht_")
        assert created["title"] == "ci pipeline" and created["scopes"] == ["user:read"]
        assert created["uuid"] == str(created["id"]) and created["last_accessed"] is None
        expiration = datetime.fromisoformat(created["expiration"])
        assert timedelta(days=29) < expiration - datetime.now(UTC) <= timedelta(days=30)

        listed = session.get("/api/v1/user/apptoken")
        assert listed.status_code == 200, listed.text
        assert [t["id"] for t in listed.json()["tokens"]] == [created["id"]]
        one = session.get(f"/api/v1/user/apptoken/{created['id']}")
        assert one.status_code == 200 and one.json()["token"]["title"] == "ci pipeline"
        for answer in (listed, one):
            assert secret not in answer.text and secret[4:20] not in answer.text
            assert "token_code" not in answer.text

        # It works: as a bearer token on the API and as a password on /v2 (both caches fill).
        with bearer_client(registry, secret) as client:
            assert client.get("/api/v1/user/").json()["username"] == user.name
        assert v2_status(registry, ("$app", secret)) == 200
        assert v2_status(registry, (user.name, secret)) == 200
        assert token_endpoint_status(registry, ("$app", secret)) == 200
        used = session.get(f"/api/v1/user/apptoken/{created['id']}").json()["token"]
        assert used["last_accessed"] is not None

        revoked = session.delete(f"/api/v1/user/apptoken/{created['id']}")
        assert revoked.status_code == 204, revoked.text
        # At once, on both surfaces, although both had verified it moments ago.
        with bearer_client(registry, secret) as client:
            assert_api_error(client.get("/api/v1/user/"), 401)
        assert v2_status(registry, ("$app", secret)) == 401
        assert token_endpoint_status(registry, (user.name, secret)) == 401
        assert session.get("/api/v1/user/apptoken").json()["tokens"] == []
        assert_api_error(session.get(f"/api/v1/user/apptoken/{created['id']}"), 404)
        assert_api_error(session.delete(f"/api/v1/user/apptoken/{created['id']}"), 404)

    made = assert_logged(
        registry, "create_app_token", actor=user.name, namespace=user.name, after=mark
    )
    assert made.details["title"] == "ci pipeline" and made.details["scopes"] == ["user:read"]
    gone = assert_logged(registry, "revoke_app_token", actor=user.name, after=mark)
    assert gone.details["credential"] == created["id"]
    assert _secrets_in_audit(registry, secret) == []


def test_token_without_scopes_is_a_registry_password_only(registry: RegistryProcess) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        secret = new_token(session, [])["token_code"]
    assert v2_status(registry, ("$app", secret)) == 200
    with bearer_client(registry, secret) as client:
        assert_api_error(client.get("/api/v1/user/"), 403)
        assert_api_error(client.get("/api/v1/user/apptoken"), 403)


def test_expired_token_stops_working(registry: RegistryProcess) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        token = new_token(session, ["user:read"], expiration="1s")
        time.sleep(1.5)
        listed = session.get("/api/v1/user/apptoken").json()["tokens"]
    assert [t["expired"] for t in listed if t["id"] == token["id"]] == [True]
    with bearer_client(registry, token["token_code"]) as client:
        assert_api_error(client.get("/api/v1/user/"), 401)
    assert v2_status(registry, ("$app", token["token_code"])) == 401


def test_expiration_as_a_date(registry: RegistryProcess) -> None:
    user = _user(registry)
    when = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    with sign_in(registry, user.auth) as session:
        token = new_token(session, [], expiration=when.isoformat())
        naive = new_token(session, [], expiration=when.replace(tzinfo=None).isoformat())
    assert datetime.fromisoformat(token["expiration"]) == when
    assert datetime.fromisoformat(naive["expiration"]) == when  # no zone: UTC


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x", "token_code": "cht_chosen-by-the-caller-000000000000000000000000000"},
        {"title": "x", "user": "admin"},
        {"title": "x", "id": 1},
        {"title": "x", "scopes": ["repo:everything"]},
        {"title": "x", "scopes": "user:read"},
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 256},
        {"title": "x", "expiration": "yesterday"},
        {"title": "x", "expiration": "0d"},
        {"title": "x", "expiration": "4000d"},
        {"title": "x", "expiration": "2001-01-01T00:00:00Z"},
        {"title": "x", "expiration": "9999-01-01T00:00:00Z"},
        {},
    ],
)
def test_app_token_refuses_bad_input(registry: RegistryProcess, body: object) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        assert_api_error(session.post("/api/v1/user/apptoken", json=body), 400)
        assert session.get("/api/v1/user/apptoken").json()["tokens"] == []


def test_app_token_routes_refuse_bad_ids(registry: RegistryProcess) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        assert_api_error(session.get("/api/v1/user/apptoken/not-a-number"), 400)
        assert_api_error(session.get("/api/v1/user/apptoken/999999999"), 404)


def test_a_token_cannot_make_a_wider_token(registry: RegistryProcess) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        admin_token = new_token(session, ["user:admin"])["token_code"]
        reader_token = new_token(session, ["user:read"])["token_code"]
        # Only superusers get super:user, even from a session.
        body = {"title": "x", "scopes": ["super:user"]}
        assert_api_error(session.post("/api/v1/user/apptoken", json=body), 403)
    with bearer_client(registry, admin_token) as client:
        for wider in (["repo:read"], ["org:admin"], ["user:admin", "repo:admin"]):
            answer = client.post("/api/v1/user/apptoken", json={"title": "x", "scopes": wider})
            assert_api_error(answer, 403)
        narrower = new_token(client, ["user:read"])
        same = new_token(client, ["user:admin"])
        assert narrower["scopes"] == ["user:read"] and same["scopes"] == ["user:admin"]
    with bearer_client(registry, reader_token) as client:  # creating needs user:admin
        body = {"title": "x", "scopes": []}
        assert_api_error(client.post("/api/v1/user/apptoken", json=body), 403)
        assert client.get("/api/v1/user/apptoken").status_code == 200
    with anonymous(registry) as nobody:
        assert_api_error(nobody.post("/api/v1/user/apptoken", json=body), 401)
        assert_api_error(nobody.get("/api/v1/user/apptoken"), 401)


def test_superuser_may_grant_super_user_scope(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        token = new_token(su, ["super:user"])
    with bearer_client(registry, token["token_code"]) as client:
        assert client.get("/api/v1/superuser/users/", params={"limit": 1}).status_code == 200


def test_tokens_of_others_are_out_of_reach(registry: RegistryProcess) -> None:
    """Object-level authorization (SECURITY.md 1.2): ids of another user's tokens answer 404."""
    owner, other = _user(registry), _user(registry)
    with sign_in(registry, owner.auth) as session:
        token = new_token(session, ["user:read"])
    with sign_in(registry, other.auth) as session:
        assert_api_error(session.get(f"/api/v1/user/apptoken/{token['id']}"), 404)
        assert_api_error(session.delete(f"/api/v1/user/apptoken/{token['id']}"), 404)
        assert session.get("/api/v1/user/apptoken").json()["tokens"] == []
    with bearer_client(registry, token["token_code"]) as client:
        assert client.get("/api/v1/user/").status_code == 200


# -- the encrypted CLI password -----------------------------------------------------------


def test_client_key_is_a_docker_login_password(registry: RegistryProcess) -> None:
    user = _user(registry)
    mark = last_id(registry)
    with sign_in(registry, user.auth) as session:
        answer = session.post("/api/v1/user/clientkey", json={"password": user.password})
        assert answer.status_code == 200, answer.text
        key = answer.json()["key"]
        assert key.startswith("chc_") and set(answer.json()) == {"key"}
        assert v2_status(registry, (user.name, key)) == 200
        assert token_endpoint_status(registry, (user.name, key)) == 200
        with registry.client(auth=(user.name, key)) as docker:
            issued = docker.get("/v2/auth", params={"service": "cargohold"}).json()
        with anonymous(registry, headers={"Authorization": f"Bearer {issued['token']}"}) as c:
            assert c.get("/v2/").status_code == 200

        # One at a time: a new key replaces the old one at once.
        second = session.post("/api/v1/user/clientkey", json={"password": user.password})
        newer = second.json()["key"]
        assert newer != key
        assert v2_status(registry, (user.name, key)) == 401
        assert v2_status(registry, (user.name, newer)) == 200
        assert v2_status(registry, (_user(registry).name, newer)) == 401  # someone else's name

        # It never shows up again.
        listed = session.get("/api/v1/user/apptoken")
        assert newer not in listed.text and key not in listed.text
        assert newer not in session.get("/api/v1/user/").text

        revoked = session.delete("/api/v1/user/clientkey")
        assert revoked.status_code == 204, revoked.text
        assert v2_status(registry, (user.name, newer)) == 401
    made = assert_logged(
        registry, "create_cli_password", actor=user.name, namespace=user.name, after=mark
    )
    assert "key" not in made.details
    assert_logged(
        registry, "revoke_app_token", actor=user.name, details={"kind": "cli"}, after=mark
    )
    assert _secrets_in_audit(registry, key) == [] and _secrets_in_audit(registry, newer) == []


def test_client_key_needs_the_real_password(registry: RegistryProcess) -> None:
    user = _user(registry)
    with sign_in(registry, user.auth) as session:
        token = new_token(session, ["user:admin"])["token_code"]
        reader = new_token(session, ["user:read"])["token_code"]
        wrong = session.post("/api/v1/user/clientkey", json={"password": "not-the-password"})
        assert_api_error(wrong, 403)
        # A token is not the password, even one with user:admin.
        assert_api_error(session.post("/api/v1/user/clientkey", json={"password": token}), 403)
        for body in ({}, {"password": ""}, {"password": user.password, "user": "admin"}):
            assert_api_error(session.post("/api/v1/user/clientkey", json=body), 400)
    with bearer_client(registry, token) as client:  # with the password, a token may
        answer = client.post("/api/v1/user/clientkey", json={"password": user.password})
        assert answer.status_code == 200, answer.text
    with bearer_client(registry, reader) as client:
        answer = client.post("/api/v1/user/clientkey", json={"password": user.password})
        assert_api_error(answer, 403)
    with anonymous(registry) as nobody:
        answer = nobody.post("/api/v1/user/clientkey", json={"password": user.password})
        assert_api_error(answer, 401)
