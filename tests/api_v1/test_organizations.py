"""Organizations over /api/v1: creation (the owners team), who sees what, changes,
deletion and the member list; names of private organizations do not leak."""

from __future__ import annotations

import pytest

from tests.api_v1.org_helpers import (
    Person,
    add_member,
    add_robot,
    api,
    new_org,
    org_id,
    people,
    push,
    put_team,
    rows,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.identity import unique_name
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def cast(any_registry: RegistryProcess) -> list[Person]:
    return people(any_registry, 4)


def test_creating_an_organization_makes_the_creator_its_owner(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    owner = cast[0]
    name = unique_name("org")
    mark = last_id(any_registry)
    with api(any_registry, owner) as c:
        r = c.post("/api/v1/organization/", json={"name": name, "email": "ops@example.com"})
        assert r.status_code == 201, r.text
        view = r.json()
        assert view["name"] == name
        assert view["is_admin"] is True and view["is_member"] is True
        assert view["email"] == "ops@example.com"
        assert view["ordered_teams"] == ["owners"]
        owners = view["teams"]["owners"]
        assert owners["role"] == "admin" and owners["member_count"] == 1

        r = c.get(f"/api/v1/organization/{name}/members")
        assert r.status_code == 200, r.text
        assert r.json()["members"] == [
            {"name": owner.name, "kind": "user", "teams": [{"name": "owners"}], "repositories": []}
        ]
    kinds = rows(any_registry, "SELECT kind FROM namespace WHERE name = :n", n=name)
    assert kinds == [("org",)]
    created = assert_logged(
        any_registry,
        "create_org",
        actor=owner.name,
        actor_kind="token",
        namespace=name,
        details={"email": "ops@example.com", "owners_team": "owners"},
        after=mark,
    )
    created_here = entries(any_registry, "create_org", after=mark)
    assert [e.id for e in created_here if e.namespace == name] == [created.id]


def test_bad_and_taken_names_are_refused(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, other = cast[0], cast[1]
    existing = new_org(any_registry, owner)
    with api(any_registry, owner) as c:
        for bad in ("Upper", "a", "has space", "x/y", "robot+name", "-dash", "a" * 256):
            r = c.post("/api/v1/organization/", json={"name": bad})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error_type"] == "invalid_request"
        # The namespace space is shared: a user's name and an organization's are taken.
        for taken in (other.name, existing, "admin"):
            r = c.post("/api/v1/organization/", json={"name": taken})
            assert r.status_code == 400, (taken, r.text)
            assert "already exists" in r.json()["error_message"]
        # Mass assignment: only name and email may be set.
        fresh = unique_name("org")
        r = c.post("/api/v1/organization/", json={"name": fresh, "kind": "user"})
        assert r.status_code == 400, r.text
        r = c.post("/api/v1/organization/", json={"name": fresh, "email": "not an address"})
        assert r.status_code == 400, r.text
        assert c.get(f"/api/v1/organization/{fresh}").status_code == 404
    with api(any_registry, None) as anonymous:
        r = anonymous.post("/api/v1/organization/", json={"name": unique_name("org")})
        assert r.status_code == 401, r.text


def test_members_see_their_teams_outsiders_see_nothing(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    owner, member, outsider = cast[0], cast[1], cast[2]
    org = new_org(any_registry, owner)
    put_team(any_registry, owner, org, "devs", "member")
    put_team(any_registry, owner, org, "secret", "member")
    add_member(any_registry, owner, org, "devs", member.name)
    with api(any_registry, owner) as c:
        assert c.put(f"/api/v1/organization/{org}", json={"email": "o@example.com"}).is_success

    with api(any_registry, member) as c:
        r = c.get(f"/api/v1/organization/{org}")
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["is_admin"] is False and view["is_member"] is True
        assert view["email"] == ""  # the contact address is for admins
        assert view["ordered_teams"] == ["devs"]  # not owners, not secret
        assert set(view["teams"]) == {"devs"}

    # Outsiders and anonymous callers cannot tell a private organization from a missing one.
    missing = unique_name("org")
    with api(any_registry, outsider) as c:
        exists, absent = (
            c.get(f"/api/v1/organization/{org}"),
            c.get(f"/api/v1/organization/{missing}"),
        )
        assert exists.status_code == absent.status_code == 404
        assert exists.json() == absent.json()
        assert org not in exists.text
        for path in ("/members", "/team/devs", "/team/devs/members", "/prototypes"):
            assert c.get(f"/api/v1/organization/{org}{path}").status_code == 404, path
        # A user's own namespace is not an organization.
        assert c.get(f"/api/v1/organization/{outsider.name}").status_code == 404
    with api(any_registry, None) as anonymous:
        assert anonymous.get(f"/api/v1/organization/{org}").status_code == 401
        assert anonymous.get(f"/api/v1/organization/{missing}").status_code == 401


def test_private_repositories_do_not_leak_through_the_organization(
    registry: RegistryProcess,
) -> None:
    owner, member, outsider = people(registry, 3)
    org = new_org(registry, owner)
    repository = f"{org}/hidden-app"
    assert push(registry, owner.auth, repository) == 201
    put_team(registry, owner, org, "readers", "member")
    add_member(registry, owner, org, "readers", member.name)
    for who in (owner, member, outsider):
        with api(registry, who) as c:
            r = c.get(f"/api/v1/organization/{org}")
            assert "hidden-app" not in r.text
            if who is outsider:
                assert r.status_code == 404
    with api(registry, owner) as c:
        r = c.delete(f"/api/v1/organization/{org}")
        assert r.status_code == 409, r.text
        assert "repositories" in r.json()["error_message"]
        assert c.get(f"/api/v1/organization/{org}").status_code == 200


def test_changing_an_organization(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, member, outsider = cast[0], cast[1], cast[2]
    org = new_org(any_registry, owner)
    put_team(any_registry, owner, org, "devs", "creator")
    add_member(any_registry, owner, org, "devs", member.name)
    mark = last_id(any_registry)
    with api(any_registry, owner) as c:
        r = c.put(f"/api/v1/organization/{org}", json={"email": "team@example.com"})
        assert r.status_code == 200, r.text
        assert r.json()["email"] == "team@example.com"
        # Only the e-mail address may be set.
        for body in ({"name": "renamed"}, {"email": "a@b.c", "is_admin": True}):
            assert c.put(f"/api/v1/organization/{org}", json=body).status_code == 400
        assert c.put(f"/api/v1/organization/{org}", json={"email": "nope"}).status_code == 400
        assert c.get(f"/api/v1/organization/{org}").json()["email"] == "team@example.com"
    with api(any_registry, member) as c:  # a creator is not an admin
        assert c.put(f"/api/v1/organization/{org}", json={"email": "x@y.z"}).status_code == 403
        assert c.get(f"/api/v1/organization/{org}/members").status_code == 403
        assert c.delete(f"/api/v1/organization/{org}").status_code == 403
    with api(any_registry, outsider) as c:
        assert c.put(f"/api/v1/organization/{org}", json={"email": "x@y.z"}).status_code == 404
        assert c.delete(f"/api/v1/organization/{org}").status_code == 404
    changed = assert_logged(
        any_registry,
        "change_org",
        actor=owner.name,
        actor_kind="token",
        namespace=org,
        details={"email": "team@example.com", "old_email": None},
        after=mark,
    )
    # The refused changes wrote nothing.
    changes = entries(any_registry, "change_org", after=mark)
    assert [e.id for e in changes if e.namespace == org] == [changed.id]


def test_member_list(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, a, b = cast[0], cast[1], cast[2]
    org = new_org(any_registry, owner)
    robot = add_robot(any_registry, org)
    put_team(any_registry, owner, org, "devs", "member")
    put_team(any_registry, owner, org, "ops", "creator")
    for team, member in (("devs", a.name), ("ops", a.name), ("ops", b.name), ("devs", robot)):
        add_member(any_registry, owner, org, team, member)
    with api(any_registry, owner) as c:
        r = c.get(f"/api/v1/organization/{org}/members")
    assert r.status_code == 200, r.text
    members = {m["name"]: m for m in r.json()["members"]}
    assert set(members) == {owner.name, a.name, b.name, robot}
    assert sorted(t["name"] for t in members[a.name]["teams"]) == ["devs", "ops"]
    assert members[robot]["kind"] == "robot"
    assert members[robot]["teams"] == [{"name": "devs"}]
    assert members[b.name]["kind"] == "user"


def test_deleting_an_organization_removes_what_hangs_off_it(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    owner, member = cast[0], cast[1]
    org = new_org(any_registry, owner)
    robot = add_robot(any_registry, org)
    put_team(any_registry, owner, org, "devs", "member")
    add_member(any_registry, owner, org, "devs", member.name)
    add_member(any_registry, owner, org, "devs", robot)
    with api(any_registry, owner) as c:
        r = c.post(
            f"/api/v1/organization/{org}/prototypes",
            json={"role": "read", "delegate": {"name": "devs", "kind": "team"}},
        )
        assert r.status_code == 200, r.text
    ns = org_id(any_registry, org)
    teams = [r[0] for r in rows(any_registry, "SELECT id FROM team WHERE org_id = :ns", ns=ns)]
    mark = last_id(any_registry)
    with api(any_registry, member) as c:  # members may not delete it
        assert c.delete(f"/api/v1/organization/{org}").status_code == 403

    with api(any_registry, owner) as c:
        r = c.delete(f"/api/v1/organization/{org}")
        assert r.status_code == 204, r.text
        assert c.get(f"/api/v1/organization/{org}").status_code == 404
        assert c.delete(f"/api/v1/organization/{org}").status_code == 404
    for table, column in (
        ("team", "org_id"),
        ("robot", "namespace_id"),
        ("default_permission", "org_id"),
        ("oauth_application", "org_id"),
    ):
        left = rows(any_registry, f"SELECT COUNT(*) FROM {table} WHERE {column} = :ns", ns=ns)
        assert left == [(0,)], table
    for team in teams:
        left = rows(any_registry, "SELECT COUNT(*) FROM team_member WHERE team_id = :t", t=team)
        assert left == [(0,)]
    assert rows(any_registry, "SELECT COUNT(*) FROM namespace WHERE id = :ns", ns=ns) == [(0,)]
    deleted = assert_logged(
        any_registry, "delete_org", actor=owner.name, actor_kind="token", namespace=org, after=mark
    )
    # Only the owner's delete was recorded (not the refused nor the repeated one).
    assert [e.id for e in entries(any_registry, after=mark) if e.namespace == org] == [deleted.id]
    # The name is free again.
    assert new_org(any_registry, member, org) == org
