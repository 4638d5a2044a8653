"""OpenID Connect relying party: discovery, the authorization request (code flow, PKCE
S256, state, nonce), the code exchange and ID token validation.

The ID token is checked against the provider's JWKS (asymmetric algorithms only: never
`none`, never an HMAC keyed by something an attacker may know, never a key embedded in
the token), then `iss`, `aud`/`azp`, `exp`/`iat`, `nonce` and `at_hash` (authlib's
CodeIDToken). Claims missing from the ID token are taken from the userinfo endpoint when
its `sub` matches. Only https endpoints are used, except on loopback (tests, a provider
on the same host). HTTP goes through the standard library in a thread: sign-ins are rare
and this keeps the server free of another HTTP client."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import anyio
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from cargohold.auth.identity import ExternalIdentity
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.settings import OidcSettings

ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
MAX_RESPONSE = 1 << 20
METADATA_TTL = 3600.0
JWKS_REFRESH_MIN = 60.0  # an unknown kid refetches the JWKS at most this often
LEEWAY = 60  # seconds of clock skew accepted on exp, iat, nbf


class OidcError(Exception):
    """The sign-in cannot go on; the message may be shown to the user (no secrets)."""


@dataclass(frozen=True, slots=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]
    client_secret_post: bool  # the provider does not take client_secret_basic


@dataclass(frozen=True, slots=True)
class Authorization:
    """One authorization request's secrets, kept by the browser in a sealed cookie."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)):
        return url
    raise OidcError(f"the provider's {what} must be an https URL")


def _fetch(
    url: str, data: dict[str, str] | None, headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(
        url, data=body, headers={"Accept": "application/json", **headers}
    )
    try:
        # Only http(s) URLs get here (check_url); urllib follows redirects to http(s) only.
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read(MAX_RESPONSE)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_RESPONSE)
    except (urllib.error.URLError, OSError) as exc:
        raise OidcError(f"the identity provider cannot be reached ({exc})") from exc
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


