"""The OIDC test provider (tests/support/oidc_provider.py) driven by a standard relying party.

authlib plays cargohold's part: discovery, authorization code flow with PKCE (S256), state and
nonce, code exchange, ID token validation against the provider's JWKS. httpx plays the browser.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidClaimError
from joserfc.jwk import KeySet

from tests.support.oidc_provider import (
    OidcAccount,
    OidcClient,
    OidcLoginError,
    OidcProvider,
    free_port,
)

with warnings.catch_warnings():
    # authlib 1.9 warns that its httpx integration prefers the `httpx2` package when present.
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client

REDIRECT_URI = f"http://127.0.0.1:{free_port()}/oidc/callback"  # nothing listens: never followed
SCOPE = "openid profile email groups"

ALICE = OidcAccount(
    sub="u-alice",
    username="alice",
    password="alice-password",
    email="alice@example.org",
    groups=["registry-admins", "team-a"],
    name="Alice Example",
)
BOB = OidcAccount(sub="u-bob", username="bob", password="bob-password", email="bob@example.org")
BASIC = OidcClient("cargohold-basic", "basic-secret", [REDIRECT_URI])
POST = OidcClient(
    "cargohold-post",
    "post-secret",
    [REDIRECT_URI],
    token_endpoint_auth_method="client_secret_post",
    post_logout_redirect_uris=[f"{REDIRECT_URI}/logged-out"],
)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(
        tmp_path_factory.mktemp("oidc"), clients=[BASIC, POST], accounts=[ALICE, BOB]
    ) as op:
        yield op


@pytest.fixture(scope="module")
def metadata(provider: OidcProvider) -> dict[str, Any]:
    return provider.metadata()


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def relying_party(client: OidcClient) -> OAuth2Client:
    return OAuth2Client(
        client_id=client.client_id,
        client_secret=client.client_secret,
        scope=SCOPE,
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        token_endpoint_auth_method=client.token_endpoint_auth_method,
        timeout=10.0,
    )


class Authorization:
    """One authorization request as a relying party makes it, with its secrets."""

    def __init__(self, rp: OAuth2Client, metadata: dict[str, Any], **extra: str) -> None:
        self.code_verifier = generate_token(48)
        self.nonce = generate_token(20)
        self.url, self.state = rp.create_authorization_url(
            metadata["authorization_endpoint"],
            code_verifier=self.code_verifier,
            nonce=self.nonce,
            **extra,
        )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def verify_id_token(
    id_token: str,
    metadata: dict[str, Any],
    *,
    client_id: str,
    nonce: str,
    access_token: str,
) -> dict[str, Any]:
    """Signature against the provider's JWKS, then iss, aud, exp, iat, nonce and at_hash."""
    jwks = httpx.get(metadata["jwks_uri"], timeout=10.0).json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    claims = CodeIDToken(
        token.claims,
        token.header,
        {
            "iss": {"essential": True, "value": metadata["issuer"]},
            "aud": {"essential": True, "value": client_id},
        },
        {"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    claims.validate(leeway=30)
    return dict(claims)


def test_discovery(provider: OidcProvider, metadata: dict[str, Any]) -> None:
    assert metadata["issuer"] == provider.issuer
    assert provider.issuer.startswith("http://127.0.0.1:")
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert metadata[endpoint].startswith(f"{provider.issuer}/")
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["response_types_supported"] == ["code"]
    assert {"openid", "profile", "email", "groups"} <= set(metadata["scopes_supported"])
    assert {"preferred_username", "email", "email_verified", "groups"} <= set(
        metadata["claims_supported"]
    )
    assert {"client_secret_basic", "client_secret_post"} <= set(
        metadata["token_endpoint_auth_methods_supported"]
    )
    keys = httpx.get(metadata["jwks_uri"], timeout=10.0).json()["keys"]
    assert [key["kty"] for key in keys] == ["RSA"]
    assert all("d" not in key for key in keys)  # public halves only


@pytest.mark.parametrize("client", [BASIC, POST], ids=lambda c: c.token_endpoint_auth_method)
def test_authorization_code_flow_with_pkce(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client, client: OidcClient
) -> None:
    with relying_party(client) as rp:
        auth = Authorization(rp, metadata)
        request = query(auth.url)
        assert request["code_challenge_method"] == "S256"
        assert request["nonce"] == auth.nonce

        redirect = provider.login(browser, auth.url, "alice", "alice-password")

        assert redirect.startswith(f"{REDIRECT_URI}?")
        response = query(redirect)
        assert response["state"] == auth.state
        assert response["iss"] == provider.issuer  # RFC 9207
        assert response["code"]
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=redirect,
            state=auth.state,
            code_verifier=auth.code_verifier,
        )
        assert token["token_type"].lower() == "bearer"
        assert set(token["scope"].split()) == set(SCOPE.split())

        claims = verify_id_token(
            token["id_token"],
            metadata,
            client_id=client.client_id,
            nonce=auth.nonce,
            access_token=token["access_token"],
        )
        assert claims["iss"] == provider.issuer
        assert claims["aud"] == client.client_id
        assert claims["sub"] == "u-alice"
        assert claims["preferred_username"] == "alice"
        assert claims["name"] == "Alice Example"
        assert claims["email"] == "alice@example.org"
        assert claims["email_verified"] is True
        assert claims["groups"] == ["registry-admins", "team-a"]

        userinfo = rp.get(metadata["userinfo_endpoint"]).json()
        assert userinfo == {
            "sub": "u-alice",
            "preferred_username": "alice",
            "name": "Alice Example",
            "email": "alice@example.org",
            "email_verified": True,
            "groups": ["registry-admins", "team-a"],
        }


def test_claims_follow_the_scopes(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata, scope="openid email")
        redirect = provider.login(browser, auth.url, "bob", "bob-password")
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=redirect,
            state=auth.state,
            code_verifier=auth.code_verifier,
        )
    claims = verify_id_token(
        token["id_token"],
        metadata,
        client_id=BASIC.client_id,
        nonce=auth.nonce,
        access_token=token["access_token"],
    )
    assert claims["sub"] == "u-bob"
    assert claims["email"] == "bob@example.org"
    assert "groups" not in claims
    assert "preferred_username" not in claims


