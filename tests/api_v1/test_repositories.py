"""Repositories over /api/v1: create, list, describe, visibility, delete; anonymous pulls
of public repositories through the token flow, and no enumeration of private ones."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api_v1.access_helpers import (
    Person,
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


@pytest.fixture(scope="module")
def carol(registry: RegistryProcess) -> Person:
    return person(registry, "rpca")


@pytest.fixture(scope="module")
def dave(registry: RegistryProcess) -> Person:
    return person(registry, "rpda")


def test_create_in_own_namespace(registry: RegistryProcess, carol: Person) -> None:
    name = unique_name("app")
    mark = last_id(registry)
    with api(registry, carol.token) as c:
        created = ok(
            c.post(
                "/repository",
                json={"namespace": carol.name, "repository": name, "description": "my app"},
            ),
            201,
        )
        assert created == {"namespace": carol.name, "name": name, "kind": "image"}
        repo = ok(c.get(f"/repository/{carol.name}/{name}"))
        assert repo == {
            "namespace": carol.name,
            "name": name,
            "kind": "image",
            "description": "my app",
            "is_public": False,  # private unless asked (auth.new_repositories_public)
            "is_organization": False,
            "can_write": True,
            "can_admin": True,
            "size": 0,
            "last_modified": None,  # nothing pushed yet
            "quota_report": {"quota_bytes": 0, "configured_quota": None},
        }
        api_error(c.post("/repository", json={"namespace": carol.name, "repository": name}), 409)
    with v2(registry, carol.auth) as c:
        assert try_push(c, f"{carol.name}/{name}")[0] == 201
    full = f"{carol.name}/{name}"
    logged = assert_logged(
        registry,
        "create_repo",
        actor=carol.name,
        actor_kind="token",
        namespace=carol.name,
        repository=full,
        details={"public": False},
        after=mark,
    )
    # Neither the refused second create nor the push created it again.
    created_here = entries(registry, "create_repo", after=mark)
    assert [e.id for e in created_here if e.repository == full] == [logged.id]


def test_create_needs_the_right_to_create(
    registry: RegistryProcess, carol: Person, dave: Person
) -> None:
    org = new_org(registry, "rpcr")
    add_team(registry, org, "creators", "creator", carol.name)
    add_team(registry, org, "members", "member", dave.name)
    with api(registry, carol.token) as c:
        ok(c.post("/repository", json={"namespace": org, "repository": "team/tool"}), 201)
        # The creator (who has no other right in the organization) administers it.
        repo = ok(c.get(f"/repository/{org}/team/tool"))
        assert repo["can_admin"] is True and repo["is_organization"] is True
        # ...and nothing else there.
        api_error(c.get(f"/organization/{org}/robots"), 403)
    with api(registry, dave.token) as c:
        api_error(c.post("/repository", json={"namespace": org, "repository": "x"}), 403)
        api_error(c.get(f"/repository/{org}/team/tool"), 404)
        # Another user's namespace, an organization one does not belong to, a namespace
        # that does not exist: all the same 404.
        other = new_org(registry, "rpcro")
        for namespace in (carol.name, other, unique_name("nons")):
            body = {"namespace": namespace, "repository": "x"}
            api_error(c.post("/repository", json=body), 404)
    with api(registry) as c:
        api_error(c.post("/repository", json={"namespace": org, "repository": "x"}), 401)
    creator_only = person(registry, "rpcs", scopes=("repo:read",))
    with api(registry, creator_only.token) as c:
        body = {"namespace": creator_only.name, "repository": "x"}
        api_error(c.post("/repository", json=body), 403)  # the token lacks repo:create


def test_superuser_creates_in_a_new_namespace(registry: RegistryProcess) -> None:
    namespace = unique_name("rpsu")
    with admin_api(registry) as c:
        body = {"namespace": namespace, "repository": "a/b", "visibility": "public"}
        ok(c.post("/repository", json=body), 201)
        repo = ok(c.get(f"/repository/{namespace}/a/b"))
        assert repo["is_public"] is True and repo["is_organization"] is True
        assert ok(c.get(f"/organization/{namespace}"))


def test_create_validates_the_body(registry: RegistryProcess, carol: Person) -> None:
    with api(registry, carol.token) as c:
        for body in (
            {"namespace": carol.name, "repository": "Upper"},
            {"namespace": carol.name, "repository": "a//b"},
            {"namespace": carol.name, "repository": ""},
            {"namespace": "x", "repository": "ok"},
            {"namespace": carol.name, "repository": "ok", "visibility": "secret"},
            {"namespace": carol.name, "repository": "ok", "repo_kind": "application"},
            # Mass assignment: no owner, id, or publicity flag by another name.
            {"namespace": carol.name, "repository": "ok", "is_public": True},
            {"namespace": carol.name, "repository": "ok", "namespace_id": 1},
            {"repository": "ok"},
        ):
            api_error(c.post("/repository", json=body), 400)
        api_error(c.get(f"/repository/{carol.name}/ok"), 404)


def test_listing_shows_only_what_the_caller_can_read(
    registry: RegistryProcess, carol: Person, dave: Person
) -> None:
    org = new_org(registry, "rpls")
    public = new_repo(registry, org, "pub", visibility="public", description="open")
    private = new_repo(registry, org, "priv")
    granted_repo = new_repo(registry, org, "shared/one")
    grant(registry, granted_repo, dave.name, "read")

    def names(client: httpx.Client, **params: str) -> list[str]:
        body = ok(client.get("/repository", params=params))
        return [f"{r['namespace']}/{r['name']}" for r in body["repositories"]]

    with api(registry, dave.token) as c:
        assert names(c, namespace=org) == [granted_repo]
        assert names(c, namespace=org, public="true") == [public, granted_repo]
        listed = ok(c.get("/repository", params={"namespace": org, "public": "true"}))
        first = listed["repositories"][0]
        assert first == {
            "namespace": org,
            "name": "pub",
            "kind": "image",
            "description": "open",
            "is_public": True,
            "is_starred": False,
            "size": 0,
            "last_modified": None,
        }
        assert "next_page" not in listed
        api_error(c.get("/repository", params={"namespace": "Not A Name"}), 400)
    with api(registry) as c:  # anonymous: public ones only, with or without `public`
        assert names(c, namespace=org) == [public]
    with api(registry, carol.token) as c:
        assert names(c, namespace=org) == []
    with admin_api(registry) as c:
        assert names(c, namespace=org) == [private, public, granted_repo]
    # A token that may not read repositories sees what anyone sees.
    narrow = person(registry, "rpln", scopes=("user:read",))
    grant(registry, private, narrow.name, "read")
    with api(registry, narrow.token) as c:
        assert names(c, namespace=org) == [public]


def test_listing_pages_by_name(registry: RegistryProcess, carol: Person) -> None:
    org = new_org(registry, "rppg")
    repos = sorted(new_repo(registry, org, f"r{i}") for i in range(5))
    grant(registry, repos[1], carol.name, "read")
    add_team(registry, org, "all", "admin", carol.name)  # now reads every one of them
    seen: list[str] = []
    with api(registry, carol.token) as c:
        params: dict[str, object] = {"namespace": org, "limit": 2}
        pages = 0
        while True:
            body = ok(c.get("/repository", params=params))
            seen += [f"{r['namespace']}/{r['name']}" for r in body["repositories"]]
            pages += 1
            if "next_page" not in body:
                break
            params["next_page"] = body["next_page"]
        assert seen == repos and pages == 3
        tail = ok(c.get("/repository", params={"namespace": org, "last": repos[2]}))
        assert [f"{r['namespace']}/{r['name']}" for r in tail["repositories"]] == repos[3:]
        api_error(c.get("/repository", params={"limit": 0}), 400)
        api_error(c.get("/repository", params={"limit": 101}), 400)
        api_error(c.get("/repository", params={"next_page": "***"}), 400)


def test_description_and_visibility(registry: RegistryProcess, carol: Person) -> None:
    org = new_org(registry, "rpvis")
    repo = new_repo(registry, org, "team/site")
    with registry.client() as su:
        assert try_push(su, repo, "latest")[0] == 201
    grant(registry, repo, carol.name, "write")
    mark = last_id(registry)
    with api(registry, carol.token) as c:  # a writer is not an admin
        info = ok(c.get(f"/repository/{repo}"))
        assert info["can_write"] is True and info["can_admin"] is False
        api_error(c.put(f"/repository/{repo}", json={"description": "mine now"}), 403)
        api_error(
            c.post(f"/repository/{repo}/changevisibility", json={"visibility": "public"}), 403
        )
        api_error(c.delete(f"/repository/{repo}"), 403)
    with admin_api(registry) as c:
        assert ok(c.put(f"/repository/{repo}", json={"description": "the site"})) == {
            "success": True
        }
        api_error(c.put(f"/repository/{repo}", json={"description": "x", "public": True}), 400)
        assert ok(c.get(f"/repository/{repo}"))["description"] == "the site"

        # Private: anonymous pulls fail; the same for a repository that does not exist.
        with v2(registry, None) as anonymous:
            assert pull_status(anonymous, repo, "latest") == 401
        ok(c.post(f"/repository/{repo}/changevisibility", json={"visibility": "public"}))
        assert ok(c.get(f"/repository/{repo}"))["is_public"] is True
        with api(registry) as anonymous_api:
            assert ok(anonymous_api.get(f"/repository/{repo}"))["can_write"] is False
        # Public: the token flow without credentials grants pull, and the pull works.
        token, access = token_for(registry, None, repo, "pull,push")
        assert granted(access, repo) == {"pull"}
        with bearer_registry(registry, token) as anonymous:
            assert pull_status(anonymous, repo, "latest") == 200
            assert try_push(anonymous, repo, "vandal")[0] == 401
        with v2(registry, None) as anonymous:
            assert pull_status(anonymous, repo, "latest") == 200

        ok(c.post(f"/repository/{repo}/changevisibility", json={"visibility": "private"}))
        with v2(registry, None) as anonymous:
            assert pull_status(anonymous, repo, "latest") == 401
        api_error(c.post(f"/repository/{repo}/changevisibility", json={"visibility": "x"}), 400)

    admin: dict[str, Any] = {
        "actor": "admin",
        "actor_kind": "token",
        "namespace": org,
        "repository": repo,
    }
    assert_logged(registry, "change_repo_description", **admin, after=mark)
    assert_logged(
        registry,
        "change_repo_visibility",
        **admin,
        details={"public": True, "was_public": False},
        after=mark,
    )
    assert_logged(
        registry,
        "change_repo_visibility",
        **admin,
        details={"public": False, "was_public": True},
        after=mark,
    )
    # One entry per change, in order: the refused and invalid calls wrote nothing.
    kinds = ("change_repo_description", "change_repo_visibility")
    logged = [
        (e.kind, e.details.get("public"))
        for e in entries(registry, after=mark)
        if e.repository == repo and e.kind in kinds
    ]
    assert logged == [
        ("change_repo_description", None),
        ("change_repo_visibility", True),
        ("change_repo_visibility", False),
    ]


def test_private_repositories_are_not_enumerable(registry: RegistryProcess) -> None:
    org = new_org(registry, "rpenum")
    private = new_repo(registry, org, "secret")
    with registry.client() as su:
        assert try_push(su, private, "v1")[0] == 201
    missing = f"{org}/nothing-here"
    answers = []
    for repo in (private, missing):
        token, access = token_for(registry, None, repo)
        assert granted(access, repo) == set()
        with bearer_registry(registry, token) as c:
            r = c.get(f"/v2/{repo}/manifests/v1")
        answers.append(
            (r.status_code, r.json(), r.headers.get("WWW-Authenticate", "").replace(repo, ""))
        )
    assert answers[0] == answers[1]
    assert answers[0][0] == 401
    with api(registry) as c:
        assert api_error(c.get(f"/repository/{private}"), 401) == api_error(
            c.get(f"/repository/{missing}"), 401
        )


def test_delete_takes_the_content_along(registry: RegistryProcess, carol: Person) -> None:
    org = new_org(registry, "rpdel")
    repo = new_repo(registry, org, "team/app")
    grant(registry, repo, carol.name, "write")
    with registry.client() as su:
        status, image = try_push(su, repo, "v1")
        assert status == 201 and image is not None
    mark = last_id(registry)
    with admin_api(registry) as c:
        # At once, content and all (the garbage collector purges it afterwards).
        assert c.delete(f"/repository/{repo}").status_code == 204
        with registry.client() as su:
            assert pull_status(su, repo, "v1") == 404
            assert su.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 404
        api_error(c.get(f"/repository/{repo}"), 404)
        api_error(c.delete(f"/repository/{repo}"), 404)
        api_error(c.get(f"/repository/{repo}/permissions/user/"), 404)
    # The grants went with it: a repository of the same name starts afresh.
    with registry.client() as su:
        assert try_push(su, repo, "again")[0] == 201
        assert pull_status(su, repo, "again") == 200
    with v2(registry, carol.auth) as c:
        assert pull_status(c, repo, "again") == 403
    deleted = assert_logged(
        registry,
        "delete_repo",
        actor="admin",
        actor_kind="token",
        namespace=org,
        repository=repo,
        after=mark,
    )
    # Not the repeated delete (404).
    deletes = entries(registry, "delete_repo", after=mark)
    assert [e.id for e in deletes if e.repository == repo] == [deleted.id]


def test_repository_lifecycle_on_both_databases(any_registry: RegistryProcess) -> None:
    """Every statement of the repository, grant and robot services, once per database."""
    server = any_registry
    org = new_org(server, "rpdb")
    owner = person(server, "rpdb")
    add_team(server, org, "owners", "admin", owner.name)
    repo = f"{org}/svc/api"
    with api(server, owner.token) as c:
        body = {"namespace": org, "repository": "svc/api", "description": "API"}
        ok(c.post("/repository", json=body), 201)
        listed = ok(c.get("/repository", params={"namespace": org, "limit": 1}))
        assert [r["name"] for r in listed["repositories"]] == ["svc/api"]
        ok(c.post(f"/repository/{repo}/changevisibility", json={"visibility": "public"}))
        ok(c.put(f"/repository/{repo}", json={"description": "the API"}))
        assert ok(c.get(f"/repository/{repo}"))["description"] == "the API"
        robot = ok(c.put(f"/organization/{org}/robots/ci"), 201)
        ok(c.put(f"/repository/{repo}/permissions/user/{robot['name']}", json={"role": "write"}))
        users = ok(c.get(f"/repository/{repo}/permissions/user/"))["permissions"]
        assert users == {
            robot["name"]: {
                "name": robot["name"],
                "role": "write",
                "is_robot": True,
                "is_org_member": True,
            }
        }
        permissions = ok(c.get(f"/organization/{org}/robots/ci/permissions"))["permissions"]
        assert [p["role"] for p in permissions] == ["write"]
    with v2(server, (robot["name"], robot["token"])) as c:
        status, image = try_push(c, repo)
        assert status == 201 and image is not None
    with v2(server, None) as anonymous:
        assert pull_status(anonymous, repo) == 200
    with api(server, owner.token) as c:
        assert c.delete(f"/repository/{repo}").status_code == 204
        assert ok(c.get("/repository", params={"namespace": org}))["repositories"] == []
        assert ok(c.get(f"/organization/{org}/robots/ci/permissions"))["permissions"] == []
        assert c.delete(f"/organization/{org}/robots/ci").status_code == 204
