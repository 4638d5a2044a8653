"""OpenID Connect sign-in against a real provider (npm oidc-provider, tests/support/
oidc_provider.py), with httpx as the browser: cargohold's /oauth2/oidc/login sends it to
the provider, the provider's login form signs the user in, the browser comes back to
/oauth2/oidc/callback, and cargohold starts a web session. Also: state, replayed codes,
ID tokens for another audience or from another issuer, team sync from the groups claim,
and an OIDC user pushing with an app token."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from authlib.common.security import generate_token
from pydantic import SecretStr

from cargohold.auth.oidc import OidcClient as RelyingParty
from cargohold.auth.oidc import OidcError
from cargohold.settings import OidcSettings
from tests.integration.identity_support import (
    Admin,
    audit,
    push,
    rows,
    sync_group,
    team_members,
    upload_status,
    user_row,
)
from tests.support.identity import app_token, unique_name
from tests.support.oidc_provider import OidcAccount, OidcClient, OidcProvider
from tests.support.server import ADMIN_USER, RegistryProcess

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib prefers the httpx2 package when present
    from authlib.integrations.httpx_client import OAuth2Client

CLIENT_ID = "cargohold"
CLIENT_SECRET = "cargohold-oidc-secret"
SCOPES = ["openid", "profile", "email", "groups"]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryProcess, OidcProvider]]:
    server = RegistryProcess(tmp_path_factory.mktemp("oidc-registry"))  # picks its port
    callback = f"{server.url}/oauth2/oidc/callback"
    with OidcProvider(
        tmp_path_factory.mktemp("oidc-provider"),
        clients=[
            OidcClient(CLIENT_ID, CLIENT_SECRET, [callback]),
            OidcClient("another-client", "another-secret", [callback]),
        ],
    ) as provider:
        server.extra_env.update(
            {
                "CARGOHOLD_AUTH__PROVIDER": "oidc",
                "CARGOHOLD_AUTH__OIDC__ISSUER": provider.issuer,
                "CARGOHOLD_AUTH__OIDC__CLIENT_ID": CLIENT_ID,
                "CARGOHOLD_AUTH__OIDC__CLIENT_SECRET": CLIENT_SECRET,
                "CARGOHOLD_AUTH__OIDC__SCOPES": json.dumps(SCOPES),
            }
        )
        server.start()
        try:
            yield server, provider
        finally:
            server.stop()


@pytest.fixture(scope="module")
def registry_oidc(setup: tuple[RegistryProcess, OidcProvider]) -> RegistryProcess:
    return setup[0]


@pytest.fixture(scope="module")
def provider(setup: tuple[RegistryProcess, OidcProvider]) -> OidcProvider:
    return setup[1]


@pytest.fixture(scope="module")
def admin(registry_oidc: RegistryProcess) -> Admin:
    return Admin(registry_oidc)


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        yield client


def new_account(provider: OidcProvider, *groups: str, username: str | None = None) -> OidcAccount:
    name = username or unique_name("o")
    return provider.add_account(
        f"sub-{unique_name()}",
        name,
        f"pw-{name}",
        email=f"{name}@example.org",
        groups=groups,
        name=f"User {name}",
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = query(url) | changes
    return urlunsplit(parts._replace(query=urlencode(params)))


def start(server: RegistryProcess, browser: httpx.Client) -> str:
    """GET /oauth2/oidc/login: the provider URL cargohold sends the browser to."""
    r = browser.get(f"{server.url}/oauth2/oidc/login", follow_redirects=False)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def sign_in(
    server: RegistryProcess, provider: OidcProvider, browser: httpx.Client, account: OidcAccount
) -> httpx.Response:
    """The whole browser sign-in; cargohold's answer to the callback."""
    back = provider.login(browser, start(server, browser), account.username, account.password)
    assert back.startswith(f"{server.url}/oauth2/oidc/callback?"), back
    return browser.get(back, follow_redirects=False)


def sessions_of(server: RegistryProcess, username: str) -> int:
    found = rows(
        server,
        """SELECT COUNT(*) FROM web_session s JOIN user_account u ON u.id = s.user_id
           WHERE u.username = :name""",
        name=username,
    )
    return int(found[0][0])


# -- sign-in -------------------------------------------------------------------------------


