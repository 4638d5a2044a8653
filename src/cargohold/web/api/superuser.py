"""Superusers manage users (/superuser/users/): list, create, change, disable, delete.

Every change is audited with {"superuser": true} in its details. Disabling a user stops
their password, tokens and sessions at once. A user whose namespace still holds
repositories cannot be deleted (409): delete the repositories first."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.passwords import MAX_LENGTH as MAX_PASSWORD
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.services.accounts import PAGE_LIMIT, Account, Change, check_email
from cargohold.services.runtime import Runtime
from cargohold.services.users import NameTaken, UserError
from cargohold.web.api.deps import Caller, Superuser
from cargohold.web.api.errors import bad_request, conflict, not_found
from cargohold.web.api.problems import answering
from cargohold.web.api.users import accounts, iso

router = APIRouter(tags=["superuser"])

SuperCaller = Annotated[Caller, Depends(Superuser())]


def su_view(rt: Runtime, account: Account) -> dict[str, Any]:
    by_settings = account.username in rt.settings.auth.superusers
    return {
        "kind": "user",
        "name": account.username,
        "username": account.username,
        "email": account.email,
        "super_user": account.superuser or by_settings,
        "super_user_by_config": by_settings,
        "enabled": account.enabled,
        "provider": account.provider,
        "created": iso(account.created_at),
        "last_login": iso(account.last_login_at),
    }


async def _account(caller: Caller, username: str) -> Account:
    try:
        parse_namespace(username)
    except NameInvalid as exc:
        raise not_found("no such user") from exc
    account = await accounts(caller.runtime).get(username)
    if account is None:
        raise not_found("no such user")
    return account


@router.get("/superuser/users/")
async def list_users(
    caller: SuperCaller,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 50,
    next_page: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """Users by name, `limit` at a time; pass `next_page` back for the next page."""
    found, after = await accounts(caller.runtime).page(next_page, limit)
    body: dict[str, Any] = {"users": [su_view(caller.runtime, a) for a in found]}
    if after is not None:
        body["next_page"] = after
    return body


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=255)
    email: str | None = Field(None, max_length=255)
    password: str | None = Field(None, max_length=MAX_PASSWORD)


@router.post("/superuser/users/", status_code=201)
async def create_user(body: NewUser, caller: SuperCaller) -> dict[str, Any]:
    """Create a database user; without a password, one is generated and returned."""
    rt = caller.runtime
    if rt.settings.auth.provider != "database":
        raise bad_request(f"users come from {rt.settings.auth.provider}: create them there")
    try:
        parse_namespace(body.username)
    except NameInvalid as exc:
        raise bad_request(str(exc)) from exc
    with answering():
        email = check_email(body.email)
    generated = secrets.token_urlsafe(18) if body.password is None else None
    audit = caller.audit(
        "create_user",
        namespace=body.username,
        details={"superuser": True, "username": body.username},
    )
    try:
        await rt.users.create(body.username, body.password or generated, email=email, audit=audit)
    except NameTaken as exc:
        raise conflict(str(exc)) from exc
    except UserError as exc:
        raise bad_request(str(exc)) from exc
    view = su_view(rt, await _account(caller, body.username))
    if generated is not None:
        view["password"] = generated
    return view


@router.get("/superuser/users/{username}")
async def get_user(username: str, caller: SuperCaller) -> dict[str, Any]:
    return su_view(caller.runtime, await _account(caller, username))


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(None, max_length=255)
    password: str | None = Field(None, max_length=MAX_PASSWORD)
    enabled: bool | None = None
    superuser: bool | None = None


@router.put("/superuser/users/{username}")
async def update_user(username: str, body: UserUpdate, caller: SuperCaller) -> dict[str, Any]:
    """Change a user's e-mail, password, enabled or superuser flag (the fields sent).
    Disabling ends the user's sessions; every change drops cached credentials."""
    account = await _account(caller, username)
    fields = sorted(body.model_fields_set)
    if not fields:
        raise bad_request("nothing to change")
    for name in ("password", "enabled", "superuser"):
        if name in body.model_fields_set and getattr(body, name) is None:
            raise bad_request(f"{name} must not be null")
    if account.id == caller.user_id and (body.enabled is False or body.superuser is False):
        raise bad_request("superusers cannot disable themselves or drop their own flag")
    change = Change(password=body.password, enabled=body.enabled, superuser=body.superuser)
    if "email" in body.model_fields_set:
        change.email, change.email_set = body.email, True
    audit = caller.audit(
        "change_user",
        namespace=username,
        details={"superuser": True, "username": username, "fields": fields},
    )
    with answering():
        changed = await accounts(caller.runtime).change(account.id, change, audit)
    return su_view(caller.runtime, changed)


@router.delete("/superuser/users/{username}", status_code=204)
async def delete_user(username: str, caller: SuperCaller) -> Response:
    """Delete the user with their credentials, sessions, robots, team memberships and
    permissions; 409 while their namespace holds repositories."""
    account = await _account(caller, username)
    if account.id == caller.user_id:
        raise bad_request("superusers cannot delete themselves")
    audit = caller.audit(
        "delete_user", namespace=username, details={"superuser": True, "username": username}
    )
    with answering():
        await accounts(caller.runtime).delete(username, audit)
    return Response(status_code=204)
