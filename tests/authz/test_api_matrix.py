"""Authorization matrix of the REST API: every /api/v1 route x every principal of the
World, asserting the exact status. A route of the API without a row here (or a row
without a route) fails `test_every_api_route_is_in_the_matrix`.

Each principal calls with what it has: users with their bearer app token (all scopes),
robots with their robot token as a bearer (robots cannot use the API: 401), the revoked
and expired tokens as bearers, anonymous with nothing. Routes about the caller's own
things (/user/..., /signin) act on each principal's own account. Objects that a route
destroys are made afresh, by the superuser, for every attempt."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.authz.test_api_policies import api_routes
from tests.authz.world import PRINCIPALS, World, api
from tests.support.identity import bearer, unique_name

Prepared = dict[str, Any]
Expect = Callable[[str], int]

ROBOTS = frozenset({"robot_with", "robot_without"})
BAD_TOKENS = frozenset({"revoked_token", "expired_token"})
# Principals that are users signed in with a valid token.
USERS = frozenset(PRINCIPALS) - ROBOTS - BAD_TOKENS - {"anonymous"}
# Standing in the World's organization (through its teams; the superuser created it).
ORG_ADMINS = frozenset({"team_admin", "superuser"})
ORG_MEMBERS = frozenset({"team_member", "team_creator"})
# Role on the World's private repository (others: none).
READ, WRITE, ADMIN = 1, 2, 3
REPO_LEVEL = {"reader": READ, "writer": WRITE, "repo_admin": ADMIN, "team_admin": ADMIN}
REPO_LEVEL["superuser"] = ADMIN
# The teams of the World's organization that hold the team principals.
TEAM_OF = {
    "team_member": ("members", "member"),
    "team_creator": ("creators", "creator"),
    "team_admin": ("admins", "admin"),
}
PASSWORD = "matrix-password-0123"


# -- what each policy answers --------------------------------------------------------------


def anyone(ok: int) -> Expect:
    """Anyone(): anonymous callers too; credentials that are present and wrong are 401."""
    return lambda who: 401 if who in ROBOTS | BAD_TOKENS else ok


def signed_in(ok: int) -> Expect:
    """SignedIn(scope): any user (the tokens carry every scope)."""
    return lambda who: ok if who in USERS else 401


def superuser(ok: int) -> Expect:
    def expect(who: str) -> int:
        if who not in USERS:
            return 401
        return ok if who == "superuser" else 403

    return expect


def org(ok: int, *, admin: bool = True) -> Expect:
    """OrgAccess: 404 to non-members, 403 to members who are not admins (admin=True)."""

    def expect(who: str) -> int:
        if who not in USERS:
            return 401
        if who in ORG_ADMINS or (who in ORG_MEMBERS and not admin):
            return ok
        return 403 if who in ORG_MEMBERS else 404

    return expect


def repo(level: int, ok: int) -> Expect:
    """RepoAccess: 404 to those who cannot read, 403 to readers lacking the role."""

    def expect(who: str) -> int:
        if who not in USERS:
            return 401
        have = REPO_LEVEL.get(who, 0)
        if have >= level:
            return ok
        return 403 if have else 404

    return expect


def but(expect: Expect, **overrides: int) -> Expect:
    return lambda who: overrides.get(who, expect(who))


# -- the context: the World plus objects the rows share ---------------------------------------


@dataclass
class Ctx:
    world: World
    admin: httpx.Client
    bystander: str  # a user outside the cast: grantee, team member, sign-in of anonymous
    spare_team: str  # a team of the organization holding no principal (read on the repo)
    grantee_team: str  # a team whose grant on the repository rows delete
    spare_robot: str  # a robot of the organization that rows may regenerate
    prototype: str  # a default permission of the organization
    client_id: str  # an OAuth application of the organization
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    own: dict[tuple[str, str], Any] = field(default_factory=dict)  # per-principal objects

    @property
    def org(self) -> str:
        return self.world.org

    def client(self, who: str) -> httpx.Client:
        if who not in self.clients:
            p = self.world.principals[who]
            token = p.api_token
            if who in ROBOTS:
                assert p.basic is not None
                token = p.basic[1]  # a robot presents its token: the API must refuse it
            headers = bearer(token) if token else {}
            self.clients[who] = self.world.server.client(auth=None, headers=headers)
        return self.clients[who]

    def credentials(self, who: str) -> tuple[str, str]:
        """The user's name and real password."""
        if who == "superuser":
            return self.world.server.admin_auth
        return self.world.accounts[who].auth

    def cached(self, who: str, what: str, make: Callable[[], Any]) -> Any:
        if (who, what) not in self.own:
            self.own[(who, what)] = make()
        return self.own[(who, what)]