class OidcClient:
    def __init__(self, settings: OidcSettings, *, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._metadata: tuple[float, Metadata] | None = None
        self._keys: tuple[float, KeySet] | None = None

    @property
    def issuer(self) -> str:
        return self.settings.issuer  # compared exactly with the provider's (trailing slash too)

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await anyio.to_thread.run_sync(_fetch, url, None, headers or {}, self.timeout)

    async def _post(
        self, url: str, data: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        return await anyio.to_thread.run_sync(_fetch, url, data, headers, self.timeout)

    # -- discovery and keys ----------------------------------------------------------------

    async def metadata(self) -> Metadata:
        cached = self._metadata
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if not self.issuer or not self.settings.client_id:
            raise OidcError("OpenID Connect is not configured (auth.oidc.issuer, client_id)")
        url = check_url(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration", "issuer")
        status, doc = await self._get(url)
        if status != 200 or not isinstance(doc, dict):
            raise OidcError(f"the provider's discovery document is unusable (HTTP {status})")
        if doc.get("issuer") != self.issuer:
            raise OidcError("the discovery document names another issuer")
        try:
            offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
            methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            meta = Metadata(
                issuer=self.issuer,
                authorization_endpoint=check_url(
                    str(doc["authorization_endpoint"]), "authorization endpoint"
                ),
                token_endpoint=check_url(str(doc["token_endpoint"]), "token endpoint"),
                jwks_uri=check_url(str(doc["jwks_uri"]), "JWKS URL"),
                userinfo_endpoint=(
                    check_url(str(doc["userinfo_endpoint"]), "userinfo endpoint")
                    if doc.get("userinfo_endpoint")
                    else None
                ),
                algorithms=tuple(a for a in ASYMMETRIC if a in offered),
                client_secret_post="client_secret_basic" not in methods
                and "client_secret_post" in methods,
            )
        except KeyError as exc:
            raise OidcError(f"the discovery document lacks {exc.args[0]}") from exc
        if not meta.algorithms:
            raise OidcError("the provider signs ID tokens with no algorithm accepted here")
        self._metadata = (time.monotonic() + METADATA_TTL, meta)
        return meta

    async def keys(self, meta: Metadata, *, refresh: bool = False) -> KeySet:
        cached = self._keys
        now = time.monotonic()
        if cached is not None and (not refresh or now - cached[0] < JWKS_REFRESH_MIN):
            return cached[1]
        status, doc = await self._get(meta.jwks_uri)
        if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise OidcError(f"the provider's JWKS is unusable (HTTP {status})")
        public = [k for k in doc["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
        try:
            keyset = KeySet.import_key_set({"keys": public})
        except (JoseError, ValueError, TypeError) as exc:
            raise OidcError("the provider's JWKS holds keys that cannot be read") from exc
        self._keys = (now, keyset)
        return keyset

    # -- the authorization request ---------------------------------------------------------

    def scopes(self) -> str:
        scopes = list(dict.fromkeys(self.settings.scopes))
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        return " ".join(scopes)

    def authorization_url(self, meta: Metadata, auth: Authorization) -> str:
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": auth.redirect_uri,
                "scope": self.scopes(),
                "state": auth.state,
                "nonce": auth.nonce,
                "code_challenge": create_s256_code_challenge(auth.code_verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in meta.authorization_endpoint else "?"
        return f"{meta.authorization_endpoint}{separator}{query}"

    # -- the callback ----------------------------------------------------------------------

    async def exchange(self, meta: Metadata, code: str, auth: Authorization) -> dict[str, Any]:
        """The token response for `code` (with the PKCE verifier)."""
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": auth.redirect_uri,
            "code_verifier": auth.code_verifier,
        }
        headers: dict[str, str] = {}
        secret = self.settings.client_secret.get_secret_value()
        if meta.client_secret_post:
            data |= {"client_id": self.settings.client_id, "client_secret": secret}
        else:  # RFC 6749 2.3.1: form-encode both parts before base64
            pair = f"{urllib.parse.quote(self.settings.client_id, safe='')}:" + urllib.parse.quote(
                secret, safe=""
            )
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        status, body = await self._post(meta.token_endpoint, data, headers)
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise OidcError(f"the provider refused the code ({error or f'HTTP {status}'})")
        if not isinstance(body.get("id_token"), str):
            raise OidcError("the provider sent no ID token")
        return body

    async def validate_id_token(
        self, meta: Metadata, id_token: str, *, nonce: str, access_token: str | None
    ) -> dict[str, Any]:
        """The ID token's claims once signature, issuer, audience, times and nonce hold."""
        keys = await self.keys(meta)
        try:
            try:
                token = jwt.decode(id_token, keys, algorithms=list(meta.algorithms))
            except InvalidKeyIdError:  # the provider may have rotated its keys
                keys = await self.keys(meta, refresh=True)
                token = jwt.decode(id_token, keys, algorithms=list(meta.algorithms))
            claims = CodeIDToken(
                token.claims,
                token.header,
                {
                    "iss": {"essential": True, "value": meta.issuer},
                    "aud": {"essential": True, "value": self.settings.client_id},
                },
                {
                    "nonce": nonce,
                    "client_id": self.settings.client_id,
                    "access_token": access_token,
                },
            )
            claims.validate(leeway=LEEWAY)
        except (JoseError, ValueError) as exc:
            raise OidcError(f"the ID token is not valid ({exc})") from exc
        if not nonce or claims.get("nonce") != nonce:
            raise OidcError("the ID token is not valid (nonce)")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OidcError("the ID token has no subject")
        return dict(claims)

    async def userinfo(self, meta: Metadata, access_token: str, sub: str) -> dict[str, Any]:
        if meta.userinfo_endpoint is None:
            return {}
        status, body = await self._get(
            meta.userinfo_endpoint, {"Authorization": f"Bearer {access_token}"}
        )
        if status != 200 or not isinstance(body, dict) or body.get("sub") != sub:
            return {}  # OIDC Core 5.3.2: a userinfo answer for another subject is ignored
        return body

    async def claims(self, meta: Metadata, tokens: dict[str, Any], nonce: str) -> dict[str, Any]:
        """Validated ID token claims, completed from userinfo when some are missing."""
        access_token = tokens.get("access_token")
        access_token = access_token if isinstance(access_token, str) else None
        claims = await self.validate_id_token(
            meta, tokens["id_token"], nonce=nonce, access_token=access_token
        )
        s = self.settings
        wanted = (s.username_claim, s.email_claim, s.groups_claim)
        if access_token and any(c not in claims for c in wanted):
            extra = await self.userinfo(meta, access_token, claims["sub"])
            for claim in wanted:
                if claim not in claims and claim in extra:
                    claims[claim] = extra[claim]
        return claims

    def identity(self, claims: dict[str, Any]) -> ExternalIdentity:
        """Claims to a cargohold identity (OidcError when the username is unusable)."""
        s = self.settings
        raw = claims.get(s.username_claim)
        if not isinstance(raw, str) or not raw.strip():
            raise OidcError(f"the provider sent no {s.username_claim!r} claim")
        username = raw.strip().lower()
        try:
            parse_namespace(username)
        except NameInvalid as exc:
            raise OidcError(f"the user name {raw!r} cannot be used here: {exc}") from exc
        email = claims.get(s.email_claim)
        if not isinstance(email, str) or claims.get("email_verified") is False:
            email = None
        groups = claims.get(s.groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            groups = []
        return ExternalIdentity(
            username=username,
            email=email[:255] if email else None,
            external_id=str(claims["sub"])[:255],
            superuser=None,
            groups=frozenset(g for g in groups if isinstance(g, str) and 0 < len(g) <= 512),
            provider="oidc",
        )
