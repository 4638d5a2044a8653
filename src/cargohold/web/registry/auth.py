"""Registry authentication: the Authorization header to a Principal, the challenge that
tells clients where to get a token, and the token endpoint itself (GET and POST /v2/auth,
as the Docker token flow and OAuth2 password grant of the distribution spec)."""

from __future__ import annotations

import base64
import binascii
import re
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cargohold.auth.access import Action
from cargohold.auth.credentials import AuthenticationFailed, Context
from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.auth.tokens import InvalidToken, Scope
from cargohold.domain.errors import NameInvalid, Unauthorized
from cargohold.domain.names import parse_repository
from cargohold.services.audit import AuditEntry
from cargohold.services.runtime import Runtime
from cargohold.web.context import origin_of
from cargohold.web.registry.errors import error_response

TOKEN_PATH = "/v2/auth"
MAX_SCOPES = 64


def basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


async def authenticate(request: Request, runtime: Runtime) -> Principal:
    """The caller of a /v2 request; Unauthorized for credentials that do not verify."""
    header = request.headers.get("authorization")
    if not header:
        return ANONYMOUS
    scheme = header.split(" ", 1)[0].lower()
    if scheme == "bearer":
        try:
            return await runtime.tokens.verify(header[7:].strip())
        except InvalidToken as exc:
            raise Unauthorized("invalid token", detail={"reason": str(exc)}) from exc
    credentials = basic_credentials(header)
    if credentials is None:
        raise Unauthorized("unsupported authorization scheme")
    try:
        return await runtime.authenticator.basic(*credentials, Context(origin_of(request)))
    except AuthenticationFailed as exc:
        raise Unauthorized(str(exc)) from exc


# A Host header that can go into the challenge as it is (no quotes, commas or spaces).
_HOST = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def realm(request: Request, runtime: Runtime) -> str:
    configured = runtime.settings.auth.realm
    if configured:
        return configured
    host = request.headers.get("host") or "localhost"
    if not _HOST.fullmatch(host):
        host = "localhost"
    return f"{request.url.scheme}://{host}{TOKEN_PATH}"


def challenge(
    request: Request, runtime: Runtime, action: Action | None, name: str | None, error: str = ""
) -> str:
    parts = [f'realm="{realm(request, runtime)}"', f'service="{runtime.settings.auth.service}"']
    if action is Action.CATALOG:
        parts.append('scope="registry:catalog:*"')
    elif name and action in (Action.PULL, Action.PUSH, Action.DELETE) and _valid(name):
        # Only a valid name: the raw path could carry quotes or line breaks into the
        # header (another realm for the client, or a broken answer).
        actions = "pull" if action is Action.PULL else f"pull,{action.value}"
        parts.append(f'scope="repository:{name}:{actions}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def _valid(name: str) -> bool:
    try:
        parse_repository(name)
    except NameInvalid:
        return False
    return True


def _scopes(values: list[str]) -> list[Scope]:
    """The usable scopes asked for: at most MAX_SCOPES in all (some clients put several
    in one parameter, separated by spaces), malformed ones and invalid repository names
    dropped, the actions of repeated ones merged."""
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for value in values[:MAX_SCOPES]:
        for text in value.split(maxsplit=MAX_SCOPES)[:MAX_SCOPES]:
            scope = Scope.parse(text)
            if scope is None:
                continue
            if scope.type == "repository":
                try:
                    parse_repository(scope.name)
                except NameInvalid:
                    continue
            key = (scope.type, scope.name)
            if key not in merged and len(merged) >= MAX_SCOPES:
                return [Scope(t, n, a) for (t, n), a in merged.items()]
            merged[key] = merged.get(key, frozenset()) | scope.actions
    return [Scope(t, n, a) for (t, n), a in merged.items()]


async def token(request: Request, runtime: Runtime) -> Response:
    """GET: Docker token flow (Basic credentials or none). POST: OAuth2 password grant."""
    if request.method == "POST":
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        grant = (form.get("grant_type") or [""])[0]
        if grant != "password":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        username = (form.get("username") or [""])[0]
        if not username:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        credentials: tuple[str, str] | None = (username, (form.get("password") or [""])[0])
        service = (form.get("service") or [""])[0]
        scope_values = form.get("scope") or []
    else:
        header = request.headers.get("authorization")
        credentials = basic_credentials(header) if header else None
        if header and credentials is None:
            return error_response(401, "UNAUTHORIZED", "unsupported authorization scheme")
        service = request.query_params.get("service", "")
        scope_values = request.query_params.getlist("scope")
    if service and service != runtime.settings.auth.service:
        return error_response(400, "UNSUPPORTED", f"unknown service {service!r}")
    origin = origin_of(request)
    principal = ANONYMOUS
    if credentials is not None:
        try:
            principal = await runtime.authenticator.basic(*credentials, Context(origin))
        except AuthenticationFailed as exc:
            return error_response(401, "UNAUTHORIZED", str(exc))
    access = []
    for scope in _scopes(scope_values):
        granted = await runtime.access.token_access(
            principal, scope.type, scope.name, scope.actions
        )
        access.append((scope.type, scope.name, sorted(granted)))
    issued, ttl = await runtime.tokens.issue(principal, access)
    runtime.audit.record(
        AuditEntry(
            "token_issued",
            principal,
            origin,
            details={"access": [f"{t}:{n}:{','.join(a)}" for t, n, a in access]},
        )
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"token": issued, "access_token": issued, "expires_in": ttl, "issued_at": now}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
