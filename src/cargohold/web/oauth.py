"""The OAuth 2 authorization-code grant (RFC 6749 section 4.1, PKCE per RFC 7636) for
applications registered in an organization (services/applications.py).

- GET /oauth/authorize: the signed-in user (session cookie) sees what the application
  asks for; the page posts back to
- POST /oauth/authorize with the session's CSRF token: approving redirects (303) to the
  registered redirect URI with a single-use code and the client's `state`.
- POST /oauth/access_token: the client trades the code (with its client secret, in the
  form or HTTP Basic) for an access token `cho_...`, a bearer token on /api/v1.

The redirect URI must equal the registered one exactly; nothing redirects before the
client and its redirect URI are known good (no open redirect). A bearer token cannot
approve anything here: only a browser session can, so no token grows into a wider one."""

from __future__ import annotations

import base64
import binascii
import hmac
import html
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cargohold.auth.principal import Principal
from cargohold.auth.roles import API_SCOPES
from cargohold.services.applications import (
    TOKEN_LIFETIME,
    Application,
    ApplicationService,
    GrantError,
)
from cargohold.services.audit import AuditEntry
from cargohold.services.problems import Problem
from cargohold.services.runtime import Runtime
from cargohold.services.sessions import COOKIE, CSRF_HEADER, WebSession
from cargohold.web.context import origin_of, runtime_of

MAX_FORM = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PAGE_HEADERS = {
    **NO_STORE,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_CHALLENGE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _service(rt: Runtime) -> ApplicationService:
    return ApplicationService(rt.db, rt.audit, rt.credentials, rt.authenticator.changed)


def _error(status: int, code: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": code, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **headers},
    )


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded body (first value of each field), or None when it is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _signed_in(request: Request, rt: Runtime) -> tuple[Principal, WebSession] | None:
    """The user of the request's browser session (bearer tokens do not count here)."""
    cookie = request.cookies.get(COOKIE)
    session = await rt.sessions.find(cookie) if cookie else None
    if session is None:
        return None
    principal = await rt.authenticator.user_by_id(session.user_id)
    return None if principal is None else (principal, session)


class _Refusal(Exception):
    """An authorization request error, sent back to the client's redirect URI."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


async def _check_request(
    rt: Runtime, params: dict[str, str]
) -> tuple[Application, list[str], str | None] | Response:
    """Validate an authorization request: a Response for errors that cannot be sent to
    the client (unknown client, wrong redirect URI, no state); _Refusal for the others."""
    client_id = params.get("client_id", "")
    app = await _service(rt).by_client_id(client_id)
    if app is None:
        return _error(400, "invalid_request", "unknown client_id")
    if not app.redirect_uri or params.get("redirect_uri", "") != app.redirect_uri:
        return _error(400, "invalid_request", "redirect_uri does not match the registered one")
    if not params.get("state"):
        return _error(400, "invalid_request", "state is required")
    if params.get("response_type") != "code":
        raise _Refusal("unsupported_response_type", "only response_type=code is supported")
    scopes = params.get("scope", "").split()
    if not scopes or len(scopes) > len(API_SCOPES) or set(scopes) - set(API_SCOPES):
        raise _Refusal("invalid_scope", f"scope must be some of: {' '.join(API_SCOPES)}")
    challenge = params.get("code_challenge") or None
    method = params.get("code_challenge_method") or ("plain" if challenge else None)
    if challenge is not None:
        if method != "S256":
            raise _Refusal("invalid_request", "code_challenge_method must be S256")
        if not 43 <= len(challenge) <= 128 or set(challenge) - _CHALLENGE_CHARS:
            raise _Refusal("invalid_request", "code_challenge is malformed")
    elif method is not None:
        raise _Refusal("invalid_request", "code_challenge_method without code_challenge")
    return app, sorted(set(scopes)), challenge


def _consent_page(
    app: Application, scopes: list[str], params: dict[str, str], csrf: str, user: str
) -> HTMLResponse:
    fields = {
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": params["state"],
        "csrf_token": csrf,
    }
    if params.get("code_challenge"):
        fields["code_challenge"] = params["code_challenge"]
        fields["code_challenge_method"] = "S256"
    e = html.escape
    hidden = "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items()
    )
    items = "".join(f"<li><code>{e(s)}</code></li>" for s in scopes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Authorize {e(app.name)}</title></head>
<body><h1>Authorize {e(app.name)}</h1>
<p>The application <strong>{e(app.name)}</strong> of the organization
<strong>{e(app.organization)}</strong> asks to act as <strong>{e(user)}</strong> with:</p>
<ul>{items}</ul>
<p>It will be sent to <code>{e(app.redirect_uri)}</code>.</p>
<form method="post" action="/oauth/authorize">{hidden}
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form></body></html>"""
    return HTMLResponse(page, headers=PAGE_HEADERS)


async def authorize(request: Request) -> Response:
    rt = runtime_of(request)
    if request.method == "POST":
        form = await _form(request)
        if form is None:
            return _error(413, "invalid_request", "the form is too large")
        params = form
    else:
        params = {k: request.query_params[k] for k in request.query_params}
    try:
        checked = await _check_request(rt, params)
    except _Refusal as refusal:
        return _refuse(rt, params, refusal)
    if isinstance(checked, Response):
        return checked
    app, scopes, challenge = checked
    signed_in = await _signed_in(request, rt)
    if signed_in is None:
        return _error(401, "login_required", "sign in first (POST /api/v1/signin)")
    principal, session = signed_in
    if "super:user" in scopes and not principal.superuser:
        return _refuse(rt, params, _Refusal("invalid_scope", "super:user is for superusers"))
    if request.method == "GET":
        return _consent_page(app, scopes, params, session.csrf_token, principal.name or "")
    sent = params.get("csrf_token") or request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent, session.csrf_token):
        return _error(403, "invalid_request", "missing or wrong CSRF token")
    if params.get("decision") != "approve":
        return _refuse(rt, params, _Refusal("access_denied", "the user denied the request"))
    assert principal.id is not None
    code = await _service(rt).issue_code(app, principal.id, scopes, challenge)
    target = _with_query(app.redirect_uri, {"code": code, "state": params["state"]})
    return RedirectResponse(target, status_code=303, headers=NO_STORE)