@pytest.fixture(scope="module")
def ctx(world: World) -> Iterator[Ctx]:
    org, repo_name = world.org, world.repo
    with world.admin() as admin:
        bystander = unique_name("mxby")
        api(admin, "POST", "/superuser/users/", {"username": bystander, "password": PASSWORD})
        spare, grantee = unique_name("mxspare"), unique_name("mxgrantee")
        for team in (spare, grantee):
            api(admin, "PUT", f"/organization/{org}/team/{team}", {"role": "member"})
        api(admin, "PUT", f"/repository/{repo_name}/permissions/team/{spare}", {"role": "read"})
        api(admin, "PUT", f"/organization/{org}/robots/spare", {"description": "spare"})
        prototype = api(
            admin,
            "POST",
            f"/organization/{org}/prototypes",
            {"role": "read", "delegate": {"name": spare, "kind": "team"}},
        )["id"]
        app = api(admin, "POST", f"/organization/{org}/applications", {"name": "matrix app"})
        context = Ctx(world, admin, bystander, spare, grantee, "spare", prototype, app["client_id"])
        try:
            yield context
        finally:
            for client in context.clients.values():
                client.close()


# -- preparations (as the superuser, or as the principal for its own things) ----------------


def _fresh_team(c: Ctx, who: str) -> Prepared:
    name = unique_name("mxteam")
    api(c.admin, "PUT", f"/organization/{c.org}/team/{name}", {"role": "member"})
    return {"teamname": name}


def _fresh_prototype(c: Ctx, who: str) -> Prepared:
    team = _fresh_team(c, who)["teamname"]
    body = {"role": "read", "delegate": {"name": team, "kind": "team"}}
    return {"prototypeid": api(c.admin, "POST", f"/organization/{c.org}/prototypes", body)["id"]}


def _fresh_org(c: Ctx, who: str) -> Prepared:
    """An organization where `who` stands as in the World's (only its own team matters)."""
    name = unique_name("mxdel")
    api(c.admin, "POST", "/organization/", {"name": name, "email": f"{name}@example.org"})
    if who in TEAM_OF:
        team, role = TEAM_OF[who]
        member = c.world.accounts[who].name
        api(c.admin, "PUT", f"/organization/{name}/team/{team}", {"role": role})
        api(c.admin, "PUT", f"/organization/{name}/team/{team}/members/{member}")
    return {"orgname": name}


def _fresh_repository(c: Ctx, who: str) -> Prepared:
    """An empty repository of the organization where `who` has its role on the World's."""
    name = unique_name("mxrepo")
    body = {"namespace": c.org, "repository": name, "visibility": "private"}
    api(c.admin, "POST", "/repository", body)
    role = {READ: "read", WRITE: "write", ADMIN: "admin"}.get(REPO_LEVEL.get(who, 0))
    if role and who in c.world.accounts and who != "team_admin":
        user = c.world.accounts[who].name
        api(c.admin, "PUT", f"/repository/{c.org}/{name}/permissions/user/{user}", {"role": role})
    return {"repository": f"{c.org}/{name}"}


def _fresh_robot(c: Ctx, who: str) -> Prepared:
    short = unique_name("mxbot")
    api(c.admin, "PUT", f"/organization/{c.org}/robots/{short}", {"description": "doomed"})
    return {"robot_shortname": short}


def _fresh_application(c: Ctx, who: str) -> Prepared:
    app = api(c.admin, "POST", f"/organization/{c.org}/applications", {"name": "doomed"})
    return {"client_id": app["client_id"]}


def _fresh_user(c: Ctx, who: str) -> Prepared:
    name = unique_name("mxdoomed")
    api(c.admin, "POST", "/superuser/users/", {"username": name, "password": PASSWORD})
    return {"username": name}


def _grant_bystander(c: Ctx, who: str) -> Prepared:
    path = f"/repository/{c.world.repo}/permissions/user/{c.bystander}"
    api(c.admin, "PUT", path, {"role": "read"})
    return {"username": c.bystander}


def _grant_team(c: Ctx, who: str) -> Prepared:
    path = f"/repository/{c.world.repo}/permissions/team/{c.grantee_team}"
    api(c.admin, "PUT", path, {"role": "read"})
    return {"teamname": c.grantee_team}


