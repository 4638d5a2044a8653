"""Teams over /api/v1 and what their roles give on /v2: member nothing by itself,
creator new repositories, admin every repository of the organization. Objects of one
organization are never reached or changed through another's URLs."""

from __future__ import annotations

import pytest

from tests.api_v1.org_helpers import (
    Person,
    add_member,
    add_robot,
    api,
    new_org,
    new_robot,
    people,
    pull,
    push,
    put_team,
    repo_grants,
    user_id,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def cast(any_registry: RegistryProcess) -> list[Person]:
    return people(any_registry, 4)


def test_team_lifecycle(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, member = cast[0], cast[1]
    org = new_org(any_registry, owner)
    robot = add_robot(any_registry, org)
    base = f"/api/v1/organization/{org}/team/builders"
    mark = last_id(any_registry)
    with api(any_registry, owner) as c:
        r = c.put(base, json={"role": "creator", "description": "CI and release"})
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["new_team"] is True
        assert (view["name"], view["role"], view["description"]) == (
            "builders",
            "creator",
            "CI and release",
        )
        assert view["member_count"] == 0

        r = c.put(base, json={"role": "member"})
        assert r.status_code == 200, r.text
        assert r.json()["new_team"] is False
        assert r.json()["role"] == "member"
        assert r.json()["description"] == "CI and release"  # left as it was

        r = c.put(f"{base}/members/{member.name}")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "name": member.name,
            "kind": "user",
            "is_robot": False,
            "invited": False,
        }
        assert c.put(f"{base}/members/{member.name}").status_code == 200  # idempotent
        r = c.put(f"{base}/members/{robot}")
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "robot" and r.json()["is_robot"] is True

        r = c.get(f"{base}/members")
        assert r.status_code == 200, r.text
        listed = r.json()
        assert listed["name"] == "builders" and listed["can_edit"] is True
        assert {(m["name"], m["kind"]) for m in listed["members"]} == {
            (member.name, "user"),
            (robot, "robot"),
        }
        assert c.get(base).json()["member_count"] == 2

        assert c.delete(f"{base}/members/{member.name}").status_code == 204
        assert c.delete(f"{base}/members/{member.name}").status_code == 404
        assert c.delete(base).status_code == 204
        assert c.get(base).status_code == 404
        assert c.delete(base).status_code == 404

        # Mass assignment and bad values.
        assert c.put(base, json={"role": "owner"}).status_code == 400
        assert c.put(base, json={"role": "member", "name": "x"}).status_code == 400
        assert c.put(f"/api/v1/organization/{org}/team/Bad-Name", json={}).status_code == 400

    server, actor = any_registry, owner.name
    assert_logged(
        server,
        "create_team",
        actor=actor,
        actor_kind="token",
        namespace=org,
        details={"team": "builders", "role": "creator"},
        after=mark,
    )
    assert_logged(
        server,
        "change_team",
        actor=actor,
        actor_kind="token",
        namespace=org,
        details={"team": "builders", "role": "member", "old_role": "creator"},
        after=mark,
    )
    for who in (member.name, robot):
        assert_logged(
            server,
            "add_team_member",
            actor=actor,
            actor_kind="token",
            namespace=org,
            details={"team": "builders", "member": who},
            after=mark,
        )
    assert_logged(
        server,
        "remove_team_member",
        actor=actor,
        actor_kind="token",
        namespace=org,
        details={"team": "builders", "member": member.name},
        after=mark,
    )
    assert_logged(
        server,
        "delete_team",
        actor=actor,
        actor_kind="token",
        namespace=org,
        details={"team": "builders", "role": "member"},
        after=mark,
    )
    # One entry per change, in order: the repeated add and the refusals wrote nothing.
    logged = [
        (e.kind, e.details.get("member")) for e in entries(server, after=mark) if e.namespace == org
    ]
    assert logged == [
        ("create_team", None),
        ("change_team", None),
        ("add_team_member", member.name),
        ("add_team_member", robot),
        ("remove_team_member", member.name),
        ("delete_team", None),
    ]
    [change] = [e for e in entries(server, "change_team", after=mark) if e.namespace == org]
    assert "description" not in change.details  # only the role changed


def test_who_may_be_a_member(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner = cast[0]
    org = new_org(any_registry, owner)
    elsewhere = new_org(any_registry, owner)
    foreign_robot = add_robot(any_registry, elsewhere)
    put_team(any_registry, owner, org, "devs", "member")
    base = f"/api/v1/organization/{org}/team/devs/members"
    with api(any_registry, owner) as c:
        r = c.put(f"{base}/{foreign_robot}")  # a robot of another namespace
        assert r.status_code == 400, r.text
        r = c.put(f"{base}/{owner.name}+bot")  # a user's robot
        assert r.status_code == 400, r.text
        assert c.put(f"{base}/nosuchuser42").status_code == 404
        assert c.put(f"{base}/{org}+nosuchbot").status_code == 404
        assert (
            c.put(f"/api/v1/organization/{org}/team/nosuch/members/{owner.name}").status_code == 404
        )
        members = c.get(f"/api/v1/organization/{org}/team/devs/members").json()["members"]
        assert members == []


def test_an_organization_keeps_an_admin(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, second = cast[0], cast[1]
    org = new_org(any_registry, owner)
    owners = f"/api/v1/organization/{org}/team/owners"
    with api(any_registry, owner) as c:
        assert c.delete(owners).status_code == 409
        assert c.delete(f"{owners}/members/{owner.name}").status_code == 409
        assert c.put(owners, json={"role": "creator"}).status_code == 409
        assert c.get(owners).json()["role"] == "admin"
        # A second admin team with another user: now the first can go.
        assert c.put(f"/api/v1/organization/{org}/team/admins", json={"role": "admin"}).is_success
        assert c.put(f"/api/v1/organization/{org}/team/admins/members/{second.name}").is_success
        assert c.put(owners, json={"role": "member", "description": "was owners"}).is_success
    with api(any_registry, second) as c:
        assert c.get(f"/api/v1/organization/{org}").json()["is_admin"] is True
        r = c.delete(f"/api/v1/organization/{org}/team/admins/members/{second.name}")
        assert r.status_code == 409, r.text
        assert c.delete(f"/api/v1/organization/{org}/team/admins").status_code == 409
    with api(any_registry, owner) as c:  # demoted: a plain member now
        assert c.get(f"/api/v1/organization/{org}").json()["is_admin"] is False
        assert c.delete(f"/api/v1/organization/{org}/team/admins").status_code == 403


def test_members_see_only_their_teams(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, member = cast[0], cast[1]
    org = new_org(any_registry, owner)
    put_team(any_registry, owner, org, "devs", "member")
    put_team(any_registry, owner, org, "ops", "member")
    add_member(any_registry, owner, org, "devs", member.name)
    with api(any_registry, member) as c:
        r = c.get(f"/api/v1/organization/{org}/team/devs")
        assert r.status_code == 200, r.text
        r = c.get(f"/api/v1/organization/{org}/team/devs/members")
        assert r.status_code == 200 and r.json()["can_edit"] is False
        for path in ("ops", "ops/members", "nosuch"):  # hidden like a missing team
            assert c.get(f"/api/v1/organization/{org}/team/{path}").status_code == 404
        # Changes are for admins.
        assert c.put(f"/api/v1/organization/{org}/team/devs", json={}).status_code == 403
        assert c.put(f"/api/v1/organization/{org}/team/new", json={}).status_code == 403
        assert (
            c.put(f"/api/v1/organization/{org}/team/devs/members/{member.name}").status_code == 403
        )
        assert c.delete(f"/api/v1/organization/{org}/team/devs").status_code == 403


def test_objects_of_another_organization_are_out_of_reach(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    a_admin, b_admin, b_member = cast[0], cast[1], cast[2]
    org_a = new_org(any_registry, a_admin)
    org_b = new_org(any_registry, b_admin)
    put_team(any_registry, b_admin, org_b, "bteam", "admin")
    add_member(any_registry, b_admin, org_b, "bteam", b_member.name)
    b_robot = add_robot(any_registry, org_b)
    put_team(any_registry, a_admin, org_a, "ateam", "member")
    with api(any_registry, a_admin) as c:
        a = f"/api/v1/organization/{org_a}"
        assert c.get(f"{a}/team/bteam").status_code == 404
        assert c.get(f"{a}/team/bteam/members").status_code == 404
        assert c.put(f"{a}/team/bteam/members/{a_admin.name}").status_code == 404
        assert c.delete(f"{a}/team/bteam/members/{b_member.name}").status_code == 404
        assert c.delete(f"{a}/team/bteam").status_code == 404
        assert c.put(f"{a}/team/ateam/members/{b_robot}").status_code == 400
        # And org B's URLs are closed to org A's admin.
        b = f"/api/v1/organization/{org_b}"
        assert c.get(f"{b}/team/bteam").status_code == 404
        assert c.delete(f"{b}/team/bteam/members/{b_member.name}").status_code == 404
        assert c.put(f"{b}/team/bteam/members/{a_admin.name}").status_code == 404
    with api(any_registry, b_admin) as c:
        r = c.get(f"/api/v1/organization/{org_b}/team/bteam/members")
        assert {m["name"] for m in r.json()["members"]} == {b_member.name}
        assert c.get(f"/api/v1/organization/{org_b}/team/bteam").json()["role"] == "admin"
        # A team of the same name in org A was created by A, not found through B.
        assert c.get(f"/api/v1/organization/{org_b}/team/ateam").status_code == 404


# -- team roles on /v2 (HTTP Basic) -------------------------------------------------------


def test_team_roles_on_the_registry(registry: RegistryProcess) -> None:
    owner, plain, creator, admin, stranger = people(registry, 5)
    org = new_org(registry, owner)
    other_org = new_org(registry, stranger)
    existing = f"{org}/base"
    assert push(registry, owner.auth, existing) == 201
    for team, role, who in (
        ("readers", "member", plain),
        ("builders", "creator", creator),
        ("admins", "admin", admin),
    ):
        put_team(registry, owner, org, team, role)
        add_member(registry, owner, org, team, who.name)

    # member: nothing by itself.
    assert pull(registry, plain.auth, existing) == 403
    assert push(registry, plain.auth, existing) == 403
    assert push(registry, plain.auth, f"{org}/by-member") == 403

    # creator: new repositories, and admin of what they create; nothing else.
    mine = f"{org}/by-creator"
    assert push(registry, creator.auth, mine) == 201
    assert pull(registry, creator.auth, mine) == 200
    assert ("user", user_id(registry, creator.name), "admin") in repo_grants(registry, mine)
    assert pull(registry, creator.auth, existing) == 403
    assert push(registry, creator.auth, existing) == 403
    assert pull(registry, plain.auth, mine) == 403

    # admin: every repository of the organization.
    assert pull(registry, admin.auth, existing) == 200
    assert push(registry, admin.auth, existing) == 201
    assert pull(registry, admin.auth, mine) == 200
    assert push(registry, admin.auth, f"{org}/by-admin") == 201

    # A user of another organization, and anonymous callers.
    for repository in (existing, mine):
        assert pull(registry, stranger.auth, repository) == 403
        assert push(registry, stranger.auth, repository) == 403
        assert pull(registry, None, repository) == 401
        assert push(registry, None, repository) == 401
    assert push(registry, stranger.auth, f"{org}/intruder") == 403
    assert push(registry, admin.auth, f"{other_org}/intruder") == 403

    # Leaving the team takes the rights away at once.
    with api(registry, owner) as c:
        assert c.delete(f"/api/v1/organization/{org}/team/admins/members/{admin.name}").is_success
        assert c.put(
            f"/api/v1/organization/{org}/team/builders", json={"role": "member"}
        ).is_success
    assert pull(registry, admin.auth, existing) == 403
    assert push(registry, creator.auth, f"{org}/after-demotion") == 403
    assert pull(registry, creator.auth, mine) == 200  # the grant on what they created stays


def test_robots_in_teams_on_the_registry(registry: RegistryProcess) -> None:
    """A robot of the organization in a creator team may push new repositories."""
    [owner] = people(registry, 1)
    org = new_org(registry, owner)
    robot, token = new_robot(registry, org)
    assert push(registry, (robot, token), f"{org}/by-robot") == 403
    put_team(registry, owner, org, "ci", "creator")
    add_member(registry, owner, org, "ci", robot)
    assert push(registry, (robot, token), f"{org}/by-robot") == 201
    assert pull(registry, (robot, token), f"{org}/by-robot") == 200
