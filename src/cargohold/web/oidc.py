"""Browser sign-in through OpenID Connect (auth.provider = "oidc").

GET /oauth2/oidc/login      sends the browser to the provider: authorization code flow
                            with PKCE (S256), a fresh `state` and `nonce`.
GET /oauth2/oidc/callback   where the provider sends it back: checks `state` (and `iss`),
                            exchanges the code, validates the ID token (auth/oidc.py),
                            creates or updates the local user, syncs teams from the groups
                            claim, starts a web session (cookie `cargohold_session`) and
                            redirects to "/".

Where state, nonce and the PKCE verifier live between the two: in the browser, in a
cookie `cargohold_oidc` sealed with Fernet (AES-CBC + HMAC, so neither readable nor
forgeable) under a key derived from auth.secret_key, limited to path /oauth2/oidc,
HttpOnly, SameSite=Lax (the callback is a top-level navigation from the provider),
Secure on https, and valid for 10 minutes (Fernet's timestamp, checked on the server).
Nothing is stored server-side, so any worker or replica can finish a sign-in; the
callback deletes the cookie whatever the outcome, and the provider refuses a code used
twice."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets

from cryptography.fernet import Fernet, InvalidToken
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from cargohold.auth.keys import load_or_create_secret_key
from cargohold.auth.oidc import Authorization, OidcClient, OidcError
from cargohold.auth.principal import ANONYMOUS
from cargohold.services.audit import AuditEntry, Origin
from cargohold.services.runtime import Runtime
from cargohold.services.sessions import COOKIE as SESSION_COOKIE
from cargohold.services.sessions import LIFETIME as SESSION_LIFETIME
from cargohold.settings import Settings
from cargohold.web.context import origin_of, runtime_of

log = logging.getLogger(__name__)

LOGIN_PATH = "/oauth2/oidc/login"
CALLBACK_PATH = "/oauth2/oidc/callback"
STATE_COOKIE = "cargohold_oidc"
STATE_COOKIE_PATH = "/oauth2/oidc"
STATE_SECONDS = 600


class OidcSignIn:
    """The two routes, with the per-process OIDC client (discovery and JWKS caches)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = OidcClient(settings.auth.oidc)
        self._fernet: Fernet | None = None

    def routes(self) -> list[Route]:
        return [Route(LOGIN_PATH, self.login), Route(CALLBACK_PATH, self.callback)]

    @property
    def enabled(self) -> bool:
        return self.settings.auth.provider == "oidc"

    # -- the sealed state cookie -----------------------------------------------------------

    def _sealer(self) -> Fernet:
        if self._fernet is None:
            secret = load_or_create_secret_key(
                self.settings.auth.secret_key.get_secret_value(), self.settings.data_dir
            )
            derived = hmac.new(secret, b"cargohold oidc sign-in state", hashlib.sha256).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(derived))
        return self._fernet

    def _seal(self, auth: Authorization) -> str:
        data = {"s": auth.state, "n": auth.nonce, "v": auth.code_verifier, "r": auth.redirect_uri}
        return self._sealer().encrypt(json.dumps(data).encode()).decode()

    def _unseal(self, cookie: str | None) -> Authorization | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = json.loads(self._sealer().decrypt(cookie.encode(), ttl=STATE_SECONDS))
            return Authorization(str(data["s"]), str(data["n"]), str(data["v"]), str(data["r"]))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None

    def _redirect_uri(self, request: Request) -> str:
        configured = self.settings.auth.oidc.redirect_uri
        if configured:
            return configured
        host = request.headers.get("host") or "localhost"
        return f"{request.url.scheme}://{host}{CALLBACK_PATH}"

    # -- routes ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if not self.enabled:
            return PlainTextResponse("OpenID Connect sign-in is not enabled\n", 404)
        try:
            meta = await self.client.metadata()
        except OidcError as exc:
            log.warning("OIDC discovery failed: %s", exc)
            return PlainTextResponse(f"sign-in is unavailable: {exc}\n", 502)
        auth = Authorization(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),  # 64 characters (RFC 7636: 43 to 128)
            redirect_uri=self._redirect_uri(request),
        )
        response = RedirectResponse(self.client.authorization_url(meta, auth), status_code=302)
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            STATE_COOKIE,
            self._seal(auth),
            max_age=STATE_SECONDS,
            path=STATE_COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def callback(self, request: Request) -> Response:
        if not self.enabled:
            return PlainTextResponse("OpenID Connect sign-in is not enabled\n", 404)
        runtime = runtime_of(request)
        origin = origin_of(request)
        auth = self._unseal(request.cookies.get(STATE_COOKIE))
        try:
            response = await self._finish(request, runtime, origin, auth)
        except OidcError as exc:
            runtime.audit.record(
                AuditEntry(
                    "login_failure",
                    ANONYMOUS,
                    origin,
                    details={"provider": "oidc", "reason": str(exc)[:300]},
                )
            )
            status = 403 if isinstance(exc, Refused) else 400
            response = PlainTextResponse(f"sign-in failed: {exc}\n", status)
        response.headers["Cache-Control"] = "no-store"
        response.delete_cookie(
            STATE_COOKIE,
            path=STATE_COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def _finish(
        self, request: Request, runtime: Runtime, origin: Origin, auth: Authorization | None
    ) -> Response:
        params = request.query_params
        if auth is None:
            raise OidcError("the sign-in expired or did not start here; please start again")
        if not hmac.compare_digest(params.get("state", ""), auth.state):
            raise OidcError("the sign-in state does not match; please start again")
        if "error" in params:
            raise Refused(f"the provider answered {params['error'][:100]!r}")
        meta = await self.client.metadata()
        if "iss" in params and params["iss"] != meta.issuer:  # RFC 9207: mix-up attacks
            raise OidcError("the answer comes from another issuer")
        code = params.get("code", "")
        if not code or len(code) > 2048:
            raise OidcError("the provider sent no code")
        tokens = await self.client.exchange(meta, code, auth)
        claims = await self.client.claims(meta, tokens, auth.nonce)
        identity = self.client.identity(claims)
        principal = await runtime.authenticator.local_user(identity)
        if principal is None or principal.id is None:
            raise Refused(f"the account {identity.username!r} cannot sign in here")
        session_id, _ = await runtime.sessions.start(principal.id)
        runtime.audit.record(
            AuditEntry(
                "login",
                principal,
                origin,
                details={"method": "oidc", "registry": False, "sub": identity.external_id},
            )
        )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(SESSION_LIFETIME.total_seconds()),
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response


class Refused(OidcError):
    """The provider or the local account refused the sign-in (403, not 400)."""
