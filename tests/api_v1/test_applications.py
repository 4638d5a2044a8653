"""OAuth applications of an organization and their tokens: the management API for the
organization's administrators, the authorization-code grant (/oauth/authorize and
/oauth/access_token, with PKCE) and direct token generation. Client secrets show once;
codes work once; a token never grants more than its user has."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.api_v1.identity_helpers import (
    admin,
    anonymous,
    assert_api_error,
    bearer_client,
    make_org,
    new_token,
    new_user,
    sign_in,
)
from tests.support.audit import assert_logged, last_id
from tests.support.identity import Account, unique_name
from tests.support.oci import push_blob
from tests.support.server import RegistryProcess

REDIRECT = "https://client.example/callback?tenant=7"


@dataclass(frozen=True)
class Org:
    name: str
    owner: Account  # in a team with the admin role
    member: Account  # in a team with the member role
    outsider: Account  # in no team of it


@pytest.fixture
def org(registry: RegistryProcess) -> Org:
    with admin(registry) as su:
        owner, member, outsider = (new_user(registry, su) for _ in range(3))
    name = unique_name("org")
    make_org(registry, name, admins=[owner.name], members=[member.name])
    return Org(name, owner, member, outsider)


@pytest.fixture
def owner(registry: RegistryProcess, org: Org) -> Iterator[httpx.Client]:
    with sign_in(registry, org.owner.auth) as client:
        yield client


def _apps(org: str) -> str:
    return f"/api/v1/organization/{org}/applications"


def _register(client: httpx.Client, org: str, **body: Any) -> dict[str, Any]:
    body = {"name": "deploy bot", "redirect_uri": REDIRECT, **body}
    answer = client.post(_apps(org), json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def _authorize_params(app: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "client_id": app["client_id"],
        "redirect_uri": app["redirect_uri"],
        "response_type": "code",
        "scope": "user:read repo:read",
        "state": "st-" + secrets.token_hex(4),
        **extra,
    }


def _approve(session: httpx.Client, params: dict[str, str]) -> str:
    """Show the consent page, approve it; the code sent to the redirect URI."""
    page = session.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None and csrf.group(1) == session.headers["X-CSRF-Token"]
    form = {**params, "csrf_token": csrf.group(1), "decision": "approve"}
    answer = session.post("/oauth/authorize", data=form)
    assert answer.status_code == 303, answer.text
    target = urlsplit(answer.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT.split("?")[0]
    query = parse_qs(target.query)
    assert query["state"] == [params["state"]] and query["tenant"] == ["7"]
    return query["code"][0]


def _exchange(
    registry: RegistryProcess, app: dict[str, Any], code: str, **extra: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app["redirect_uri"],
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        **extra,
    }
    with anonymous(registry) as client:
        return client.post("/oauth/access_token", data=form)


# -- managing applications ----------------------------------------------------------------


def test_application_lifecycle(registry: RegistryProcess, org: Org, owner: httpx.Client) -> None:
    mark = last_id(registry)
    app = _register(owner, org.name, description="ships builds")
    secret, client_id = app["client_secret"], app["client_id"]
    assert len(secret) >= 40 and len(client_id) >= 20
    assert app["organization"] == org.name and app["redirect_uri"] == REDIRECT

    listed = owner.get(_apps(org.name))
    assert listed.status_code == 200, listed.text
    assert [a["client_id"] for a in listed.json()["applications"]] == [client_id]
    one = owner.get(f"{_apps(org.name)}/{client_id}")
    assert one.status_code == 200 and one.json()["description"] == "ships builds"
    for answer in (listed, one):  # the secret is shown at creation only
        assert secret not in answer.text and "client_secret" not in answer.text

    changed = owner.put(f"{_apps(org.name)}/{client_id}", json={"description": "new words"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["description"] == "new words"
    assert changed.json()["name"] == "deploy bot" and changed.json()["redirect_uri"] == REDIRECT
    loopback = owner.put(
        f"{_apps(org.name)}/{client_id}", json={"redirect_uri": "http://127.0.0.1:8400/cb"}
    )
    assert loopback.status_code == 200 and loopback.json()["redirect_uri"].startswith("http://")

    reset = owner.post(f"{_apps(org.name)}/{client_id}/resetclientsecret")
    assert reset.status_code == 200, reset.text
    assert reset.json()["client_secret"] not in (secret, None)

    deleted = owner.delete(f"{_apps(org.name)}/{client_id}")
    assert deleted.status_code == 204, deleted.text
    assert_api_error(owner.get(f"{_apps(org.name)}/{client_id}"), 404)
    assert owner.get(_apps(org.name)).json()["applications"] == []

    who: dict[str, Any] = {"actor": org.owner.name, "namespace": org.name, "after": mark}
    logged = [
        assert_logged(registry, "create_application", **who),
        assert_logged(registry, "change_application", **who),
        assert_logged(registry, "reset_application_secret", **who),
        assert_logged(registry, "delete_application", **who),
    ]
    for entry in logged:
        assert entry.details["client_id"] == client_id
        assert secret not in str(entry.details)


def test_applications_are_for_organization_admins(registry: RegistryProcess, org: Org) -> None:
    with sign_in(registry, org.owner.auth) as owner:
        app = _register(owner, org.name)
        narrow = new_token(owner, ["repo:admin", "user:admin"])["token_code"]
        wide = new_token(owner, ["org:admin"])["token_code"]
    one = f"{_apps(org.name)}/{app['client_id']}"
    calls = [
        ("GET", _apps(org.name), None),
        ("POST", _apps(org.name), {"name": "x"}),
        ("GET", one, None),
        ("PUT", one, {"description": "x"}),
        ("DELETE", one, None),
        ("POST", one + "/resetclientsecret", None),
        ("POST", one + "/token", {"scopes": ["repo:read"]}),
    ]
    for who, status in ((org.member, 403), (org.outsider, 404)):
        with sign_in(registry, who.auth) as client:
            for method, path, body in calls:
                assert_api_error(client.request(method, path, json=body), status)
    with anonymous(registry) as nobody:
        for method, path, body in calls:
            assert_api_error(nobody.request(method, path, json=body), 401)
    with bearer_client(registry, narrow) as client:  # the token lacks org:admin
        for method, path, body in calls:
            assert_api_error(client.request(method, path, json=body), 403)
    with bearer_client(registry, wide) as client:
        assert client.get(one).status_code == 200
    with admin(registry) as su:
        assert su.get(one).json()["client_id"] == app["client_id"]


def test_applications_of_another_organization_are_out_of_reach(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    """Object-level authorization (SECURITY.md 1.2): the client id must belong to the
    organization in the path, which the caller administers."""
    other = unique_name("org")
    make_org(registry, other, admins=[org.owner.name], members=[])
    foreign = _register(owner, other)
    with admin(registry) as su:
        stranger = new_user(registry, su)
    victim = unique_name("org")
    make_org(registry, victim, admins=[stranger.name], members=[])
    with sign_in(registry, stranger.auth) as client:
        theirs = _register(client, victim)
    for app, org_name in ((foreign, org.name), (theirs, org.name)):
        one = f"{_apps(org_name)}/{app['client_id']}"
        assert_api_error(owner.get(one), 404)
        assert_api_error(owner.put(one, json={"name": "mine now"}), 404)
        assert_api_error(owner.post(one + "/resetclientsecret"), 404)
        assert_api_error(owner.post(one + "/token", json={"scopes": ["repo:read"]}), 404)
        assert_api_error(owner.delete(one), 404)
    with sign_in(registry, stranger.auth) as client:
        still = client.get(f"{_apps(victim)}/{theirs['client_id']}")
        assert still.status_code == 200 and still.json()["name"] == "deploy bot"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "client_secret": "chosen"},
        {"name": "x", "client_id": "CHOSEN0000000000000"},
        {"name": "x", "organization": "elsewhere"},
        {"name": "x", "application_uri": "https://x.example"},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 256},
        {"description": "no name"},
        {"name": "x", "redirect_uri": "javascript:alert(1)"},
        {"name": "x", "redirect_uri": "http://client.example/cb"},
        {"name": "x", "redirect_uri": "https://client.example/cb#fragment"},
        {"name": "x", "redirect_uri": "https://user:pw@client.example/cb"},
        {"name": "x", "redirect_uri": "/relative/cb"},
        {"name": "x", "redirect_uri": "https://client.example/c b"},
        {"name": "x", "redirect_uri": "https://" + "a" * 1100 + ".example/"},
    ],
)
def test_application_refuses_bad_input(org: Org, owner: httpx.Client, body: object) -> None:
    assert_api_error(owner.post(_apps(org.name), json=body), 400)
    assert owner.get(_apps(org.name)).json()["applications"] == []


def test_application_update_refuses_bad_input(org: Org, owner: httpx.Client) -> None:
    app = _register(owner, org.name)
    one = f"{_apps(org.name)}/{app['client_id']}"
    for body in (
        {"client_secret": "mine"},
        {"organization": "elsewhere"},
        {"name": ""},
        {"redirect_uri": "ftp://client.example/"},
    ):
        assert_api_error(owner.put(one, json=body), 400)
    assert owner.get(one).json()["name"] == "deploy bot"


def test_user_namespaces_have_no_applications(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    own = _apps(org.owner.name)
    assert_api_error(owner.get(own), 404)
    assert_api_error(owner.post(own, json={"name": "x"}), 404)


# -- the authorization-code grant ---------------------------------------------------------


def test_authorization_code_grant(registry: RegistryProcess, org: Org, owner: httpx.Client) -> None:
    app = _register(owner, org.name)
    mark = last_id(registry)
    with sign_in(registry, org.member.auth) as session:
        code = _approve(session, _authorize_params(app))
    answer = _exchange(registry, app, code)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "repo:read user:read"
    assert body["access_token"].startswith("cho_") and body["expires_in"] > 86400
    with bearer_client(registry, body["access_token"]) as client:
        me = client.get("/api/v1/user/")
        assert me.status_code == 200 and me.json()["username"] == org.member.name
        assert_api_error(client.put("/api/v1/user/", json={"email": "a@b.cd"}), 403)
    logged = assert_logged(
        registry, "create_oauth_token", actor=org.member.name, namespace=org.name, after=mark
    )
    assert logged.details["grant"] == "authorization_code"
    assert logged.details["client_id"] == app["client_id"]
    assert body["access_token"][4:20] not in str(logged.details)

    # A code works once; presented again, the token it gave is revoked too.
    again = _exchange(registry, app, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    with bearer_client(registry, body["access_token"]) as client:
        assert_api_error(client.get("/api/v1/user/"), 401)


def test_client_authentication_with_http_basic(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    app = _register(owner, org.name)
    with sign_in(registry, org.owner.auth) as session:
        code = _approve(session, _authorize_params(app, scope="user:read"))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    with anonymous(registry) as client:
        wrong = client.post(
            "/oauth/access_token", data=form, auth=(app["client_id"], "wrong-secret")
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        assert wrong.headers["www-authenticate"].startswith("Basic")
        right = client.post(
            "/oauth/access_token", data=form, auth=(app["client_id"], app["client_secret"])
        )
    assert right.status_code == 200, right.text
    assert right.json()["scope"] == "user:read"


def test_authorize_refuses_bad_requests(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    app = _register(owner, org.name)
    with sign_in(registry, org.member.auth) as session:
        # Unknown client or another redirect URI: an error here, never a redirect.
        for params in (
            _authorize_params(app, client_id="NOSUCHCLIENT00000000"),
            _authorize_params(app, redirect_uri="https://evil.example/callback"),
            _authorize_params(app, redirect_uri=REDIRECT + "&more=1"),
            _authorize_params(app, state=""),
        ):
            answer = session.get("/oauth/authorize", params=params)
            assert answer.status_code == 400 and "location" not in answer.headers
        # Known client and redirect URI: errors go back to the client, with its state.
        for extra, error in (
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"scope": "repo:read everything:all"}, "invalid_scope"),
            ({"scope": ""}, "invalid_scope"),
            ({"scope": "super:user"}, "invalid_scope"),
            ({"code_challenge": "a" * 43, "code_challenge_method": "plain"}, "invalid_request"),
            ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ):
            params = _authorize_params(app, **extra)
            answer = session.get("/oauth/authorize", params=params)
            assert answer.status_code == 303, (extra, answer.text)
            query = parse_qs(urlsplit(answer.headers["location"]).query)
            assert query["error"] == [error] and query["state"] == [params["state"]]
            assert "code" not in query
        # The consent form needs the session's CSRF token; denying sends access_denied.
        params = _authorize_params(app)
        no_header = {"X-CSRF-Token": ""}
        for csrf in ({}, {"csrf_token": "forged"}):
            form = {**params, **csrf, "decision": "approve"}
            forged = session.post("/oauth/authorize", data=form, headers=no_header)
            assert forged.status_code == 403 and "location" not in forged.headers
        denied = session.post(
            "/oauth/authorize",
            data={**params, "csrf_token": session.headers["X-CSRF-Token"], "decision": "deny"},
        )
        assert denied.status_code == 303
        assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]
        token = new_token(session, ["user:admin", "org:admin"])["token_code"]
    # Only a browser session approves: not an anonymous caller, not a bearer token.
    params = _authorize_params(app)
    with anonymous(registry) as nobody:
        assert nobody.get("/oauth/authorize", params=params).status_code == 401
    with bearer_client(registry, token) as client:
        assert client.get("/oauth/authorize", params=params).status_code == 401
        form = {**params, "decision": "approve"}
        assert client.post("/oauth/authorize", data=form).status_code == 401


def test_access_token_refuses_bad_exchanges(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    app = _register(owner, org.name)
    other = _register(owner, org.name, name="other app")
    with sign_in(registry, org.member.auth) as session:
        code = _approve(session, _authorize_params(app))
    refusals = [
        (_exchange(registry, app, code, client_secret="wrong"), 401, "invalid_client"),
        (_exchange(registry, app, code, grant_type="password"), 400, "unsupported_grant_type"),
        (_exchange(registry, app, code, redirect_uri=REDIRECT + "x"), 400, "invalid_grant"),
        (_exchange(registry, other, code), 400, "invalid_grant"),  # another client's code
        (_exchange(registry, app, "x" * 60), 400, "invalid_grant"),
        (_exchange(registry, app, ""), 400, "invalid_grant"),
        (_exchange(registry, app, code, code_verifier="v" * 50), 400, "invalid_grant"),
    ]
    for answer, status, error in refusals:
        assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
    # None of them used the code up.
    assert _exchange(registry, app, code).status_code == 200


def test_pkce(registry: RegistryProcess, org: Org, owner: httpx.Client) -> None:
    app = _register(owner, org.name)
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    params = _authorize_params(app, code_challenge=challenge, code_challenge_method="S256")
    with sign_in(registry, org.member.auth) as session:
        code = _approve(session, params)
    assert _exchange(registry, app, code).json()["error"] == "invalid_grant"
    wrong = _exchange(registry, app, code, code_verifier=secrets.token_urlsafe(48))
    assert wrong.json()["error"] == "invalid_grant"
    right = _exchange(registry, app, code, code_verifier=verifier)
    assert right.status_code == 200, right.text


def test_oauth_token_never_exceeds_its_user(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    """A member may approve org:admin for an application; the token still cannot
    administer the organization, because its user cannot."""
    app = _register(owner, org.name)
    with sign_in(registry, org.member.auth) as session:
        code = _approve(session, _authorize_params(app, scope="org:admin user:admin"))
    token = _exchange(registry, app, code).json()["access_token"]
    with bearer_client(registry, token) as client:
        assert_api_error(client.get(_apps(org.name)), 403)
        assert_api_error(client.post(_apps(org.name), json={"name": "x"}), 403)
        assert client.get("/api/v1/user/").json()["username"] == org.member.name


# -- direct token generation --------------------------------------------------------------


def test_generate_token_for_oneself(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    app = _register(owner, org.name)
    path = f"{_apps(org.name)}/{app['client_id']}/token"
    mark = last_id(registry)
    answer = owner.post(path, json={"scopes": ["user:read"]})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "user:read"
    with bearer_client(registry, body["access_token"]) as client:
        assert client.get("/api/v1/user/").json()["username"] == org.owner.name
        assert_api_error(client.get(_apps(org.name)), 403)  # no org:admin in it
    logged = assert_logged(
        registry, "create_oauth_token", actor=org.owner.name, namespace=org.name, after=mark
    )
    assert logged.details["grant"] == "direct"

    for bad in ({"scopes": []}, {"scopes": ["nope"]}, {"scopes": ["user:read"], "user": "x"}):
        assert_api_error(owner.post(path, json=bad), 400)
    assert_api_error(owner.post(path, json={"scopes": ["super:user"]}), 403)
    # A token makes no wider token.
    limited = new_token(owner, ["org:admin"])["token_code"]
    with bearer_client(registry, limited) as client:
        assert_api_error(client.post(path, json={"scopes": ["user:admin"]}), 403)
        assert client.post(path, json={"scopes": ["org:admin"]}).status_code == 201


def test_deleting_an_application_revokes_its_tokens(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    app = _register(owner, org.name)
    path = f"{_apps(org.name)}/{app['client_id']}"
    token = owner.post(path + "/token", json={"scopes": ["user:read"]}).json()["access_token"]
    with bearer_client(registry, token) as client:
        assert client.get("/api/v1/user/").status_code == 200
        assert owner.delete(path).status_code == 204
        assert_api_error(client.get("/api/v1/user/"), 401)


def test_oauth_tokens_issue_no_credentials(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    """A third party's token must not mint app tokens, CLI passwords or other OAuth
    tokens: those would survive the deletion of its application."""
    app = _register(owner, org.name)
    path = f"{_apps(org.name)}/{app['client_id']}/token"
    scopes = ["user:admin", "org:admin"]
    token = owner.post(path, json={"scopes": scopes}).json()["access_token"]
    with bearer_client(registry, token) as client:
        answer = client.post("/api/v1/user/apptoken", json={"title": "x", "scopes": []})
        assert_api_error(answer, 403)
        answer = client.post("/api/v1/user/clientkey", json={"password": org.owner.password})
        assert_api_error(answer, 403)
        assert_api_error(client.post(path, json={"scopes": ["user:read"]}), 403)
        assert client.get("/api/v1/user/apptoken").json()["tokens"] == []


def test_oauth_tokens_act_on_the_registry_only_within_their_scopes(
    registry: RegistryProcess, org: Org, owner: httpx.Client
) -> None:
    """An OAuth token belongs to a third-party application: on /v2 it may pull only with
    repo:read, push only with repo:write, create repositories only with repo:create, and
    never beyond its user (SECURITY.md 1.4, scoped credentials on the registry)."""
    repo = f"{org.name}/scoped"
    with registry.client() as su:  # the repository exists, with one blob
        digest = push_blob(su, repo, b"scoped layer")
    app = _register(owner, org.name)
    path = f"{_apps(org.name)}/{app['client_id']}/token"

    def token(*scopes: str) -> str:
        answer = owner.post(path, json={"scopes": list(scopes)})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["access_token"])

    def can(secret: str, method: str, url: str) -> int:
        with registry.client(auth=("$oauthtoken", secret)) as c:
            return c.request(method, url).status_code

    blob = f"/v2/{repo}/blobs/{digest}"
    uploads = f"/v2/{repo}/blobs/uploads/"
    fresh = f"/v2/{org.name}/r{secrets.token_hex(4)}/blobs/uploads/"
    user_only = token("user:read")
    assert can(user_only, "GET", blob) == 403
    assert can(user_only, "POST", uploads) == 403
    reader = token("repo:read")
    assert can(reader, "GET", blob) == 200
    assert can(reader, "POST", uploads) == 403
    writer = token("repo:write")
    assert can(writer, "GET", blob) == 200
    assert can(writer, "POST", uploads) == 202
    assert can(writer, "POST", fresh) == 403  # creating needs repo:create
    assert can(token("repo:write", "repo:create"), "POST", fresh) == 202
    # The token endpoint grants the same intersection.
    with registry.client(auth=("$oauthtoken", reader)) as c:
        answer = c.get(
            "/v2/auth", params={"service": "cargohold", "scope": f"repository:{repo}:pull,push"}
        )
    assert answer.status_code == 200
    claims = answer.json()["token"].split(".")[1]
    padded = claims + "=" * (-len(claims) % 4)
    access = json.loads(base64.urlsafe_b64decode(padded))["access"]
    assert access == [{"type": "repository", "name": repo, "actions": ["pull"]}]