def _bystander_in_team(c: Ctx, who: str) -> Prepared:
    api(c.admin, "PUT", f"/organization/{c.org}/team/{c.spare_team}/members/{c.bystander}")
    return {"teamname": c.spare_team, "membername": c.bystander}


def _own_robot(c: Ctx, who: str) -> Prepared:
    """A robot in the principal's own namespace (kept for the rows that do not delete it)."""

    def make() -> str:
        api(c.client(who), "PUT", "/user/robots/mxown", {"description": "own"})
        return "mxown"

    return {"robot_shortname": c.cached(who, "robot", make) if who in USERS else "mxown"}


def _own_doomed_robot(c: Ctx, who: str) -> Prepared:
    short = unique_name("mxbot")
    if who in USERS:
        api(c.client(who), "PUT", f"/user/robots/{short}", {"description": "doomed"})
    return {"robot_shortname": short}


def _new_token(c: Ctx, who: str) -> str:
    created = api(c.client(who), "POST", "/user/apptoken", {"title": "matrix own"})
    return str(created["token"]["id"])


def _own_token(c: Ctx, who: str) -> Prepared:
    if who not in USERS:
        return {"token_id": "1"}
    return {"token_id": c.cached(who, "token", lambda: _new_token(c, who))}


def _own_doomed_token(c: Ctx, who: str) -> Prepared:
    return {"token_id": _new_token(c, who) if who in USERS else "1"}


def _own_email(c: Ctx, who: str) -> Prepared:
    """The principal's e-mail address, sent back unchanged."""
    if who not in USERS:
        return {"email": None}
    return {"email": api(c.client(who), "GET", "/user/")["email"]}


def _signin(c: Ctx, who: str) -> dict[str, str]:
    if who in USERS:
        name, password = c.credentials(who)
    elif who == "anonymous":
        name, password = c.bystander, PASSWORD  # anyone may sign in
    else:
        basic = c.world.principals[who].basic
        assert basic is not None
        name, password = basic  # a robot's or a token's credentials: never a session
    return {"username": name, "password": password}


def _star(c: Ctx) -> dict[str, str]:
    namespace, name = c.world.repo.split("/", 1)
    return {"namespace": namespace, "repository": name}


def _password(c: Ctx, who: str) -> dict[str, str]:
    return {"password": c.credentials(who)[1] if who in USERS else "not-a-user"}


# Tags, manifests, labels and immutability rules of the World's repository.
TAG = "/repository/{repository:path}/tag/{tag}"
MANIFEST = "/repository/{repository:path}/manifest/{digest}"
IMMUTABILITY = "/repository/{repository:path}/immutability"


def _fresh_tag(c: Ctx, who: str) -> Prepared:
    """A new tag on the World's manifest."""
    name = unique_name("mxtag")
    path = f"/repository/{c.world.repo}/tag/{name}"
    api(c.admin, "PUT", path, {"manifest_digest": c.world.manifest_digest})
    return {"tag": name}


def _deleted_tag(c: Ctx, who: str) -> Prepared:
    """A tag that was live on the World's manifest and is history now."""
    prepared = _fresh_tag(c, who)
    api(c.admin, "DELETE", f"/repository/{c.world.repo}/tag/{prepared['tag']}")
    return prepared


def _the_manifest(c: Ctx, who: str, prepared: Prepared) -> Prepared:
    return {"digest": c.world.manifest_digest, **prepared}


def _new_label(c: Ctx) -> str:
    path = f"/repository/{c.world.repo}/manifest/{c.world.manifest_digest}/labels"
    return str(api(c.admin, "POST", path, {"key": "matrix.label", "value": "x"})["id"])


def _shared_label(c: Ctx, who: str) -> Prepared:
    return {"label_id": c.cached("superuser", "label", lambda: _new_label(c))}


def _fresh_label(c: Ctx, who: str) -> Prepared:
    return {"label_id": _new_label(c)}


def _fresh_rule(c: Ctx, who: str) -> Prepared:
    """A rule that matches none of the World's tags."""
    path = f"/repository/{c.world.repo}/immutability"
    return {"rule_id": api(c.admin, "POST", path, {"pattern": unique_name("mxrule")})["id"]}


# -- the rows ---------------------------------------------------------------------------------

Fill = Callable[[Ctx, str, Prepared], Any]


