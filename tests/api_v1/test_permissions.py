"""Repository permissions over /api/v1: grants to users, robots and teams take effect on
/v2 at once; who may grant what (SECURITY.md 1.2: no grants across tenants)."""

from __future__ import annotations

import pytest

from tests.api_v1.access_helpers import (
    Person,
    add_team,
    admin_api,
    api,
    api_error,
    grant,
    new_org,
    new_repo,
    ok,
    person,
    pull_status,
    try_push,
    v2,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def alice(registry: RegistryProcess) -> Person:
    return person(registry, "pmal")


@pytest.fixture(scope="module")
def bob(registry: RegistryProcess) -> Person:
    return person(registry, "pmbob")


def test_grants_take_effect_on_the_registry_at_once(any_registry: RegistryProcess) -> None:
    server = any_registry
    org = new_org(server, "pmnow")
    repo = new_repo(server, org, "team/app")
    user = person(server, "pmnow")
    with server.client() as su:
        status, image = try_push(su, repo, "base")
        assert status == 201 and image is not None
    with v2(server, user.auth) as c:
        assert pull_status(c, repo, "base") == 403

        grant(server, repo, user.name, "read")
        assert pull_status(c, repo, "base") == 200
        assert try_push(c, repo, "mine")[0] == 403

        grant(server, repo, user.name, "write")
        status, pushed = try_push(c, repo, "mine")
        assert status == 201 and pushed is not None

        grant(server, repo, user.name, "admin")
        deleted = c.delete(f"/v2/{repo}/manifests/{pushed.digest}")
        assert deleted.status_code == 202, deleted.text

        with admin_api(server) as a:
            assert a.delete(f"/repository/{repo}/permissions/user/{user.name}").status_code == 204
        assert pull_status(c, repo, "base") == 403
        assert try_push(c, repo, "again")[0] == 403


def test_listing_and_reading_grants(registry: RegistryProcess, alice: Person) -> None:
    org = new_org(registry, "pmlist")
    repo = new_repo(registry, org, "web/frontend")
    add_team(registry, org, "readers", "member", alice.name)
    add_team(registry, org, "qa", "member")
    mark = last_id(registry)
    with admin_api(registry) as c:
        robot = ok(c.put(f"/organization/{org}/robots/deploy"), 201)["name"]
        base = f"/repository/{repo}/permissions"
        answer = ok(c.put(f"{base}/user/{alice.name}", json={"role": "write"}))
        assert answer == {
            "name": alice.name,
            "role": "write",
            "is_robot": False,
            "is_org_member": True,
        }
        ok(c.put(f"{base}/user/{robot}", json={"role": "read"}))
        assert ok(c.put(f"{base}/team/qa", json={"role": "admin"})) == {
            "name": "qa",
            "role": "admin",
        }

        users = ok(c.get(f"{base}/user/"))["permissions"]
        assert users == {
            alice.name: {
                "name": alice.name,
                "role": "write",
                "is_robot": False,
                "is_org_member": True,
            },
            robot: {"name": robot, "role": "read", "is_robot": True, "is_org_member": True},
        }
        assert ok(c.get(f"{base}/user"))["permissions"] == users  # without the slash too
        assert ok(c.get(f"{base}/team/"))["permissions"] == {"qa": {"name": "qa", "role": "admin"}}
        assert ok(c.get(f"{base}/user/{robot}"))["role"] == "read"
        assert ok(c.get(f"{base}/team/qa"))["role"] == "admin"
        api_error(c.get(f"{base}/team/readers"), 404)  # a team without a grant
        api_error(c.get(f"{base}/team/nosuchteam"), 404)
        api_error(c.get(f"{base}/user/nosuchuser"), 404)

        # Changing a role replaces it.
        ok(c.put(f"{base}/user/{robot}", json={"role": "write"}))
        assert ok(c.get(f"{base}/user/{robot}"))["role"] == "write"

        assert c.delete(f"{base}/team/qa").status_code == 204
        api_error(c.delete(f"{base}/team/qa"), 404)
        assert ok(c.get(f"{base}/team/"))["permissions"] == {}

    grants: tuple[dict[str, str], ...] = (
        {"user": alice.name, "role": "write"},
        {"robot": robot, "role": "read"},
        {"team": "qa", "role": "admin"},
        {"robot": robot, "role": "write"},
    )
    for details in grants:
        assert_logged(
            registry,
            "change_repo_permission",
            actor="admin",
            actor_kind="token",
            namespace=org,
            repository=repo,
            details=details,
            after=mark,
        )
    assert_logged(
        registry,
        "delete_repo_permission",
        actor="admin",
        actor_kind="token",
        namespace=org,
        repository=repo,
        details={"team": "qa"},
        after=mark,
    )
    # One entry per change, in order; the second delete (404) wrote nothing.
    logged = [
        (e.kind, {k: v for k, v in e.details.items() if k in ("user", "robot", "team", "role")})
        for e in entries(registry, after=mark)
        if e.repository == repo
    ]
    assert logged == [("change_repo_permission", d) for d in grants] + [
        ("delete_repo_permission", {"team": "qa"})
    ]


def test_team_grants_reach_the_members(registry: RegistryProcess, alice: Person) -> None:
    org = new_org(registry, "pmteam")
    repo = new_repo(registry, org, "svc/api")
    add_team(registry, org, "builders", "member", alice.name)
    with v2(registry, alice.auth) as c:
        assert try_push(c, repo)[0] == 403
        grant(registry, repo, "builders", "write", team=True)
        assert try_push(c, repo)[0] == 201
        with admin_api(registry) as a:
            assert a.delete(f"/repository/{repo}/permissions/team/builders").status_code == 204
        assert pull_status(c, repo) == 403


def test_robots_of_another_namespace_cannot_be_granted(
    registry: RegistryProcess, alice: Person
) -> None:
    """Quay's rule, and SECURITY.md 1.2: an admin of A cannot hand A's repository to B's
    robot (nor learn whether B has such a robot)."""
    mine, theirs = new_org(registry, "pmmine"), new_org(registry, "pmtheirs")
    repo = new_repo(registry, mine)
    add_team(registry, mine, "owners", "admin", alice.name)
    with admin_api(registry) as c:
        robot = ok(c.put(f"/organization/{theirs}/robots/spy"), 201)
    with api(registry, alice.token) as c:
        base = f"/repository/{repo}/permissions/user"
        exists = api_error(c.put(f"{base}/{robot['name']}", json={"role": "read"}), 400)
        missing = api_error(c.put(f"{base}/{theirs}+nosuchbot", json={"role": "read"}), 400)
        assert exists == missing
        api_error(c.put(f"{base}/{mine}+nosuchbot", json={"role": "read"}), 404)
        assert ok(c.get(f"{base}/"))["permissions"] == {}
        # Teams are looked up in the repository's organization only.
    add_team(registry, theirs, "outsiders", "member")
    with api(registry, alice.token) as c:
        base = f"/repository/{repo}/permissions/team"
        api_error(c.put(f"{base}/outsiders", json={"role": "read"}), 404)
    with v2(registry, (robot["name"], robot["token"])) as c:
        assert pull_status(c, repo) == 403


def test_user_namespaces_have_no_teams_and_owners_are_always_admin(
    registry: RegistryProcess, alice: Person, bob: Person
) -> None:
    with api(registry, alice.token) as c:
        ok(c.post("/repository", json={"namespace": alice.name, "repository": "own"}), 201)
        base = f"/repository/{alice.name}/own/permissions"
        api_error(c.put(f"{base}/team/owners", json={"role": "read"}), 400)
        api_error(c.put(f"{base}/user/{alice.name}", json={"role": "read"}), 400)
        ok(c.put(f"{base}/user/{bob.name}", json={"role": "read"}))
        assert ok(c.get(f"{base}/user/{bob.name}"))["is_org_member"] is False
        # The user's own robots may be granted.
        robot = ok(c.put("/user/robots/mybot"), 201)
        ok(c.put(f"{base}/user/{robot['name']}", json={"role": "write"}))
    with v2(registry, (robot["name"], robot["token"])) as c:
        assert try_push(c, f"{alice.name}/own")[0] == 201
    with v2(registry, bob.auth) as c:
        assert pull_status(c, f"{alice.name}/own") == 200


def test_only_repository_admins_manage_grants(
    registry: RegistryProcess, alice: Person, bob: Person
) -> None:
    org = new_org(registry, "pmwho")
    repo = new_repo(registry, org)
    grant(registry, repo, alice.name, "write")
    base = f"/repository/{repo}/permissions/user"
    with api(registry, alice.token) as c:  # can read the repository, is not its admin
        api_error(c.get(f"{base}/"), 403)
        api_error(c.put(f"{base}/{alice.name}", json={"role": "admin"}), 403)
        api_error(c.delete(f"{base}/{alice.name}"), 403)
    with api(registry, bob.token) as c:  # cannot see it at all
        api_error(c.get(f"{base}/"), 404)
        api_error(c.put(f"{base}/{bob.name}", json={"role": "admin"}), 404)
    with api(registry) as c:
        api_error(c.get(f"{base}/"), 401)
        api_error(c.put(f"{base}/{bob.name}", json={"role": "admin"}), 401)
    with admin_api(registry) as c:
        assert ok(c.get(f"{base}/{alice.name}"))["role"] == "write"
        api_error(c.get(f"/repository/{org}/nosuchrepo/permissions/user/"), 404)
    grant(registry, repo, alice.name, "admin")
    with api(registry, alice.token) as c:  # now an admin of it (only of it)
        ok(c.put(f"{base}/{bob.name}", json={"role": "read"}))
        api_error(c.get(f"/organization/{org}/robots"), 404)


def test_grant_bodies_are_validated(registry: RegistryProcess, alice: Person) -> None:
    org = new_org(registry, "pmbody")
    repo = new_repo(registry, org)
    base = f"/repository/{repo}/permissions/user/{alice.name}"
    with admin_api(registry) as c:
        api_error(c.put(base, json={"role": "owner"}), 400)
        api_error(c.put(base, json={}), 400)
        api_error(c.put(base, json={"role": "read", "repository_id": 1}), 400)
        api_error(
            c.put(base, content=b"not json", headers={"Content-Type": "application/json"}), 400
        )
        api_error(c.get(base), 404)
