"""Superusers manage users (/api/v1/superuser/users/): the list with keyset pages,
creation, changes, disabling (which stops every credential at once) and deletion (refused
while the user's namespace holds repositories). Each change is audited with
{"superuser": true}."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_v1.identity_helpers import (
    admin,
    anonymous,
    assert_api_error,
    bearer_client,
    column,
    make_org,
    new_token,
    new_user,
    sign_in,
    v2_status,
)
from tests.support.audit import assert_logged, execute, last_id
from tests.support.identity import unique_name
from tests.support.oci import make_image, push_image
from tests.support.server import RegistryProcess

USERS = "/api/v1/superuser/users/"


def _user_id(registry: RegistryProcess, name: str) -> int:
    return int(column(registry, "SELECT id FROM user_account WHERE username = :n", n=name)[0])


def test_list_users_in_keyset_pages(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        made = sorted(new_user(registry, su).name for _ in range(3))
        seen: list[str] = []
        pages = 0
        params: dict[str, Any] = {"limit": 2}
        while True:
            answer = su.get(USERS, params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert len(body["users"]) <= 2
            seen += [u["username"] for u in body["users"]]
            pages += 1
            if "next_page" not in body:
                break
            params["next_page"] = body["next_page"]
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        assert set(made) <= set(seen) and "admin" in seen
        assert pages == (len(seen) + 1) // 2
        first = {u["username"]: u for u in su.get(USERS, params={"limit": 100}).json()["users"]}
    view = first.get("admin") or {}
    assert view.get("super_user") is True and view.get("enabled") is True
    assert all("password" not in str(k) for u in first.values() for k in u)
    with admin(registry) as su:
        for bad in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}):
            assert_api_error(su.get(USERS, params=bad), 400)


def test_create_user_with_a_generated_password(registry: RegistryProcess) -> None:
    name = unique_name()
    mark = last_id(registry)
    with admin(registry) as su:
        answer = su.post(USERS, json={"username": name, "email": "new@example.com"})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        password = body["password"]
        assert body["username"] == name and body["super_user"] is False and len(password) >= 16
        shown = su.get(USERS + name)
        assert shown.status_code == 200 and shown.json()["email"] == "new@example.com"
        assert password not in shown.text
        chosen = su.post(USERS, json={"username": unique_name(), "password": "chosen-one-1"})
        assert chosen.status_code == 201 and "password" not in chosen.json()
    with sign_in(registry, (name, password)) as session:
        assert session.get("/api/v1/user/").json()["username"] == name
    logged = assert_logged(registry, "create_user", actor="admin", namespace=name, after=mark)
    assert logged.details["superuser"] is True and password not in str(logged.details)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "fine-name-x", "superuser": True}, 400),
        ({"username": "fine-name-x", "super_user": True}, 400),
        ({"username": "fine-name-x", "enabled": False}, 400),
        ({"username": "Bad Name"}, 400),
        ({"username": "x"}, 400),
        ({"username": "fine-name-x", "password": "short"}, 400),
        ({"username": "fine-name-x", "email": "not-an-address"}, 400),
        ({}, 400),
        ({"username": "admin"}, 409),
    ],
)
def test_create_user_refuses_bad_input(
    registry: RegistryProcess, body: dict[str, Any], status: int
) -> None:
    with admin(registry) as su:
        assert_api_error(su.post(USERS, json=body), status)
        assert_api_error(su.get(USERS + "fine-name-x"), 404)


def test_change_a_user(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
        mark = last_id(registry)
        with sign_in(registry, user.auth) as session:
            changed = su.put(USERS + user.name, json={"email": "moved@example.com"})
            assert changed.status_code == 200, changed.text
            assert changed.json()["email"] == "moved@example.com"
            assert session.get("/api/v1/user/").json()["email"] == "moved@example.com"

            promoted = su.put(USERS + user.name, json={"superuser": True})
            assert promoted.status_code == 200 and promoted.json()["super_user"] is True
            assert session.get("/api/v1/user/").json()["super_user"] is True
            assert session.get(USERS, params={"limit": 1}).status_code == 200
            demoted = su.put(USERS + user.name, json={"superuser": False})
            assert demoted.json()["super_user"] is False
            assert_api_error(session.get(USERS, params={"limit": 1}), 403)

            reset = su.put(USERS + user.name, json={"password": "reset-by-admin-1"})
            assert reset.status_code == 200, reset.text
            assert_api_error(session.get("/api/v1/user/"), 401)  # sessions end
    assert v2_status(registry, user.auth) == 401
    assert v2_status(registry, (user.name, "reset-by-admin-1")) == 200
    logged = assert_logged(registry, "change_user", actor="admin", namespace=user.name, after=mark)
    assert logged.details["superuser"] is True and logged.details["fields"] == ["password"]
    assert "reset-by-admin-1" not in str(logged.details)


def test_disabling_stops_every_credential_at_once(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    with sign_in(registry, user.auth) as session:
        token = new_token(session, ["user:read"])["token_code"]
        key = session.post("/api/v1/user/clientkey", json={"password": user.password}).json()["key"]
        # Every credential verified once, so the server's caches hold them.
        assert session.get("/api/v1/user/").status_code == 200
        with bearer_client(registry, token) as client:
            assert client.get("/api/v1/user/").status_code == 200
        for auth in (user.auth, ("$app", token), (user.name, key)):
            assert v2_status(registry, auth) == 200
        with admin(registry) as su:
            mark = last_id(registry)
            off = su.put(USERS + user.name, json={"enabled": False})
            assert off.status_code == 200 and off.json()["enabled"] is False
            assert_api_error(session.get("/api/v1/user/"), 401)
            with bearer_client(registry, token) as client:
                assert_api_error(client.get("/api/v1/user/"), 401)
            for auth in (user.auth, ("$app", token), (user.name, key)):
                assert v2_status(registry, auth) == 401
            with anonymous(registry) as client:
                body = {"username": user.name, "password": user.password}
                assert_api_error(client.post("/api/v1/signin", json=body), 401)
            logged = assert_logged(registry, "change_user", namespace=user.name, after=mark)
            assert logged.details == {**logged.details, "superuser": True, "fields": ["enabled"]}

            on = su.put(USERS + user.name, json={"enabled": True})
            assert on.status_code == 200 and on.json()["enabled"] is True
        assert_api_error(session.get("/api/v1/user/"), 401)  # the session stays ended
    assert v2_status(registry, user.auth) == 200
    assert v2_status(registry, ("$app", token)) == 200  # tokens were not revoked


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "renamed"},
        {"super_user": True},
        {"provider": "ldap"},
        {"enabled": None},
        {"superuser": None},
        {"password": None},
        {"password": "short"},
        {"email": "not-an-address"},
    ],
)
def test_change_refuses_bad_input(registry: RegistryProcess, body: dict[str, Any]) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
        assert_api_error(su.put(USERS + user.name, json=body), 400)
        view = su.get(USERS + user.name).json()
    assert (view["enabled"], view["super_user"], view["email"]) == (True, False, None)
    assert v2_status(registry, user.auth) == 200


def test_superusers_do_not_lock_themselves_out(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        boss = new_user(registry, su)
        assert su.put(USERS + boss.name, json={"superuser": True}).status_code == 200
    with sign_in(registry, boss.auth) as client:
        for body in ({"enabled": False}, {"superuser": False}):
            assert_api_error(client.put(USERS + boss.name, json=body), 400)
        assert_api_error(client.delete(USERS + boss.name), 400)
        assert client.get(USERS + boss.name).json()["super_user"] is True


def test_unknown_users_answer_404(registry: RegistryProcess) -> None:
    ghost = unique_name("ghost")
    with admin(registry) as su:
        for method, body in (("GET", None), ("PUT", {"email": "a@b.cd"}), ("DELETE", None)):
            for name in (ghost, "BAD"):
                assert_api_error(su.request(method, USERS + name, json=body), 404)


def test_superuser_routes_need_a_superuser(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
        target = new_user(registry, su)
        without = new_token(su, ["user:admin", "org:admin"])["token_code"]
        with_scope = new_token(su, ["super:user"])["token_code"]
    calls = [
        ("GET", USERS, None),
        ("POST", USERS, {"username": unique_name()}),
        ("GET", USERS + target.name, None),
        ("PUT", USERS + target.name, {"enabled": False}),
        ("DELETE", USERS + target.name, None),
    ]
    with sign_in(registry, user.auth) as client:
        for method, path, body in calls:
            assert_api_error(client.request(method, path, json=body), 403)
    with anonymous(registry) as nobody:
        for method, path, body in calls:
            assert_api_error(nobody.request(method, path, json=body), 401)
    with bearer_client(registry, without) as client:  # a superuser's token without the scope
        for method, path, body in calls:
            assert_api_error(client.request(method, path, json=body), 403)
    assert v2_status(registry, target.auth) == 200  # nothing happened to the target
    with bearer_client(registry, with_scope) as client:
        assert client.get(USERS + target.name).status_code == 200


def test_delete_a_user(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    user_id = _user_id(registry, user.name)
    org = unique_name("org")
    make_org(registry, org, admins=[], members=[user.name])
    # A repository of the organization where the user has a grant, and a default permission.
    with registry.client() as root:  # the superuser may push anywhere
        push_image(root, f"{org}/app", make_image(), "v1")
    repo_id = column(registry, "SELECT id FROM repository WHERE name = :n", n=f"{org}/app")[0]
    org_id = column(registry, "SELECT id FROM namespace WHERE name = :n", n=org)[0]
    execute(
        registry,
        """INSERT INTO repository_permission (repository_id, kind, grantee_id, role)
           VALUES (:repo, 'user', :user, 'write')""",
        [{"repo": repo_id, "user": user_id}],
    )
    execute(
        registry,
        """INSERT INTO default_permission (uuid, org_id, activating_user_id, kind,
           grantee_id, role) VALUES (:uuid, :org, NULL, 'user', :user, 'read')""",
        [{"uuid": unique_name("p") + "-0000-0000-000000000000", "org": org_id, "user": user_id}],
    )
    with sign_in(registry, user.auth) as session:
        token = new_token(session, ["user:read"])["token_code"]
        mark = last_id(registry)
        with admin(registry) as su:
            answer = su.delete(USERS + user.name)
            assert answer.status_code == 204, answer.text
            assert_api_error(su.get(USERS + user.name), 404)
        assert_api_error(session.get("/api/v1/user/"), 401)
    with bearer_client(registry, token) as client:
        assert_api_error(client.get("/api/v1/user/"), 401)
    assert v2_status(registry, user.auth) == 401
    for table, where in (
        ("credential", "user_id = :id"),
        ("web_session", "user_id = :id"),
        ("team_member", "kind = 'user' AND member_id = :id"),
        ("repository_permission", "kind = 'user' AND grantee_id = :id"),
        ("default_permission", "kind = 'user' AND grantee_id = :id"),
        ("user_account", "id = :id"),
    ):
        assert column(registry, f"SELECT COUNT(*) FROM {table} WHERE {where}", id=user_id) == [0]
    assert column(registry, "SELECT COUNT(*) FROM namespace WHERE name = :n", n=user.name) == [0]
    logged = assert_logged(registry, "delete_user", actor="admin", namespace=user.name, after=mark)
    assert logged.details["superuser"] is True
    # The name is free again.
    with admin(registry) as su:
        again = su.post(USERS, json={"username": user.name, "password": "pw-long-enough"})
        assert again.status_code == 201, again.text


def test_delete_refused_while_the_namespace_has_repositories(registry: RegistryProcess) -> None:
    with admin(registry) as su:
        user = new_user(registry, su)
    with registry.client(auth=user.auth) as own:
        push_image(own, f"{user.name}/app", make_image(), "v1")
    with admin(registry) as su:
        answer = su.delete(USERS + user.name)
        body = assert_api_error(answer, 409)
        assert "repositor" in body["error_message"]
        assert su.get(USERS + user.name).status_code == 200
    assert v2_status(registry, user.auth) == 200
