"""/api/v1 sign-in sessions, the signed-in user (/user/), self sign-up and public user
information: success paths, bad input (mass assignment, SECURITY.md 1.1), callers
without the right, and the audit entries."""

from __future__ import annotations

import pytest

from tests.api_v1.identity_helpers import (
    SESSION_COOKIE,
    admin,
    anonymous,
    assert_api_error,
    bearer_client,
    make_org,
    new_token,
    new_user,
    sign_in,
    v2_status,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.identity import create_user, unique_name
from tests.support.server import RegistryProcess

# -- signing in and out -------------------------------------------------------------------


def test_signin_starts_a_session_with_a_safe_cookie(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    mark = last_id(registry)
    with anonymous(registry) as client:
        answer = client.post(
            "/api/v1/signin", json={"username": user.name, "password": user.password}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["success"] is True and len(body["csrf_token"]) >= 32
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=lax", "path=/"} <= attributes
        assert "secure" not in attributes  # plain HTTP here; https requests get Secure
        me = client.get("/api/v1/user/")
        assert me.status_code == 200, me.text
        assert me.json()["username"] == user.name
    assert_logged(
        registry, "login", actor=user.name, details={"method": "password", "registry": False},
        after=mark,
    )  # fmt: skip


def test_signin_failures_answer_alike_and_are_audited(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    mark = last_id(registry)
    with anonymous(registry) as client:
        wrong = client.post("/api/v1/signin", json={"username": user.name, "password": "nope-x"})
        ghost = client.post(
            "/api/v1/signin", json={"username": unique_name("ghost"), "password": "nope-x"}
        )
        for answer in (wrong, ghost):
            assert_api_error(answer, 401)
            assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
        assert wrong.json() == ghost.json()
    assert_logged(registry, "login_failure", details={"username": user.name}, after=mark)


def test_signin_takes_only_a_real_password(registry: RegistryProcess) -> None:
    """A token must not turn into a session (its scopes would be lost)."""
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        token = new_token(session, ["user:read"])["token_code"]
    mark = last_id(registry)
    with anonymous(registry) as client:
        for name, secret in ((user.name, token), ("$app", token), (f"{user.name}+bot", "x" * 9)):
            answer = client.post("/api/v1/signin", json={"username": name, "password": secret})
            assert_api_error(answer, 401)
            assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    assert_logged(
        registry, "login_failure", details={"username": "$app", "reason": "not a password"},
        after=mark,
    )  # fmt: skip
    logins = [e for e in entries(registry, "login", after=mark) if e.actor == user.name]
    assert [e.details["method"] for e in logins] in ([], ["password"])  # sign_in's, queued


@pytest.mark.parametrize(
    "body",
    [
        {"username": "someone"},
        {"password": "something"},
        {"username": "someone", "password": "something", "remember": True},
        {"username": "", "password": "something"},
        [],
    ],
)
def test_signin_refuses_bad_bodies(registry: RegistryProcess, body: object) -> None:
    with anonymous(registry) as client:
        assert_api_error(client.post("/api/v1/signin", json=body), 400)


def test_session_changes_need_the_csrf_token(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        csrf = session.headers.pop("X-CSRF-Token")
        change = {"email": "someone@example.com"}
        assert_api_error(session.put("/api/v1/user/", json=change), 403)
        wrong = {"X-CSRF-Token": "x" * 43}
        assert_api_error(session.put("/api/v1/user/", json=change, headers=wrong), 403)
        assert session.get("/api/v1/user/").json()["email"] is None  # reads need none
        answer = session.put("/api/v1/user/", json=change, headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 200, answer.text
        assert answer.json()["email"] == "someone@example.com"


def test_signout_ends_the_session(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    mark = last_id(registry)
    with sign_in(registry, user.auth) as session:
        cookie = session.cookies[SESSION_COOKIE]
        csrf = session.headers.pop("X-CSRF-Token")
        assert_api_error(session.post("/api/v1/signout"), 403)  # no CSRF token
        answer = session.post("/api/v1/signout", headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"success": True}
        assert f'{SESSION_COOKIE}=""' in answer.headers["set-cookie"]
    with anonymous(registry, cookies={SESSION_COOKIE: cookie}) as stale:
        assert_api_error(stale.get("/api/v1/user/"), 401)
    assert_logged(registry, "logout", actor=user.name, after=mark)
    with anonymous(registry) as nobody:
        assert_api_error(nobody.post("/api/v1/signout"), 401)


def test_csrf_token_of_the_session(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        answer = session.get("/api/v1/csrf_token")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"csrf_token": session.headers["X-CSRF-Token"]}
        token = new_token(session, ["user:read"])["token_code"]
    with bearer_client(registry, token) as client:
        assert_api_error(client.get("/api/v1/csrf_token"), 400)
    with anonymous(registry) as nobody:
        assert_api_error(nobody.get("/api/v1/csrf_token"), 401)


# -- the signed-in user -------------------------------------------------------------------


def test_user_shows_profile_and_organizations(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su, email="me@example.com")
        me = su.get("/api/v1/user/").json()
        assert me["username"] == "admin" and me["super_user"] is True
    led, joined = unique_name("org"), unique_name("org")
    make_org(registry, led, admins=[user.name], members=[])
    make_org(registry, joined, admins=[], members=[user.name])
    with sign_in(registry, user.auth) as session:
        answer = session.get("/api/v1/user/")
        assert answer.status_code == 200, answer.text
        body = answer.json()
    assert body["username"] == user.name and body["email"] == "me@example.com"
    assert body["anonymous"] is False and body["super_user"] is False
    assert body["provider"] == "database" and body["last_login"] is not None
    assert body["organizations"] == sorted(
        [{"name": led, "is_org_admin": True}, {"name": joined, "is_org_admin": False}],
        key=lambda o: str(o["name"]),
    )
    assert "password" not in answer.text and "password_hash" not in body


def test_user_created_with_the_cli(registry: RegistryProcess) -> None:
    account = create_user(registry, email="cli@example.com")
    with sign_in(registry, account.auth) as session:
        body = session.get("/api/v1/user/").json()
    assert (body["username"], body["email"]) == (account.name, "cli@example.com")


def test_user_needs_a_signed_in_caller_with_the_scope(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        narrow = new_token(session, ["repo:read"])["token_code"]
        reader = new_token(session, ["user:read"])["token_code"]
        writer = new_token(session, ["user:admin"])["token_code"]
    with anonymous(registry) as nobody:
        assert_api_error(nobody.get("/api/v1/user/"), 401)
        assert_api_error(nobody.put("/api/v1/user/", json={"email": "a@b.cd"}), 401)
    with anonymous(registry, headers={"Authorization": "Bearer cht_not-a-token"}) as bad:
        assert_api_error(bad.get("/api/v1/user/"), 401)
    with bearer_client(registry, narrow) as client:
        assert_api_error(client.get("/api/v1/user/"), 403)
    with bearer_client(registry, reader) as client:
        assert client.get("/api/v1/user/").json()["username"] == user.name
        assert_api_error(client.put("/api/v1/user/", json={"email": "a@b.cd"}), 403)
    with bearer_client(registry, writer) as client:  # user:admin includes user:read
        assert client.get("/api/v1/user/").status_code == 200
        answer = client.put("/api/v1/user/", json={"email": "a@b.cd"})
        assert answer.status_code == 200 and answer.json()["email"] == "a@b.cd"
    with registry.client(auth=user.auth) as basic:  # Basic is for /v2 only
        assert_api_error(basic.get("/api/v1/user/"), 401)


def test_user_changes_email(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    mark = last_id(registry)
    with sign_in(registry, user.auth) as session:
        answer = session.put("/api/v1/user/", json={"email": "new@example.com"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["email"] == "new@example.com"
        assert session.get("/api/v1/user/").json()["email"] == "new@example.com"
        for bad in ("not-an-address", "a@b", "x" * 250 + "@example.com", "a b@example.com"):
            assert_api_error(session.put("/api/v1/user/", json={"email": bad}), 400)
        cleared = session.put("/api/v1/user/", json={"email": None})
        assert cleared.status_code == 200 and cleared.json()["email"] is None
    logged = assert_logged(
        registry, "change_user", actor=user.name, namespace=user.name, after=mark
    )
    assert logged.details["fields"] == ["email"]


def test_user_changes_password(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    new_password = "a-new-password-1"
    mark = last_id(registry)
    with sign_in(registry, user.auth) as session, sign_in(registry, user.auth) as other:
        key = session.post("/api/v1/user/clientkey", json={"password": user.password})
        cli_key = key.json()["key"]
        assert v2_status(registry, (user.name, cli_key)) == 200
        missing = session.put("/api/v1/user/", json={"password": new_password})
        assert_api_error(missing, 400)
        wrong = session.put(
            "/api/v1/user/", json={"password": new_password, "current_password": "wrong-one"}
        )
        assert_api_error(wrong, 403)
        short = session.put(
            "/api/v1/user/", json={"password": "short", "current_password": user.password}
        )
        assert_api_error(short, 400)
        answer = session.put(
            "/api/v1/user/", json={"password": new_password, "current_password": user.password}
        )
        assert answer.status_code == 200, answer.text
        assert session.get("/api/v1/user/").status_code == 200  # this session stays
        assert_api_error(other.get("/api/v1/user/"), 401)  # the others end
    assert v2_status(registry, user.auth) == 401
    assert v2_status(registry, (user.name, new_password)) == 200
    assert v2_status(registry, (user.name, cli_key)) == 401  # the CLI password went too
    with anonymous(registry) as client:
        old = client.post("/api/v1/signin", json={"username": user.name, "password": user.password})
        assert_api_error(old, 401)
    logged = assert_logged(registry, "change_user", actor=user.name, after=mark)
    assert logged.details["fields"] == ["password"]
    assert new_password not in str(logged.details) and user.password not in str(logged.details)


@pytest.mark.parametrize(
    "body",
    [
        {"super_user": True},
        {"superuser": True},
        {"enabled": False},
        {"username": "someone-else"},
        {"provider": "ldap"},
        {"email": "a@example.com", "super_user": True},
        {},
        {"password": None},
    ],
)
def test_user_update_refuses_other_fields(registry: RegistryProcess, body: object) -> None:
    """Mass assignment (SECURITY.md 1.1): only email and password may be sent."""
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        assert_api_error(session.put("/api/v1/user/", json=body), 400)
        me = session.get("/api/v1/user/").json()
    assert me["super_user"] is False and me["username"] == user.name and me["email"] is None
    assert v2_status(registry, user.auth) == 200  # still enabled


# -- sign-up and public information -------------------------------------------------------


def test_sign_up(registry: RegistryProcess) -> None:
    name = unique_name("new")
    mark = last_id(registry)
    with anonymous(registry) as client:
        answer = client.post(
            "/api/v1/user/",
            json={"username": name, "email": "new@example.com", "password": "pw-long-enough"},
        )
        assert answer.status_code == 201, answer.text
        assert answer.json() == {
            "username": name,
            "email": "new@example.com",
            "awaiting_verification": False,
        }
    with sign_in(registry, (name, "pw-long-enough")) as session:
        me = session.get("/api/v1/user/").json()
    assert me["username"] == name and me["super_user"] is False
    assert_logged(
        registry, "create_user", namespace=name, actor_kind="anonymous",
        details={"signup": True}, after=mark,
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        {"super_user": True},
        {"superuser": True},
        {"is_superuser": True},
        {"enabled": True},
        {"provider": "ldap"},
        {"organization": "admin"},
        {"role": "admin"},
    ],
)
def test_sign_up_refuses_other_fields(registry: RegistryProcess, extra: dict[str, object]) -> None:
    """Harbor CVE-2019-16097: a sign-up body must not set anything but the three fields."""
    name = unique_name("mass")
    with anonymous(registry) as client:
        body = {"username": name, "password": "pw-long-enough", **extra}
        assert_api_error(client.post("/api/v1/user/", json=body), 400)
        assert_api_error(client.get(f"/api/v1/users/{name}"), 404)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "Upper", "password": "pw-long-enough"}, 400),
        ({"username": "a", "password": "pw-long-enough"}, 400),
        ({"username": "a+b", "password": "pw-long-enough"}, 400),
        ({"username": "../etc", "password": "pw-long-enough"}, 400),
        ({"username": "x" * 256, "password": "pw-long-enough"}, 400),
        ({"username": "fine-name", "password": "short"}, 400),
        ({"username": "fine-name", "password": "pw-long-enough", "email": "nope"}, 400),
        ({"username": "fine-name"}, 400),
        ({"username": "admin", "password": "pw-long-enough"}, 409),
    ],
)
def test_sign_up_refuses_bad_input(
    registry: RegistryProcess, body: dict[str, object], status: int
) -> None:
    with anonymous(registry) as client:
        assert_api_error(client.post("/api/v1/user/", json=body), status)
        assert_api_error(client.get("/api/v1/users/fine-name"), 404)


def test_sign_up_refuses_names_of_users_and_organizations(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    org = unique_name("org")
    make_org(registry, org, admins=[], members=[])
    before = entries(registry, "create_user")
    with anonymous(registry) as client:
        for name in (user.name, org):
            body = {"username": name, "password": "pw-long-enough"}
            assert_api_error(client.post("/api/v1/user/", json=body), 409)
    assert v2_status(registry, user.auth) == 200  # the user is untouched
    after = entries(registry, "create_user", after=before[-1].id if before else 0)
    assert not [e for e in after if e.namespace in (user.name, org)]


def test_public_user_information(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su, email="private@example.com")
    org = unique_name("org")
    make_org(registry, org, admins=[user.name], members=[])
    with anonymous(registry) as client:
        answer = client.get(f"/api/v1/users/{user.name}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"username": user.name, "is_org": False, "is_robot": False}
        for missing in (unique_name("ghost"), org, "BAD", "a"):
            assert_api_error(client.get(f"/api/v1/users/{missing}"), 404)
