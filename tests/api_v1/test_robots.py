"""Robot accounts over /api/v1: the signed-in user's and an organization's; their tokens
on /v2 (Basic and the token flow); cross-tenant checks (SECURITY.md 1.2)."""

from __future__ import annotations

from tests.api_v1.access_helpers import (
    add_team,
    admin_api,
    api,
    api_error,
    bearer_registry,
    grant,
    granted,
    new_org,
    new_repo,
    ok,
    person,
    pull_status,
    token_for,
    try_push,
    v2,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.identity import unique_name
from tests.support.server import RegistryProcess


def login_status(server: RegistryProcess, name: str, token: str) -> int:
    with v2(server, (name, token)) as c:
        return c.get("/v2/").status_code


def test_user_robot_lifecycle(registry: RegistryProcess) -> None:
    owner = person(registry, "rbown")
    mark = last_id(registry)
    with api(registry, owner.token) as c:
        created = ok(c.put("/user/robots/builder", json={"description": "CI"}), 201)
        assert created["name"] == f"{owner.name}+builder"
        assert created["description"] == "CI"
        assert created["created"]
        token = created["token"]
        assert len(token) >= 32

        listed = ok(c.get("/user/robots"))["robots"]
        assert [r["name"] for r in listed] == [f"{owner.name}+builder"]
        assert all("token" not in r for r in listed)
        one = ok(c.get("/user/robots/builder"))
        assert one == {k: v for k, v in created.items() if k != "token"}

        assert login_status(registry, created["name"], token) == 200
        assert login_status(registry, created["name"], token + "x") == 401

        renewed = ok(c.post("/user/robots/builder/regenerate"))
        assert renewed["name"] == created["name"] and renewed["token"] != token
        # The old token fails at once, even though it was just verified (and cached).
        assert login_status(registry, created["name"], token) == 401
        assert login_status(registry, created["name"], renewed["token"]) == 200

        assert c.delete("/user/robots/builder").status_code == 204
        assert login_status(registry, created["name"], renewed["token"]) == 401
        api_error(c.get("/user/robots/builder"), 404)
        api_error(c.delete("/user/robots/builder"), 404)
        api_error(c.post("/user/robots/builder/regenerate"), 404)
        assert ok(c.get("/user/robots"))["robots"] == []

    assert_logged(
        registry,
        "create_robot",
        actor=owner.name,
        actor_kind="token",
        namespace=owner.name,
        details={"robot": created["name"], "description": "CI"},
        after=mark,
    )
    assert_logged(
        registry,
        "regenerate_robot_token",
        actor=owner.name,
        actor_kind="token",
        namespace=owner.name,
        details={"robot": created["name"]},
        after=mark,
    )
    assert_logged(
        registry,
        "delete_robot",
        actor=owner.name,
        actor_kind="token",
        namespace=owner.name,
        details={"robot": created["name"]},
        after=mark,
    )
    # One entry each (the refused calls wrote nothing), and never a token.
    mine = [e for e in entries(registry, after=mark) if e.namespace == owner.name]
    assert [e.kind for e in mine] == ["create_robot", "regenerate_robot_token", "delete_robot"]
    for entry in mine:
        assert token not in str(entry) and renewed["token"] not in str(entry)


def test_robot_requests_are_validated(registry: RegistryProcess) -> None:
    owner = person(registry, "rbval")
    with api(registry, owner.token) as c:
        ok(c.put("/user/robots/one"), 201)  # no body: no description
        api_error(c.put("/user/robots/one"), 409)
        api_error(c.put("/user/robots/Bad-Name"), 400)
        api_error(c.put("/user/robots/9lives"), 400)
        api_error(c.get("/user/robots/Bad-Name"), 400)
        api_error(c.put("/user/robots/two", json={"description": "x" * 256}), 400)
        # Mass assignment: only the description may be set.
        api_error(c.put("/user/robots/two", json={"token": "chosen-by-me"}), 400)
        api_error(c.put("/user/robots/two", json={"name": "someone+else"}), 400)
        api_error(c.get("/user/robots/two"), 404)
        assert [r["name"] for r in ok(c.get("/user/robots"))["robots"]] == [f"{owner.name}+one"]


def test_robot_routes_need_a_signed_in_user_with_scope(registry: RegistryProcess) -> None:
    with api(registry) as anonymous:
        api_error(anonymous.get("/user/robots"), 401)
        api_error(anonymous.put("/user/robots/x"), 401)
    reader = person(registry, "rbscp", scopes=("repo:read", "user:read"))
    with api(registry, reader.token) as c:
        api_error(c.get("/user/robots"), 403)
        api_error(c.put("/user/robots/x"), 403)


def test_org_robots_need_org_admin(registry: RegistryProcess) -> None:
    org = new_org(registry, "rbo")
    outsider, member, owner = (person(registry, p) for p in ("rbout", "rbmem", "rbadm"))
    add_team(registry, org, "devs", "member", member.name)
    add_team(registry, org, "owners", "admin", owner.name)
    with api(registry, owner.token) as c:
        created = ok(c.put(f"/organization/{org}/robots/deployer"), 201)
        assert created["name"] == f"{org}+deployer"
    with api(registry, member.token) as c:
        api_error(c.get(f"/organization/{org}/robots"), 403)
        api_error(c.post(f"/organization/{org}/robots/deployer/regenerate"), 403)
    with api(registry, outsider.token) as c:
        api_error(c.get(f"/organization/{org}/robots"), 404)
        api_error(c.delete(f"/organization/{org}/robots/deployer"), 404)
    with api(registry, owner.token) as c:
        listed = ok(c.get(f"/organization/{org}/robots"))["robots"]
        assert [r["name"] for r in listed] == [f"{org}+deployer"]
        assert "token" not in listed[0]
    assert login_status(registry, created["name"], created["token"]) == 200
    # A user namespace is not an organization, and an organization has no /user/robots.
    with api(registry, owner.token) as c:
        api_error(c.get(f"/organization/{owner.name}/robots"), 404)
        api_error(c.get("/user/robots/deployer"), 404)


def test_robot_of_another_org_through_my_org_url_is_not_found(registry: RegistryProcess) -> None:
    """Harbor CVE-2022-31667: the robot in the URL must belong to the organization in it."""
    mine, theirs = new_org(registry, "rbmine"), new_org(registry, "rbtheirs")
    me = person(registry, "rbme")
    add_team(registry, mine, "owners", "admin", me.name)
    with admin_api(registry) as c:
        victim = ok(c.put(f"/organization/{theirs}/robots/pusher"), 201)
    with api(registry, me.token) as c:
        api_error(c.get(f"/organization/{mine}/robots/pusher"), 404)
        api_error(c.get(f"/organization/{mine}/robots/pusher/permissions"), 404)
        api_error(c.post(f"/organization/{mine}/robots/pusher/regenerate"), 404)
        api_error(c.delete(f"/organization/{mine}/robots/pusher"), 404)
        # The full name does not help either.
        api_error(c.delete(f"/organization/{mine}/robots/{theirs}+pusher"), 400)
        # Through the victim's own URL: not an admin there.
        api_error(c.post(f"/organization/{theirs}/robots/pusher/regenerate"), 404)
        api_error(c.delete(f"/organization/{theirs}/robots/pusher"), 404)
        # Nor through the user's own robots.
        api_error(c.post("/user/robots/pusher/regenerate"), 404)
    assert login_status(registry, victim["name"], victim["token"]) == 200
    with admin_api(registry) as c:
        assert ok(c.get(f"/organization/{theirs}/robots/pusher"))["name"] == victim["name"]


def test_robot_push_and_pull_follow_its_grants(registry: RegistryProcess) -> None:
    org = new_org(registry, "rbpp")
    repo = new_repo(registry, org, "team/app")  # three components
    with registry.client() as su:
        status, _ = try_push(su, repo)
        assert status == 201
    with admin_api(registry) as c:
        robot = ok(c.put(f"/organization/{org}/robots/ci"), 201)
    creds = (robot["name"], robot["token"])

    # No grant: authenticated but denied (Basic), and the token flow grants nothing.
    with v2(registry, creds) as c:
        assert pull_status(c, repo) == 403
        assert try_push(c, repo, "v2")[0] == 403
    token, access = token_for(registry, creds, repo, "pull,push")
    assert granted(access, repo) == set()
    with bearer_registry(registry, token) as c:
        assert pull_status(c, repo) == 401

    grant(registry, repo, robot["name"], "read")
    with v2(registry, creds) as c:
        assert pull_status(c, repo) == 200
        assert try_push(c, repo, "v2")[0] == 403
    token, access = token_for(registry, creds, repo, "pull,push")
    assert granted(access, repo) == {"pull"}
    with bearer_registry(registry, token) as c:
        assert pull_status(c, repo) == 200
        assert try_push(c, repo, "v2")[0] == 401

    grant(registry, repo, robot["name"], "write")
    with v2(registry, creds) as c:
        assert try_push(c, repo, "v2")[0] == 201
    token, access = token_for(registry, creds, repo, "pull,push")
    assert granted(access, repo) == {"pull", "push"}
    with bearer_registry(registry, token) as c:
        assert try_push(c, repo, "v3")[0] == 201
        assert pull_status(c, repo, "v3") == 200

    with admin_api(registry) as c:
        perms = ok(c.get(f"/organization/{org}/robots/ci/permissions"))["permissions"]
    assert perms == [
        {
            "repository": {
                "namespace": org,
                "name": "team/app",
                "full_name": repo,
                "is_public": False,
            },
            "role": "write",
        }
    ]


def test_deleting_a_robot_removes_its_grants_and_memberships(registry: RegistryProcess) -> None:
    org = new_org(registry, "rbdel")
    repo = new_repo(registry, org)
    with admin_api(registry) as c:
        robot = ok(c.put(f"/organization/{org}/robots/gone"), 201)
    add_team(registry, org, "bots", "member", robot["name"])
    grant(registry, repo, robot["name"], "write")
    with admin_api(registry) as c:
        delegate = {"name": robot["name"], "kind": "robot"}
        ok(c.post(f"/organization/{org}/prototypes", json={"role": "read", "delegate": delegate}))
    with v2(registry, (robot["name"], robot["token"])) as c:
        assert try_push(c, repo)[0] == 201
    with admin_api(registry) as c:
        assert c.delete(f"/organization/{org}/robots/gone").status_code == 204
        users = ok(c.get(f"/repository/{repo}/permissions/user/"))["permissions"]
        assert robot["name"] not in users
        members = ok(c.get(f"/organization/{org}/team/bots/members"))
        assert robot["name"] not in str(members)
        assert ok(c.get(f"/organization/{org}/prototypes"))["prototypes"] == []
        # A new robot of the same name starts with nothing.
        again = ok(c.put(f"/organization/{org}/robots/gone"), 201)
    with v2(registry, (again["name"], again["token"])) as c:
        assert pull_status(c, repo) == 403
    with v2(registry, (robot["name"], robot["token"])) as c:
        assert c.get("/v2/").status_code == 401


def test_robot_names_are_per_namespace(registry: RegistryProcess) -> None:
    a, b = new_org(registry, "rbna"), new_org(registry, "rbnb")
    shortname = unique_name("x")
    with admin_api(registry) as c:
        ra = ok(c.put(f"/organization/{a}/robots/{shortname}"), 201)
        rb = ok(c.put(f"/organization/{b}/robots/{shortname}"), 201)
    assert login_status(registry, ra["name"], rb["token"]) == 401
    assert login_status(registry, rb["name"], ra["token"]) == 401
    assert login_status(registry, ra["name"], ra["token"]) == 200