@dataclass(frozen=True)
class Row:
    """One route: its method and path template (as FastAPI declares it), the status each
    principal must get, and how to fill the path, query and body."""

    method: str
    path: str
    expect: Expect
    params: Fill | None = None  # path parameters besides orgname and repository
    query: str = ""
    body: Fill | None = None
    prepare: Callable[[Ctx, str], Prepared] | None = None


def p(**values: str) -> Fill:
    """Fixed path parameters, from the context's attributes when named `ctx.<attr>`."""

    def fill(c: Ctx, who: str, prepared: Prepared) -> dict[str, str]:
        return {k: getattr(c, v[4:]) if v.startswith("ctx.") else v for k, v in values.items()}

    return fill


def body(value: Any) -> Fill:
    return lambda c, who, prepared: value


def from_prepared(c: Ctx, who: str, prepared: Prepared) -> Prepared:
    return prepared


ORG = "/organization/{orgname}"
TEAM = ORG + "/team/{teamname}"
ROBOT = ORG + "/robots/{robot_shortname}"
PROTOTYPE = ORG + "/prototypes/{prototypeid}"
APP = ORG + "/applications/{client_id}"
REPO = "/repository/{repository:path}"
PERMS = REPO + "/permissions"
MEMBERS_TEAM = p(teamname="members")
NS_QUOTA = "/superuser/namespaces/{namespace}/quota"
BIG_QUOTA = {"limit_bytes": 1 << 40, "warning_percent": 90}
WITHPERM = p(robot_shortname="withperm")