def test_id_token_validation_is_not_vacuous(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
        redirect = provider.login(browser, auth.url, "alice", "alice-password")
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=redirect,
            state=auth.state,
            code_verifier=auth.code_verifier,
        )
    good = {"nonce": auth.nonce, "access_token": token["access_token"]}
    verify_id_token(token["id_token"], metadata, client_id=BASIC.client_id, **good)
    with pytest.raises(InvalidClaimError, match="nonce"):
        verify_id_token(
            token["id_token"],
            metadata,
            client_id=BASIC.client_id,
            nonce="another-nonce",
            access_token=token["access_token"],
        )
    with pytest.raises(InvalidClaimError, match="aud"):
        verify_id_token(token["id_token"], metadata, client_id=POST.client_id, **good)
    header, payload, signature = token["id_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(BadSignatureError):
        verify_id_token(forged, metadata, client_id=BASIC.client_id, **good)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong"),
        ("alice", ""),
        ("nobody", "alice-password"),
        ("u-alice", "alice-password"),
    ],
)
def test_wrong_credentials_yield_no_code(
    provider: OidcProvider,
    metadata: dict[str, Any],
    browser: httpx.Client,
    username: str,
    password: str,
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
    with pytest.raises(OidcLoginError, match="login rejected") as failure:
        provider.login(browser, auth.url, username, password)
    assert failure.value.status_code == 401
    page = failure.value.response
    assert page.url.host == "127.0.0.1"
    assert str(page.url).startswith(f"{provider.issuer}/interaction/")
    assert "Invalid username or password" in page.text
    assert "code=" not in page.text


def test_retry_after_a_wrong_password(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    """The same interaction accepts the right password after a wrong one, like a real form."""
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
    with pytest.raises(OidcLoginError) as failure:
        provider.login(browser, auth.url, "alice", "wrong")
    form_action = str(failure.value.response.url)
    assert form_action.endswith("/login")
    redirect = provider.browse(
        browser, "POST", form_action, {"login": "alice", "password": "alice-password"}
    )
    assert isinstance(redirect, str)
    assert query(redirect)["state"] == auth.state
    assert "code" in query(redirect)


def test_pkce_is_required(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with OAuth2Client(
        client_id=BASIC.client_id, scope=SCOPE, redirect_uri=REDIRECT_URI, timeout=10.0
    ) as rp:
        url, state = rp.create_authorization_url(
            metadata["authorization_endpoint"], nonce=generate_token(20)
        )
    assert "code_challenge" not in url
    redirect = provider.login(browser, url, "alice", "alice-password")
    response = query(redirect)
    assert "code" not in response
    assert response["error"] == "invalid_request"
    assert "PKCE" in response["error_description"]
    assert response["state"] == state


def test_code_needs_the_matching_verifier(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
        redirect = provider.login(browser, auth.url, "alice", "alice-password")
        exchange = httpx.post(
            metadata["token_endpoint"],
            auth=(BASIC.client_id, BASIC.client_secret),
            data={
                "grant_type": "authorization_code",
                "code": query(redirect)["code"],
                "redirect_uri": REDIRECT_URI,
                "code_verifier": generate_token(48),
            },
            timeout=10.0,
        )
        assert exchange.status_code == 400
        assert exchange.json()["error"] == "invalid_grant"


def test_code_is_single_use(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
        redirect = provider.login(browser, auth.url, "alice", "alice-password")
    exchange = {
        "grant_type": "authorization_code",
        "code": query(redirect)["code"],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": auth.code_verifier,
    }
    credentials = (BASIC.client_id, BASIC.client_secret)
    first = httpx.post(metadata["token_endpoint"], auth=credentials, data=exchange, timeout=10.0)
    assert first.status_code == 200
    again = httpx.post(metadata["token_endpoint"], auth=credentials, data=exchange, timeout=10.0)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_wrong_client_secret_is_rejected(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
        redirect = provider.login(browser, auth.url, "alice", "alice-password")
    exchange = httpx.post(
        metadata["token_endpoint"],
        auth=(BASIC.client_id, "not-the-secret"),
        data={
            "grant_type": "authorization_code",
            "code": query(redirect)["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": auth.code_verifier,
        },
        timeout=10.0,
    )
    assert exchange.status_code == 401
    assert exchange.json()["error"] == "invalid_client"


def test_unknown_redirect_uri_shows_an_error_page(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with OAuth2Client(
        client_id=BASIC.client_id,
        scope=SCOPE,
        redirect_uri="http://127.0.0.1:1/elsewhere",
        code_challenge_method="S256",
        timeout=10.0,
    ) as rp:
        url, _ = rp.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=generate_token(48)
        )
    with pytest.raises(OidcLoginError) as failure:
        provider.login(browser, url, "alice", "alice-password")
    assert failure.value.status_code == 400
    assert "redirect_uri" in failure.value.response.text


def test_cancel_returns_access_denied(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(BASIC) as rp:
        auth = Authorization(rp, metadata)
    response = query(provider.deny(browser, auth.url))
    assert response["error"] == "access_denied"
    assert response["state"] == auth.state
    assert "code" not in response


def test_session_reuse_and_logout(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    with relying_party(POST) as rp:
        first = Authorization(rp, metadata)
        redirect = provider.login(browser, first.url, "alice", "alice-password")
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=redirect,
            state=first.state,
            code_verifier=first.code_verifier,
        )
        # A second authorization in the same browser: single sign-on, no form.
        second = Authorization(rp, metadata)
        redirect = provider.login(browser, second.url, "", "", forget_session=False)
        assert query(redirect)["state"] == second.state
        assert "code" in query(redirect)

    logout_state = generate_token(20)
    logout_url = f"{metadata['end_session_endpoint']}?" + urlencode(
        {
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": POST.post_logout_redirect_uris[0],
            "state": logout_state,
        }
    )
    back = provider.logout(browser, logout_url)
    assert back.startswith(POST.post_logout_redirect_uris[0])
    assert query(back)["state"] == logout_state
    assert "oidc_session" not in {c.name for c in browser.cookies.jar if c.value}
    # The session is gone: reusing it now shows the form again, so empty credentials fail.
    with relying_party(POST) as rp:
        third = Authorization(rp, metadata)
    with pytest.raises(OidcLoginError, match="login rejected"):
        provider.login(browser, third.url, "", "", forget_session=False)


def test_clients_and_accounts_change_while_running(
    provider: OidcProvider, metadata: dict[str, Any], browser: httpx.Client
) -> None:
    late = provider.add_client("late-client", "late-secret", [REDIRECT_URI])
    provider.add_account("u-carol", "carol", "carol-password", groups=["late"])
    with relying_party(late) as rp:
        auth = Authorization(rp, metadata)
        redirect = provider.login(browser, auth.url, "carol", "carol-password")
        token = rp.fetch_token(
            metadata["token_endpoint"],
            authorization_response=redirect,
            state=auth.state,
            code_verifier=auth.code_verifier,
        )
    claims = verify_id_token(
        token["id_token"],
        metadata,
        client_id="late-client",
        nonce=auth.nonce,
        access_token=token["access_token"],
    )
    assert (claims["preferred_username"], claims["groups"]) == ("carol", ["late"])
    assert "email" not in claims

    provider.accounts = [a for a in provider.accounts if a.sub != "u-carol"]
    with relying_party(late) as rp:
        auth = Authorization(rp, metadata)
    with pytest.raises(OidcLoginError, match="login rejected"):
        provider.login(browser, auth.url, "carol", "carol-password")


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_process_group_ends_even_when_the_block_fails(tmp_path: Path) -> None:
    op = OidcProvider(tmp_path, clients=[BASIC], accounts=[ALICE])
    with pytest.raises(RuntimeError, match="boom"), op:
        pid = op.pid
        assert pid is not None
        assert _alive(pid)
        issuer = op.issuer
        raise RuntimeError("boom")
    assert pid is not None
    assert not _alive(pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=2.0)
    assert "listening" in (tmp_path / "oidc-provider.log").read_text()
