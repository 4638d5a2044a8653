"""Default permissions ("prototypes") over /api/v1, and their effect: a repository pushed
into the organization over /v2 starts with the permissions they grant."""

from __future__ import annotations

import pytest

from tests.api_v1.org_helpers import (
    Person,
    add_member,
    add_robot,
    api,
    new_org,
    people,
    pull,
    push,
    put_team,
    repo_grants,
    robot_id,
    rows,
    team_id,
    user_id,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def cast(any_registry: RegistryProcess) -> list[Person]:
    return people(any_registry, 3)


def test_prototype_lifecycle(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, dev, lead = cast
    org = new_org(any_registry, owner)
    robot = add_robot(any_registry, org)
    put_team(any_registry, owner, org, "devs", "member")
    add_member(any_registry, owner, org, "devs", dev.name)
    base = f"/api/v1/organization/{org}/prototypes"
    mark = last_id(any_registry)
    with api(any_registry, owner) as c:
        r = c.post(base, json={"role": "read", "delegate": {"name": "devs", "kind": "team"}})
        assert r.status_code == 200, r.text
        team_proto = r.json()
        assert team_proto["role"] == "read"
        assert team_proto["delegate"] == {"name": "devs", "kind": "team"}
        assert team_proto["activating_user"] is None

        r = c.post(
            base,
            json={
                "role": "write",
                "delegate": {"name": dev.name, "kind": "user"},
                "activating_user": {"name": lead.name},
            },
        )
        assert r.status_code == 200, r.text
        user_proto = r.json()
        assert user_proto["delegate"]["name"] == dev.name
        assert user_proto["delegate"]["is_org_member"] is True
        assert user_proto["activating_user"]["name"] == lead.name
        assert user_proto["activating_user"]["is_org_member"] is False

        # Quay names robots as users: both spellings are the robot.
        r = c.post(base, json={"role": "admin", "delegate": {"name": robot, "kind": "user"}})
        assert r.status_code == 200, r.text
        robot_proto = r.json()
        assert robot_proto["delegate"]["kind"] == "robot"
        r = c.post(base, json={"role": "read", "delegate": {"name": robot, "kind": "robot"}})
        assert r.status_code == 409, r.text  # the same delegate for the same creators

        r = c.get(base)
        assert r.status_code == 200, r.text
        ids = [p["id"] for p in r.json()["prototypes"]]
        assert ids == [team_proto["id"], user_proto["id"], robot_proto["id"]]
        assert c.get(f"{base}/{user_proto['id']}").json() == user_proto

        r = c.put(f"{base}/{user_proto['id']}", json={"role": "admin"})
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "admin"
        assert r.json()["activating_user"]["name"] == lead.name  # unchanged
        r = c.put(
            f"{base}/{user_proto['id']}",
            json={"activating_user": None, "delegate": {"name": "devs", "kind": "team"}},
        )
        assert r.status_code == 409, r.text  # would duplicate the team prototype
        r = c.put(
            f"{base}/{team_proto['id']}",
            json={"delegate": {"name": lead.name, "kind": "user"}, "activating_user": None},
        )
        assert r.status_code == 200, r.text
        assert r.json()["delegate"]["name"] == lead.name and r.json()["role"] == "read"

        assert c.delete(f"{base}/{robot_proto['id']}").status_code == 204
        assert c.get(f"{base}/{robot_proto['id']}").status_code == 404
        assert c.delete(f"{base}/{robot_proto['id']}").status_code == 404
        assert c.put(f"{base}/{robot_proto['id']}", json={"role": "read"}).status_code == 404
        assert len(c.get(base).json()["prototypes"]) == 2

    server = any_registry
    for proto, role, kind, delegate, activating in (
        (team_proto, "read", "team", "devs", None),
        (user_proto, "write", "user", dev.name, lead.name),
        (robot_proto, "admin", "robot", robot, None),
    ):
        assert_logged(
            server,
            "create_prototype",
            actor=owner.name,
            actor_kind="token",
            namespace=org,
            details={
                "prototypeid": proto["id"],
                "role": role,
                "delegate_kind": kind,
                "delegate": delegate,
                "activating_user": activating,
            },
            after=mark,
        )
    assert_logged(
        server,
        "change_prototype",
        actor=owner.name,
        actor_kind="token",
        namespace=org,
        details={
            "prototypeid": user_proto["id"],
            "role": "admin",
            "original_role": "write",
            "delegate_kind": "user",
            "delegate": dev.name,
            "activating_user": lead.name,
        },
        after=mark,
    )
    assert_logged(
        server,
        "change_prototype",
        actor=owner.name,
        actor_kind="token",
        namespace=org,
        details={
            "prototypeid": team_proto["id"],
            "role": "read",
            "original_role": "read",
            "delegate_kind": "user",
            "delegate": lead.name,
            "activating_user": None,
        },
        after=mark,
    )
    assert_logged(
        server,
        "delete_prototype",
        actor=owner.name,
        actor_kind="token",
        namespace=org,
        details={
            "prototypeid": robot_proto["id"],
            "role": "admin",
            "delegate_kind": "robot",
            "delegate": robot,
            "activating_user": None,
        },
        after=mark,
    )
    # One entry per change, in order; the refused ones (409, 404) wrote nothing.
    logged = [
        (e.kind, e.details["prototypeid"])
        for e in entries(server, after=mark)
        if e.namespace == org and e.kind.endswith("_prototype")
    ]
    assert logged == [
        ("create_prototype", team_proto["id"]),
        ("create_prototype", user_proto["id"]),
        ("create_prototype", robot_proto["id"]),
        ("change_prototype", user_proto["id"]),
        ("change_prototype", team_proto["id"]),
        ("delete_prototype", robot_proto["id"]),
    ]


def test_delegates_must_exist_and_belong_here(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    owner, dev, _ = cast
    org = new_org(any_registry, owner)
    other = new_org(any_registry, owner)
    put_team(any_registry, owner, other, "elsewhere", "member")
    foreign_robot = add_robot(any_registry, other)
    base = f"/api/v1/organization/{org}/prototypes"

    def create(body: dict[str, object]) -> int:
        with api(any_registry, owner) as c:
            return c.post(base, json=body).status_code

    team = {"name": "owners", "kind": "team"}
    assert create({"role": "read", "delegate": {"name": "nosuchuser9", "kind": "user"}}) == 400
    assert create({"role": "read", "delegate": {"name": "elsewhere", "kind": "team"}}) == 400
    assert create({"role": "read", "delegate": {"name": foreign_robot, "kind": "robot"}}) == 400
    assert create({"role": "read", "delegate": {"name": foreign_robot, "kind": "user"}}) == 400
    assert create({"role": "read", "delegate": {"name": f"{org}+nobot", "kind": "robot"}}) == 400
    assert create({"role": "read", "delegate": {"name": dev.name, "kind": "robot"}}) == 400
    assert create({"role": "read", "delegate": team, "activating_user": {"name": "nosuch9"}}) == 400
    robot = add_robot(any_registry, org)
    assert create({"role": "read", "delegate": team, "activating_user": {"name": robot}}) == 400
    # Mass assignment and bad values.
    assert create({"role": "owner", "delegate": team}) == 400
    assert create({"role": "read", "delegate": {**team, "id": 1}}) == 400
    assert create({"role": "read", "delegate": team, "id": "chosen-by-me"}) == 400
    assert create({"role": "read", "delegate": team, "org_id": 1}) == 400
    assert create({"role": "read"}) == 400
    with api(any_registry, owner) as c:
        assert c.get(base).json()["prototypes"] == []


def test_prototypes_are_for_admins(any_registry: RegistryProcess, cast: list[Person]) -> None:
    owner, member, outsider = cast
    org = new_org(any_registry, owner)
    put_team(any_registry, owner, org, "builders", "creator")
    add_member(any_registry, owner, org, "builders", member.name)
    base = f"/api/v1/organization/{org}/prototypes"
    body = {"role": "read", "delegate": {"name": "builders", "kind": "team"}}
    with api(any_registry, owner) as c:
        proto = c.post(base, json=body).json()["id"]
    for who, status in ((member, 403), (outsider, 404)):
        with api(any_registry, who) as c:
            assert c.get(base).status_code == status
            assert c.post(base, json=body).status_code == status
            assert c.get(f"{base}/{proto}").status_code == status
            assert c.put(f"{base}/{proto}", json={"role": "admin"}).status_code == status
            assert c.delete(f"{base}/{proto}").status_code == status
    with api(any_registry, None) as c:
        assert c.get(base).status_code == 401
    with api(any_registry, owner) as c:
        assert c.get(f"{base}/{proto}").json()["role"] == "read"


def test_prototype_ids_of_another_organization(
    any_registry: RegistryProcess, cast: list[Person]
) -> None:
    a_admin, b_admin, _ = cast
    org_a = new_org(any_registry, a_admin)
    org_b = new_org(any_registry, b_admin)
    body = {"role": "read", "delegate": {"name": "owners", "kind": "team"}}
    with api(any_registry, b_admin) as c:
        b_proto = c.post(f"/api/v1/organization/{org_b}/prototypes", json=body).json()["id"]
    with api(any_registry, a_admin) as c:
        a = f"/api/v1/organization/{org_a}/prototypes/{b_proto}"
        assert c.get(a).status_code == 404
        assert c.put(a, json={"role": "admin"}).status_code == 404
        assert c.delete(a).status_code == 404
        assert c.get(f"/api/v1/organization/{org_b}/prototypes/{b_proto}").status_code == 404
    with api(any_registry, b_admin) as c:
        r = c.get(f"/api/v1/organization/{org_b}/prototypes/{b_proto}")
        assert r.status_code == 200 and r.json()["role"] == "read"
    left = rows(any_registry, "SELECT role FROM default_permission WHERE uuid = :u", u=b_proto)
    assert left == [("read",)]


def test_default_permissions_apply_when_a_repository_is_pushed(
    registry: RegistryProcess,
) -> None:
    owner, pusher, reader, writer, bystander = people(registry, 5)
    org = new_org(registry, owner)
    robot = add_robot(registry, org)
    put_team(registry, owner, org, "builders", "creator")
    add_member(registry, owner, org, "builders", pusher.name)
    put_team(registry, owner, org, "qa", "member")
    add_member(registry, owner, org, "qa", reader.name)
    base = f"/api/v1/organization/{org}/prototypes"
    with api(registry, owner) as c:
        for body in (
            # anyone creates: the qa team reads
            {"role": "read", "delegate": {"name": "qa", "kind": "team"}},
            # the pusher creates: writer writes
            {
                "role": "write",
                "delegate": {"name": writer.name, "kind": "user"},
                "activating_user": {"name": pusher.name},
            },
            # someone else creates: the robot would administer (not applied here)
            {
                "role": "admin",
                "delegate": {"name": robot, "kind": "robot"},
                "activating_user": {"name": bystander.name},
            },
        ):
            r = c.post(base, json=body)
            assert r.status_code == 200, r.text

    repository = f"{org}/fresh"
    assert pull(registry, reader.auth, repository) == 403  # not there yet
    assert push(registry, pusher.auth, repository) == 201
    assert repo_grants(registry, repository) == {
        ("team", team_id(registry, org, "qa"), "read"),
        ("user", user_id(registry, writer.name), "write"),
        ("user", user_id(registry, pusher.name), "admin"),  # the creator's own grant
    }
    assert ("robot", robot_id(registry, robot), "admin") not in repo_grants(registry, repository)
    # And the grants work on /v2.
    assert pull(registry, reader.auth, repository) == 200
    assert push(registry, reader.auth, repository) == 403
    assert push(registry, writer.auth, repository) == 201
    assert pull(registry, bystander.auth, repository) == 403