ROWS: list[Row] = [
    # -- sessions --
    Row("POST", "/signin", anyone(200), body=lambda c, who, _: _signin(c, who)),
    Row("POST", "/signout", signed_in(200)),
    # A bearer token has no session, hence no CSRF token (docs/api.md: 400).
    Row("GET", "/csrf_token", signed_in(400)),
    # -- the signed-in user --
    Row("GET", "/user/", signed_in(200)),
    Row(
        "PUT",
        "/user/",
        signed_in(200),
        body=lambda c, who, prepared: {"email": prepared["email"]},
        prepare=_own_email,
    ),
    Row(
        "POST",
        "/user/",
        anyone(201),
        body=lambda c, who, _: {"username": unique_name("mxsignup"), "password": PASSWORD},
    ),
    Row("GET", "/users/{username}", anyone(200), params=p(username="ctx.bystander")),
    # -- app tokens and the encrypted CLI password --
    Row("GET", "/user/apptoken", signed_in(200)),
    Row("POST", "/user/apptoken", signed_in(201), body=body({"title": "matrix new"})),
    Row(
        "GET",
        "/user/apptoken/{token_id}",
        signed_in(200),
        params=from_prepared,
        prepare=_own_token,
    ),
    Row(
        "DELETE",
        "/user/apptoken/{token_id}",
        signed_in(204),
        params=from_prepared,
        prepare=_own_doomed_token,
    ),
    Row("POST", "/user/clientkey", signed_in(200), body=lambda c, who, _: _password(c, who)),
    Row("DELETE", "/user/clientkey", signed_in(204)),
    # -- the user's own robots --
    Row("GET", "/user/robots", signed_in(200)),
    Row(
        "GET",
        "/user/robots/{robot_shortname}/permissions",
        signed_in(200),
        params=from_prepared,
        prepare=_own_robot,
    ),
    Row(
        "POST",
        "/user/robots/{robot_shortname}/regenerate",
        signed_in(200),
        params=from_prepared,
        prepare=_own_robot,
    ),
    Row(
        "GET",
        "/user/robots/{robot_shortname}",
        signed_in(200),
        params=from_prepared,
        prepare=_own_robot,
    ),
    Row(
        "PUT",
        "/user/robots/{robot_shortname}",
        signed_in(201),
        params=lambda c, who, _: {"robot_shortname": unique_name("mxbot")},
        body=body({"description": "new"}),
    ),
    Row(
        "DELETE",
        "/user/robots/{robot_shortname}",
        signed_in(204),
        params=from_prepared,
        prepare=_own_doomed_robot,
    ),
    # -- the organization's robots --
    Row("GET", ORG + "/robots", org(200)),
    Row("GET", ROBOT + "/permissions", org(200), params=WITHPERM),
    # Not the World's robots: a new token would lock them out of the registry matrix.
    Row("POST", ROBOT + "/regenerate", org(200), params=p(robot_shortname="ctx.spare_robot")),
    Row("GET", ROBOT, org(200), params=WITHPERM),
    Row(
        "PUT",
        ROBOT,
        org(201),
        params=lambda c, who, _: {"robot_shortname": unique_name("mxbot")},
        body=body({"description": "new"}),
    ),
    Row("DELETE", ROBOT, org(204), params=from_prepared, prepare=_fresh_robot),
    # -- organizations --
    Row(
        "POST",
        "/organization/",
        signed_in(201),
        body=lambda c, who, _: {"name": unique_name("mxneworg")},
    ),
    Row("GET", ORG, org(200, admin=False)),
    Row("PUT", ORG, org(200), body=lambda c, who, _: {"email": f"{c.org}@example.org"}),
    Row("DELETE", ORG, org(204), params=from_prepared, prepare=_fresh_org),
    Row("GET", ORG + "/members", org(200)),
    # -- teams --
    # Team sync needs auth.provider ldap or oidc; the matrix's server uses the database,
    # so an administrator's valid request is a 400 that says so.
    Row(
        "POST",
        TEAM + "/syncing",
        org(400),
        params=p(teamname="ctx.spare_team"),
        body=body({"group_name": "matrix-group"}),
    ),
    Row("DELETE", TEAM + "/syncing", org(204), params=p(teamname="ctx.spare_team")),
    # A member sees the teams it belongs to; another team is 404, like a missing one.
    Row(
        "GET",
        TEAM + "/members",
        but(org(200, admin=False), team_creator=404),
        params=MEMBERS_TEAM,
    ),
    Row(
        "PUT",
        TEAM + "/members/{membername}",
        org(200),
        params=p(teamname="ctx.spare_team", membername="ctx.bystander"),
    ),
    Row(
        "DELETE",
        TEAM + "/members/{membername}",
        org(204),
        params=from_prepared,
        prepare=_bystander_in_team,
    ),
    Row("GET", TEAM, but(org(200, admin=False), team_creator=404), params=MEMBERS_TEAM),
    Row(
        "PUT",
        TEAM,
        org(200),
        params=p(teamname="ctx.spare_team"),
        body=body({"description": "spare team of the matrix"}),
    ),
    Row("DELETE", TEAM, org(204), params=from_prepared, prepare=_fresh_team),
    # -- default permissions --
    Row("GET", ORG + "/prototypes", org(200)),
    Row(
        "POST",
        ORG + "/prototypes",
        org(200),
        body=lambda c, who, prepared: {
            "role": "read",
            "delegate": {"name": prepared["teamname"], "kind": "team"},
        },
        prepare=_fresh_team,
    ),
    Row("GET", PROTOTYPE, org(200), params=p(prototypeid="ctx.prototype")),
    Row(
        "PUT",
        PROTOTYPE,
        org(200),
        params=p(prototypeid="ctx.prototype"),
        body=body({"role": "read"}),
    ),
    Row("DELETE", PROTOTYPE, org(204), params=from_prepared, prepare=_fresh_prototype),
    # -- repository permissions --
    Row("GET", PERMS + "/user", repo(ADMIN, 200)),
    Row("GET", PERMS + "/user/", repo(ADMIN, 200)),
    Row(
        "GET",
        PERMS + "/user/{username}",
        repo(ADMIN, 200),
        params=lambda c, who, _: {"username": c.world.accounts["reader"].name},
    ),
    Row(
        "PUT",
        PERMS + "/user/{username}",
        repo(ADMIN, 200),
        params=p(username="ctx.bystander"),
        body=body({"role": "read"}),
    ),
    Row(
        "DELETE",
        PERMS + "/user/{username}",
        repo(ADMIN, 204),
        params=from_prepared,
        prepare=_grant_bystander,
    ),
    Row("GET", PERMS + "/team", repo(ADMIN, 200)),
    Row("GET", PERMS + "/team/", repo(ADMIN, 200)),
    Row("GET", PERMS + "/team/{teamname}", repo(ADMIN, 200), params=p(teamname="ctx.spare_team")),
    Row(
        "PUT",
        PERMS + "/team/{teamname}",
        repo(ADMIN, 200),
        params=p(teamname="ctx.spare_team"),
        body=body({"role": "read"}),
    ),
    Row(
        "DELETE",
        PERMS + "/team/{teamname}",
        repo(ADMIN, 204),
        params=from_prepared,
        prepare=_grant_team,
    ),
    # -- audit logs --
    Row("GET", REPO + "/exportlogs", repo(ADMIN, 200)),
    Row("GET", REPO + "/logs", repo(ADMIN, 200), query="limit=5"),
    Row("GET", ORG + "/exportlogs", org(200)),
    Row("GET", ORG + "/logs", org(200), query="limit=5"),
    Row("GET", "/user/exportlogs", signed_in(200)),
    Row("GET", "/user/logs", signed_in(200), query="limit=5"),
    Row("GET", "/superuser/exportlogs", superuser(200), query="kinds=delete_org"),
    Row("GET", "/superuser/logs", superuser(200), query="limit=5"),
    # -- repositories --
    # Creating in the organization: teams with the creator or admin role; a member
    # without it is 403, anyone else 404 (as for a namespace that does not exist).
    Row(
        "POST",
        "/repository",
        but(org(201), team_creator=201),
        body=lambda c, who, _: {"namespace": c.org, "repository": unique_name("mxnew")},
    ),
    Row("GET", "/repository", anyone(200)),
    Row(
        "POST",
        REPO + "/changevisibility",
        repo(ADMIN, 200),
        body=body({"visibility": "private"}),
    ),
    Row("GET", REPO, repo(READ, 200)),
    Row("PUT", REPO, repo(ADMIN, 200), body=body({"description": "the matrix repository"})),
    Row("DELETE", REPO, repo(ADMIN, 204), params=from_prepared, prepare=_fresh_repository),
    # -- tags, the time machine, manifests, labels, immutability rules --
    Row("GET", REPO + "/tag/", repo(READ, 200)),
    Row("GET", TAG, repo(READ, 200), params=p(tag="v1")),
    # The digest v1 already has: no change, for whoever may write.
    Row(
        "PUT",
        TAG,
        repo(WRITE, 200),
        params=p(tag="v1"),
        body=lambda c, who, _: {"manifest_digest": c.world.manifest_digest},
    ),
    Row("DELETE", TAG, repo(WRITE, 204), params=from_prepared, prepare=_fresh_tag),
    Row(
        "POST",
        TAG + "/restore",
        repo(WRITE, 200),
        params=from_prepared,
        prepare=_deleted_tag,
        body=lambda c, who, _: {"manifest_digest": c.world.manifest_digest},
    ),
    Row(
        "POST",
        TAG + "/expire",
        repo(ADMIN, 200),
        params=from_prepared,
        prepare=_deleted_tag,
        body=body({}),
    ),
    Row("GET", MANIFEST, repo(READ, 200), params=_the_manifest),
    Row("GET", MANIFEST + "/labels", repo(READ, 200), params=_the_manifest),
    Row(
        "POST",
        MANIFEST + "/labels",
        repo(WRITE, 201),
        params=_the_manifest,
        body=body({"key": "matrix.new", "value": "x"}),
    ),
    Row(
        "GET",
        MANIFEST + "/labels/{label_id}",
        repo(READ, 200),
        params=_the_manifest,
        prepare=_shared_label,
    ),
    Row(
        "DELETE",
        MANIFEST + "/labels/{label_id}",
        repo(WRITE, 204),
        params=_the_manifest,
        prepare=_fresh_label,
    ),
    Row("GET", IMMUTABILITY, repo(ADMIN, 200)),
    Row(
        "POST",
        IMMUTABILITY,
        repo(ADMIN, 201),
        body=lambda c, who, _: {"pattern": unique_name("mxrule")},
    ),
    Row(
        "DELETE",
        IMMUTABILITY + "/{rule_id}",
        repo(ADMIN, 204),
        params=from_prepared,
        prepare=_fresh_rule,
    ),
    # -- stars and the search --
    # Starring needs read access to the repository (404 otherwise, like a missing one).
    Row("POST", "/user/starred", repo(READ, 201), body=lambda c, who, _: _star(c)),
    Row("GET", "/user/starred", signed_in(200)),
    Row("DELETE", "/user/starred/{repository:path}", signed_in(204)),
    Row("GET", "/find/repositories", anyone(200), query="query=app"),
    # -- storage quotas (a limit far above the matrix's usage: pushes stay possible) --
    Row("GET", ORG + "/quota", org(200, admin=False)),
    Row("PUT", ORG + "/quota", superuser(200), body=body(BIG_QUOTA)),
    Row("DELETE", ORG + "/quota", superuser(204)),
    Row("GET", "/user/quota", signed_in(200)),
    Row("GET", NS_QUOTA, superuser(200), params=p(namespace="ctx.org")),
    Row("PUT", NS_QUOTA, superuser(200), params=p(namespace="ctx.org"), body=body(BIG_QUOTA)),
    Row("DELETE", NS_QUOTA, superuser(204), params=p(namespace="ctx.org")),
    # -- OAuth applications --
    Row("GET", ORG + "/applications", org(200)),
    Row("POST", ORG + "/applications", org(201), body=body({"name": "matrix new app"})),
    Row("GET", APP, org(200), params=p(client_id="ctx.client_id")),
    Row(
        "PUT",
        APP,
        org(200),
        params=p(client_id="ctx.client_id"),
        body=body({"description": "the matrix application"}),
    ),
    Row("DELETE", APP, org(204), params=from_prepared, prepare=_fresh_application),
    Row("POST", APP + "/resetclientsecret", org(200), params=p(client_id="ctx.client_id")),
    Row(
        "POST",
        APP + "/token",
        org(201),
        params=p(client_id="ctx.client_id"),
        body=body({"scopes": ["repo:read"]}),
    ),
    # -- superuser: garbage collection metrics --
    Row("GET", "/superuser/gc", superuser(200), query="limit=5"),
    # -- superuser: users --
    Row("GET", "/superuser/users/", superuser(200), query="limit=2"),
    Row(
        "POST",
        "/superuser/users/",
        superuser(201),
        body=lambda c, who, _: {"username": unique_name("mxsu"), "password": PASSWORD},
    ),
    Row("GET", "/superuser/users/{username}", superuser(200), params=p(username="ctx.bystander")),
    Row(
        "PUT",
        "/superuser/users/{username}",
        superuser(200),
        params=p(username="ctx.bystander"),
        body=lambda c, who, _: {"email": f"{c.bystander}@example.org"},
    ),
    Row(
        "DELETE",
        "/superuser/users/{username}",
        superuser(204),
        params=from_prepared,
        prepare=_fresh_user,
    ),
]