def test_browser_sign_in_creates_the_user_and_a_session(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider)
    r = browser.get(f"{registry_oidc.url}/oauth2/oidc/login", follow_redirects=False)
    assert r.status_code == 302
    authorize = r.headers["location"]
    assert authorize.startswith(provider.metadata()["authorization_endpoint"] + "?")
    request = query(authorize)
    assert request["response_type"] == "code"
    assert request["client_id"] == CLIENT_ID
    assert request["redirect_uri"] == f"{registry_oidc.url}/oauth2/oidc/callback"
    assert request["code_challenge_method"] == "S256"
    assert len(request["code_challenge"]) == 43  # base64url of a SHA-256
    assert request["state"] and request["nonce"] and request["state"] != request["nonce"]
    assert set(request["scope"].split()) == set(SCOPES)
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("cargohold_oidc=")
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/oauth2/oidc" in cookie
    # The state cookie reveals none of the secrets (sealed, not just signed).
    sealed = browser.cookies["cargohold_oidc"]
    for secret in (request["state"], request["nonce"]):
        assert secret not in sealed and secret not in base64.urlsafe_b64decode(
            sealed + "=="
        ).decode("latin-1")

    back = provider.login(browser, authorize, account.username, account.password)
    r = browser.get(back, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"
    session_cookie = next(c for c in r.headers.get_list("set-cookie") if "cargohold_session=" in c)
    assert "HttpOnly" in session_cookie and "samesite=lax" in session_cookie.lower()
    assert "cargohold_oidc" not in browser.cookies  # the state is single use

    assert user_row(registry_oidc, account.username) == {
        "username": account.username,
        "email": account.email,
        "provider": "oidc",
        "external_id": account.sub,
        "superuser": False,
        "namespace_kind": "user",
    }
    # The session works on the API.
    r = browser.get(f"{registry_oidc.url}/api/v1/user/")
    assert r.status_code == 200, r.text
    assert r.json()["username"] == account.username
    assert sessions_of(registry_oidc, account.username) == 1
    logins = wait_for(
        lambda: [json.loads(d) for d in audit(registry_oidc, "login") if account.sub in d],
        "the login audit entry",
    )
    assert logins[0]["method"] == "oidc"

    # A second sign-in updates the same user (new e-mail), no second account.
    provider.add_account(account.sub, account.username, account.password, email="new@example.org")
    assert sign_in(registry_oidc, provider, browser, account).status_code == 303
    assert user_row(registry_oidc, account.username)["email"] == "new@example.org"  # type: ignore[index]


def test_wrong_or_missing_state_is_rejected(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider)
    back = provider.login(
        browser, start(registry_oidc, browser), account.username, account.password
    )
    tampered = with_query(back, state=generate_token(43))
    r = browser.get(tampered, follow_redirects=False)
    assert r.status_code == 400
    assert "state" in r.text
    assert "set-cookie" not in r.headers or "cargohold_session" not in r.headers["set-cookie"]
    # The state cookie is gone: the genuine answer cannot be used afterwards either.
    assert browser.get(back, follow_redirects=False).status_code == 400

    # A sign-in started in one browser cannot be finished in another (login CSRF).
    back = provider.login(
        browser, start(registry_oidc, browser), account.username, account.password
    )
    with httpx.Client(timeout=30.0) as other:
        r = other.get(back, follow_redirects=False)
        assert r.status_code == 400
        assert "cargohold_session" not in other.cookies
    assert user_row(registry_oidc, account.username) is None
    failures = wait_for(
        lambda: [d for d in audit(registry_oidc, "login_failure") if '"oidc"' in d],
        "login_failure entries",
    )
    assert failures


def test_a_replayed_code_is_rejected(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider)
    back = provider.login(
        browser, start(registry_oidc, browser), account.username, account.password
    )
    sealed = browser.cookies["cargohold_oidc"]
    assert browser.get(back, follow_redirects=False).status_code == 303
    assert sessions_of(registry_oidc, account.username) == 1
    # Again in the same browser: the state cookie was used up.
    assert browser.get(back, follow_redirects=False).status_code == 400
    # Again with the state cookie put back (an attacker who copied both): the provider
    # refuses a code it has already exchanged.
    with httpx.Client(timeout=30.0) as attacker:
        attacker.cookies.set("cargohold_oidc", sealed, domain="127.0.0.1", path="/oauth2/oidc")
        r = attacker.get(back, follow_redirects=False)
        assert r.status_code == 400
        assert "refused the code" in r.text
        assert "cargohold_session" not in attacker.cookies
    assert sessions_of(registry_oidc, account.username) == 1


def test_an_answer_naming_another_issuer_is_rejected(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider)
    back = provider.login(
        browser, start(registry_oidc, browser), account.username, account.password
    )
    assert query(back)["iss"] == provider.issuer  # RFC 9207
    r = browser.get(with_query(back, iss="http://127.0.0.1:1"), follow_redirects=False)
    assert r.status_code == 400
    assert "issuer" in r.text
    assert user_row(registry_oidc, account.username) is None


def test_the_user_refusing_at_the_provider(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    back = provider.deny(browser, start(registry_oidc, browser))
    assert query(back)["error"] == "access_denied"
    r = browser.get(back, follow_redirects=False)
    assert r.status_code == 403
    assert "cargohold_session" not in browser.cookies


def test_no_takeover_of_other_accounts(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    # The username claim names the local superuser: refused, the local account unchanged.
    impostor = new_account(provider, username=ADMIN_USER)
    r = sign_in(registry_oidc, provider, browser, impostor)
    assert r.status_code == 403
    assert user_row(registry_oidc, ADMIN_USER)["provider"] == "database"  # type: ignore[index]
    # Another subject whose username claim matches an existing OIDC user: refused too.
    first = new_account(provider)
    assert sign_in(registry_oidc, provider, browser, first).status_code == 303
    # The provider signs in by this name; cargohold lower-cases the claim: same user name.
    clash = provider.add_account(f"sub-{unique_name()}", first.username.upper(), "pw-clash")
    r = sign_in(registry_oidc, provider, browser, clash)
    assert r.status_code == 403
    assert user_row(registry_oidc, first.username)["external_id"] == first.sub  # type: ignore[index]


def test_unusable_usernames_are_refused(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider, username="Not a name!")
    r = sign_in(registry_oidc, provider, browser, account)
    assert r.status_code == 400
    assert "cannot be used" in r.text


# -- ID token validation (cargohold's relying party against the real provider) -------------


def relying_party(provider: OidcProvider, client_id: str = CLIENT_ID) -> RelyingParty:
    return RelyingParty(
        OidcSettings(
            issuer=provider.issuer,
            client_id=client_id,
            client_secret=SecretStr(CLIENT_SECRET),
            scopes=SCOPES,
        )
    )


def id_token_for(
    provider: OidcProvider, client: OidcClient, account: OidcAccount, redirect_uri: str
) -> tuple[dict[str, Any], str]:
    """An ID token the provider issued to `client` (authlib plays that client): (token
    response, nonce)."""
    metadata = provider.metadata()
    nonce = generate_token(20)
    verifier = generate_token(48)
    with OAuth2Client(
        client_id=client.client_id,
        client_secret=client.client_secret,
        scope=" ".join(SCOPES),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=30.0,
    ) as rp:
        url, state = rp.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
        )
        with httpx.Client(timeout=30.0) as browser:
            back = provider.login(browser, url, account.username, account.password)
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=back,
            state=state,
            code_verifier=verifier,
        )
    return dict(token), nonce


def test_id_tokens_for_another_audience_or_from_another_issuer_are_rejected(
    registry_oidc: RegistryProcess, provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    callback = f"{registry_oidc.url}/oauth2/oidc/callback"
    account = new_account(provider)
    ours = next(c for c in provider.clients if c.client_id == CLIENT_ID)
    theirs = next(c for c in provider.clients if c.client_id == "another-client")
    rp = relying_party(provider)

    async def validate(token: dict[str, Any], nonce: str) -> dict[str, Any]:
        meta = await rp.metadata()
        return await rp.validate_id_token(
            meta, token["id_token"], nonce=nonce, access_token=token["access_token"]
        )

    good, nonce = id_token_for(provider, ours, account, callback)
    claims = asyncio.run(validate(good, nonce))
    assert claims["sub"] == account.sub and claims["aud"] == CLIENT_ID

    with pytest.raises(OidcError, match="nonce"):
        asyncio.run(validate(good, "another-nonce"))
    other_audience, other_nonce = id_token_for(provider, theirs, account, callback)
    with pytest.raises(OidcError, match="aud"):
        asyncio.run(validate(other_audience, other_nonce))

    header, payload, signature = good["id_token"].split(".")
    forged = dict(good, id_token=f"{header}.{payload}.{signature[:-6]}AAAAAA")
    with pytest.raises(OidcError):
        asyncio.run(validate(forged, nonce))
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(OidcError):
        asyncio.run(validate(dict(good, id_token=f"{unsigned_header}.{payload}."), nonce))

    # A second provider (another issuer, other keys), same client and user names.
    with OidcProvider(
        tmp_path_factory.mktemp("oidc-elsewhere"),
        clients=[OidcClient(CLIENT_ID, CLIENT_SECRET, [callback])],
        accounts=[account],
    ) as elsewhere:
        foreign, foreign_nonce = id_token_for(elsewhere, ours, account, callback)
        with pytest.raises(OidcError):
            asyncio.run(validate(foreign, foreign_nonce))
        # Even checked against the right keys, the issuer does not match ours.
        mixed = relying_party(provider)

        async def with_foreign_keys() -> None:
            meta = await mixed.metadata()
            foreign_meta = await relying_party(elsewhere).metadata()
            keys = await relying_party(elsewhere).keys(foreign_meta)
            mixed._keys = (time.monotonic(), keys)
            await mixed.validate_id_token(
                meta,
                foreign["id_token"],
                nonce=foreign_nonce,
                access_token=foreign["access_token"],
            )

        with pytest.raises(OidcError, match="iss"):
            asyncio.run(with_foreign_keys())


# -- team sync from the groups claim ------------------------------------------------------


def test_groups_claim_syncs_teams(
    registry_oidc: RegistryProcess, provider: OidcProvider, admin: Admin, browser: httpx.Client
) -> None:
    group = unique_name("grp")
    org = admin.org_with_team("devs", role="creator")
    r = admin.set_sync(org, "devs", group_name=group)
    assert r.status_code == 200, r.text
    assert r.json()["synced"] == {"service": "oidc", "config": {"group_name": group}}
    assert sync_group(registry_oidc, org, "devs") == group
    assert admin.set_sync(org, "devs", group_dn="cn=x").status_code == 400  # LDAP's field

    member = new_account(provider, group, "unrelated")
    outsider = new_account(provider, "unrelated")
    assert sign_in(registry_oidc, provider, browser, member).status_code == 303
    assert sign_in(registry_oidc, provider, browser, outsider).status_code == 303
    assert team_members(registry_oidc, org, "devs") == {member.username: True}

    # The group is gone from the claim: the next sign-in leaves the team.
    provider.add_account(member.sub, member.username, member.password, groups=["unrelated"])
    provider.add_account(outsider.sub, outsider.username, outsider.password, groups=[group])
    assert sign_in(registry_oidc, provider, browser, member).status_code == 303
    assert sign_in(registry_oidc, provider, browser, outsider).status_code == 303
    assert team_members(registry_oidc, org, "devs") == {outsider.username: True}
    added = wait_for(
        lambda: [json.loads(d) for d in audit(registry_oidc, "add_team_member", org)],
        "add_team_member entries",
    )
    assert {(e["member"], e["synced"]) for e in added} == {
        (member.username, True),
        (outsider.username, True),
    }


# -- on the registry: app tokens, no passwords --------------------------------------------


def test_oidc_user_pushes_with_an_app_token_not_a_password(
    registry_oidc: RegistryProcess, provider: OidcProvider, browser: httpx.Client
) -> None:
    account = new_account(provider)
    assert sign_in(registry_oidc, provider, browser, account).status_code == 303
    name = account.username
    # The provider's password is no registry password.
    with registry_oidc.client(auth=(name, account.password)) as c:
        assert c.get("/v2/").status_code == 401
    # An administrator's CLI makes one...
    token = app_token(registry_oidc, name)
    push(registry_oidc, ("$app", token), f"{name}/app")
    # ...or the user, with the browser session (and its CSRF token).
    csrf = browser.get(f"{registry_oidc.url}/api/v1/csrf_token")
    assert csrf.status_code == 200, csrf.text
    r = browser.post(
        f"{registry_oidc.url}/api/v1/user/apptoken",
        json={"title": "laptop", "scopes": ["repo:read", "repo:write"]},
        headers={"X-CSRF-Token": csrf.json()["csrf_token"]},
    )
    assert r.status_code == 201, r.text
    own = r.json()["token"]["token_code"]
    push(registry_oidc, (name, own), f"{name}/other")
    with registry_oidc.client(auth=(name, own)) as c:
        assert c.get(f"/v2/{name}/app/tags/list").json()["tags"] == ["latest"]
    assert upload_status(registry_oidc, ("$app", token), f"{ADMIN_USER}/app") == 403
    # Database superusers keep their password.
    with registry_oidc.client() as c:
        assert c.get("/v2/").status_code == 200


def test_disabled_when_the_provider_is_not_oidc(registry: RegistryProcess) -> None:
    with registry.client(auth=None) as c:
        assert c.get("/oauth2/oidc/login", follow_redirects=False).status_code == 404
        assert c.get("/oauth2/oidc/callback?code=x&state=y").status_code == 404