def _refuse(rt: Runtime, params: dict[str, str], refusal: _Refusal) -> Response:
    # Only called after the client's redirect URI was checked against the registered one.
    error = {"error": refusal.code, "error_description": refusal.description}
    error["state"] = params.get("state", "")
    target = _with_query(params["redirect_uri"], error)
    return RedirectResponse(target, status_code=303, headers=NO_STORE)


def _client_credentials(
    request: Request, form: dict[str, str]
) -> tuple[str, str, bool] | JSONResponse:
    """(client_id, client_secret, whether HTTP Basic carried them)."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return _error(401, "invalid_client", "use HTTP Basic client authentication")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _error(401, "invalid_client", "malformed Basic credentials")
        client_id, sep, secret = decoded.partition(":")
        if not sep or "client_secret" in form:
            return _error(400, "invalid_request", "send the client credentials once")
        return unquote(client_id), unquote(secret), True
    return form.get("client_id", ""), form.get("client_secret", ""), False


async def access_token(request: Request) -> Response:
    rt = runtime_of(request)
    form = await _form(request)
    if form is None:
        return _error(413, "invalid_request", "the form is too large")
    credentials = _client_credentials(request, form)
    if isinstance(credentials, JSONResponse):
        return credentials
    client_id, secret, basic = credentials
    if form.get("grant_type") != "authorization_code":
        return _error(400, "unsupported_grant_type", "only authorization_code is supported")
    service = _service(rt)
    app = await service.authenticate_client(client_id, secret)
    if app is None:
        extra = {"WWW-Authenticate": 'Basic realm="cargohold"'} if basic else {}
        return _error(401, "invalid_client", "unknown client or wrong secret", **extra)
    if form.get("client_id", client_id) != client_id:
        return _error(400, "invalid_request", "client_id does not match the credentials")
    if not app.redirect_uri or form.get("redirect_uri", "") != app.redirect_uri:
        return _error(400, "invalid_grant", "redirect_uri does not match")
    try:
        user_id, scopes, code_id = await service.redeem_code(
            app, form.get("code", ""), form.get("code_verifier") or None
        )
    except GrantError as exc:
        return _error(400, exc.code, exc.description)
    principal = await rt.authenticator.user_by_id(user_id)
    if principal is None:
        return _error(400, "invalid_grant", "the user who approved is no longer enabled")
    audit = AuditEntry(
        "create_oauth_token",
        principal,
        origin_of(request),
        namespace=app.organization,
        details={"grant": "authorization_code"},
    )
    try:
        token, info = await service.issue_token(app, user_id, scopes, audit)
    except Problem as exc:
        return _error(400, "invalid_scope", str(exc))
    await service.note_exchange(code_id, info.id)
    body: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "scope": " ".join(info.scopes),
        "expires_in": int(TOKEN_LIFETIME.total_seconds()),
    }
    return JSONResponse(body, headers=NO_STORE)


ROUTES = [
    Route("/authorize", authorize, methods=["GET", "POST"]),
    Route("/access_token", access_token, methods=["POST"]),
]