PARAMETER = re.compile(r"\{(\w+)(?::\w+)?\}")
ERROR_TYPES = {401: "invalid_token", 403: "insufficient_scope", 404: "not_found"}


def url(c: Ctx, row: Row, who: str, prepared: Prepared) -> str:
    values = {"orgname": c.org, "repository": c.world.repo}
    if row.params is not None:
        values.update(row.params(c, who, prepared))
    path = PARAMETER.sub(lambda m: str(values[m[1]]), row.path)
    return f"/api/v1{path}" + (f"?{row.query}" if row.query else "")


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
def test_api_route(ctx: Ctx, row: Row, who: str) -> None:
    prepared = row.prepare(ctx, who) if row.prepare else {}
    target = url(ctx, row, who, prepared)
    payload = row.body(ctx, who, prepared) if row.body else None
    client = ctx.client(who)
    client.cookies.clear()  # a sign-in's cookie must not follow the principal around
    r = client.request(row.method, target, json=payload)
    client.cookies.clear()
    want = row.expect(who)
    assert r.status_code == want, (who, row.method, target, r.status_code, r.text)
    if want >= 400:
        error = r.json()
        assert error["status"] == want, error
        if want in ERROR_TYPES:
            assert error["error_type"] == ERROR_TYPES[want], error
    if want == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm="), r.headers


