"""App-specific tokens (/user/apptoken) and the encrypted CLI password (/user/clientkey).

A token's secret appears once, in the answer that creates it; lists and reads never
show it. An app token may carry API scopes (a bearer token on /api/v1) or none (a
password for `docker login` only). Whoever creates a token with a token cannot give it
scopes their own token lacks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.principal import Method, Principal
from cargohold.auth.roles import API_SCOPES
from cargohold.db.base import utcnow
from cargohold.domain.durations import MAX as MAX_LIFETIME
from cargohold.domain.durations import DurationError, parse_duration
from cargohold.services.credentials import CredentialError, CredentialInfo
from cargohold.web.api.deps import Caller, SignedIn, has_scope
from cargohold.web.api.errors import bad_request, forbidden, not_found
from cargohold.web.api.users import accounts, iso, verify_password

router = APIRouter(tags=["tokens"])

UserReader = Annotated[Caller, Depends(SignedIn("user:read"))]
UserAdmin = Annotated[Caller, Depends(SignedIn("user:admin"))]

MAX_SCOPES = len(API_SCOPES)


def token_view(info: CredentialInfo) -> dict[str, Any]:
    return {
        "uuid": str(info.id),
        "id": info.id,
        "title": info.title,
        "scopes": list(info.scopes),
        "created": iso(info.created_at),
        "expiration": iso(info.expires_at),
        "last_accessed": iso(info.last_used_at),
        "expired": info.expires_at is not None and info.expires_at <= utcnow(),
    }


def grantable(principal: Principal, scopes: list[str]) -> None:
    """Refuse scopes the caller could not use themselves: a token makes no token wider
    than itself, and only superusers get super:user. An OAuth token (held by a third
    party's application) issues no credentials at all: they would outlive the
    application's tokens, which go when the application is deleted."""
    if principal.method is Method.OAUTH:
        raise forbidden("an OAuth token cannot issue credentials")
    unknown = sorted(set(scopes) - set(API_SCOPES))
    if unknown:
        raise bad_request(f"unknown scopes: {', '.join(unknown)}")
    if "super:user" in scopes and not principal.superuser:
        raise forbidden("only superusers may grant the super:user scope")
    wider = sorted(s for s in set(scopes) if not has_scope(principal, s))
    if wider:
        raise forbidden(f"the caller's token lacks the scopes it would grant: {', '.join(wider)}")


def parse_expiration(text: str) -> datetime:
    """A duration from now (30d, 12h, 2w) or an ISO 8601 date-time (UTC if no zone)."""
    now = utcnow()
    try:
        return now + parse_duration(text)
    except DurationError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise bad_request(
            "expiration must be a duration such as 30d or an ISO 8601 date-time"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise bad_request("expiration is in the past")
    if when > now + MAX_LIFETIME:
        raise bad_request("expiration is more than 10 years away")
    return when


class NewAppToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=255)
    scopes: list[str] = Field(default_factory=list, max_length=MAX_SCOPES)
    expiration: str | None = Field(None, max_length=64)


async def _active(caller: Caller, token_id: int) -> CredentialInfo:
    info = await caller.runtime.credentials.get(caller.user_id, token_id)
    if info is None or info.kind != "app" or info.revoked_at is not None:
        raise not_found("no such app token")
    return info


@router.get("/user/apptoken")
async def list_app_tokens(caller: UserReader) -> dict[str, Any]:
    """The user's app tokens (revoked ones are gone; expired ones say so). No secrets."""
    infos = await caller.runtime.credentials.list(caller.user_id, "app")
    return {"tokens": [token_view(i) for i in infos if i.revoked_at is None]}


@router.post("/user/apptoken", status_code=201)
async def create_app_token(body: NewAppToken, caller: UserAdmin) -> dict[str, Any]:
    """A new app token; its secret is in `token.token_code`, shown this once."""
    title = body.title.strip()
    if not title:
        raise bad_request("title must not be empty")
    grantable(caller.principal, body.scopes)
    expires = parse_expiration(body.expiration) if body.expiration else None
    scopes = sorted(set(body.scopes))
    audit = caller.audit(
        "create_app_token",
        namespace=caller.principal.name,
        details={"title": title, "scopes": scopes, "expiration": iso(expires)},
    )
    try:
        token, info = await caller.runtime.credentials.issue(
            "app", caller.user_id, title=title, scopes=scopes, expires_at=expires, audit=audit
        )
    except CredentialError as exc:
        raise bad_request(str(exc)) from exc
    return {"token": {**token_view(info), "token_code": token}}


@router.get("/user/apptoken/{token_id}")
async def get_app_token(token_id: int, caller: UserReader) -> dict[str, Any]:
    return {"token": token_view(await _active(caller, token_id))}


@router.delete("/user/apptoken/{token_id}", status_code=204)
async def revoke_app_token(token_id: int, caller: UserAdmin) -> Response:
    """Revoke the token: it stops working at once, on /v2 and on /api/v1."""
    info = await _active(caller, token_id)
    audit = caller.audit(
        "revoke_app_token",
        namespace=caller.principal.name,
        details={"credential": info.id, "title": info.title},
    )
    if not await caller.runtime.credentials.revoke(caller.user_id, info.id, audit):
        raise not_found("no such app token")
    return Response(status_code=204)


# -- the encrypted CLI password -----------------------------------------------------------


class ClientKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=4096)


@router.post("/user/clientkey")
async def create_client_key(body: ClientKeyRequest, caller: UserAdmin) -> dict[str, str]:
    """The encrypted CLI password: a secret that stands for the user's password on
    `docker login` (with the user's own name), so the real one never lands in a docker
    config file. Needs the real password; a new key replaces the previous one."""
    grantable(caller.principal, [])  # not with an OAuth token
    await verify_password(caller, body.password)
    audit = caller.audit("create_cli_password", namespace=caller.principal.name)
    token, _ = await caller.runtime.credentials.issue(
        "cli", caller.user_id, title="encrypted CLI password", audit=audit, replace=True
    )
    return {"key": token}


@router.delete("/user/clientkey", status_code=204)
async def revoke_client_key(caller: UserAdmin) -> Response:
    """Revoke the encrypted CLI password (docker logins with it stop working)."""
    audit = caller.audit(
        "revoke_app_token", namespace=caller.principal.name, details={"kind": "cli"}
    )
    await accounts(caller.runtime).revoke_cli_passwords(caller.user_id, audit)
    return Response(status_code=204)