def test_every_api_route_is_in_the_matrix() -> None:
    routes = {(m, r.path) for r in api_routes() for m in r.methods}
    rows = [(row.method, row.path) for row in ROWS]
    missing = sorted(routes - set(rows))
    unknown = sorted(set(rows) - routes)
    twice = sorted({r for r in rows if rows.count(r) > 1})
    assert not missing, f"API routes without a row in the authorization matrix: {missing}"
    assert not unknown, f"rows of the authorization matrix without a route: {unknown}"
    assert not twice, f"routes with more than one row: {twice}"


def test_every_row_answers_every_principal() -> None:
    for row in ROWS:
        for who in PRINCIPALS:
            assert row.expect(who) in {200, 201, 204, 400, 401, 403, 404}, (row.path, who)


@pytest.mark.parametrize("who", ["reader", "superuser", "robot_with"])
def test_basic_credentials_are_refused_on_the_api(world: World, who: str) -> None:
    """HTTP Basic is for /v2 only: a user's password, or a robot's token, is a 401 on
    the API, even on routes open to anonymous callers."""
    with world.registry_client(who) as client:
        for path in ("/api/v1/user/", "/api/v1/repository"):
            r = client.get(path)
            assert r.status_code == 401, (who, path, r.text)


# -- across organizations: an admin of one names the other's objects through its own --------


@dataclass(frozen=True)
class Foreign:
    """A request by `other_org` (admin of the World's other organization) through its own
    organization's URLs, naming an object of the World's organization."""

    method: str
    path: str  # {other}, {org}, {repo}, and the context's attributes in {ctx.<attr>}
    status: int
    body: Any = None
    prepare: Callable[[Ctx, str], Prepared] | None = None


OTHER = "/organization/{other}"
FOREIGN = [
    # Robots, prototypes and applications are looked up in the URL's organization only.
    Foreign("GET", OTHER + "/robots/withperm", 404),
    Foreign("GET", OTHER + "/robots/withperm/permissions", 404),
    Foreign("POST", OTHER + "/robots/{ctx.spare_robot}/regenerate", 404),
    Foreign("DELETE", OTHER + "/robots/{robot_shortname}", 404, prepare=_fresh_robot),
    Foreign("GET", OTHER + "/prototypes/{ctx.prototype}", 404),
    Foreign("PUT", OTHER + "/prototypes/{ctx.prototype}", 404, {"role": "admin"}),
    Foreign("DELETE", OTHER + "/prototypes/{prototypeid}", 404, prepare=_fresh_prototype),
    Foreign("GET", OTHER + "/applications/{ctx.client_id}", 404),
    Foreign("PUT", OTHER + "/applications/{ctx.client_id}", 404, {"name": "stolen"}),
    Foreign("POST", OTHER + "/applications/{ctx.client_id}/resetclientsecret", 404),
    Foreign("POST", OTHER + "/applications/{ctx.client_id}/token", 404, {"scopes": ["repo:read"]}),
    Foreign("DELETE", OTHER + "/applications/{client_id}", 404, prepare=_fresh_application),
    # Team names are per organization: the World's teams do not exist here.
    Foreign("GET", OTHER + "/team/members/members", 404),
    Foreign("DELETE", OTHER + "/team/{teamname}", 404, prepare=_fresh_team),
    # Another organization's robot joins no team and gets no default permission here.
    Foreign("PUT", OTHER + "/team/owners2/members/{org}+withperm", 400),
    Foreign(
        "POST",
        OTHER + "/prototypes",
        400,
        {"role": "admin", "delegate": {"name": "{org}+withperm", "kind": "robot"}},
    ),
    Foreign(
        "POST",
        OTHER + "/prototypes",
        400,
        {"role": "admin", "delegate": {"name": "{ctx.spare_team}", "kind": "team"}},
    ),
    # Nor a grant on this organization's repositories; the World's teams are not found.
    Foreign(
        "PUT", "/repository/{other}/own/permissions/user/{org}+withperm", 400, {"role": "read"}
    ),
    Foreign("PUT", "/repository/{other}/own/permissions/team/members", 404, {"role": "read"}),
    # And none of this organization's admin powers reach the World's repository.
    Foreign("GET", "/repository/{repo}/permissions/user/", 404),
]


def _expand(c: Ctx, text: str, prepared: Prepared) -> str:
    values = {"other": c.world.other_org, "org": c.org, "repo": c.world.repo, **prepared}

    def one(m: re.Match[str]) -> str:
        name = m[1]
        return str(getattr(c, name[4:]) if name.startswith("ctx.") else values[name])

    return re.sub(r"\{([\w.]+)\}", one, text)


@pytest.fixture(scope="module")
def other_repository(ctx: Ctx) -> str:
    """A repository of the other organization (its admin administers it)."""
    name = f"{ctx.world.other_org}/own"
    api(ctx.admin, "POST", "/repository", {"namespace": ctx.world.other_org, "repository": "own"})
    return name


@pytest.mark.parametrize("case", FOREIGN, ids=lambda f: f"{f.method} {f.path}")
def test_objects_of_another_organization(ctx: Ctx, other_repository: str, case: Foreign) -> None:
    prepared = case.prepare(ctx, "other_org") if case.prepare else {}
    target = "/api/v1" + _expand(ctx, case.path, prepared)
    payload = case.body
    if payload is not None:
        payload = json.loads(_expand(ctx, json.dumps(payload), prepared))
    r = ctx.client("other_org").request(case.method, target, json=payload)
    assert r.status_code == case.status, (case.method, target, r.status_code, r.text)
