"""Signing in and out, the signed-in user (/user/), self sign-up and public user info.

Signing in checks the password through the authenticator (so lockout, delays and the
audit log apply) and starts a browser session: an HttpOnly, SameSite=Lax cookie plus a
CSRF token that every change made with the cookie sends back in `X-CSRF-Token`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth import secrets as tokens
from cargohold.auth.credentials import AuthenticationFailed, Context
from cargohold.auth.passwords import MAX_LENGTH as MAX_PASSWORD
from cargohold.auth.principal import ANONYMOUS, Method, Principal, PrincipalKind
from cargohold.db.session import DbSession, run_write
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.services.accounts import Account, AccountService, Change, check_email
from cargohold.services.audit import AuditEntry
from cargohold.services.runtime import Runtime
from cargohold.services.sessions import COOKIE, LIFETIME
from cargohold.services.users import NameTaken, UserError
from cargohold.web.api.deps import Anyone, Caller, SignedIn
from cargohold.web.api.errors import bad_request, conflict, forbidden, not_found, unauthorized
from cargohold.web.api.problems import answering

router = APIRouter(tags=["users"])

AnyoneCaller = Annotated[Caller, Depends(Anyone())]
SignedInCaller = Annotated[Caller, Depends(SignedIn())]
UserReader = Annotated[Caller, Depends(SignedIn("user:read"))]
UserAdmin = Annotated[Caller, Depends(SignedIn("user:admin"))]

WRONG_CREDENTIALS = str(AuthenticationFailed())


# -- shared by the identity modules (tokens, applications, superuser) -------------------


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z (Quay uses RFC 2822 dates; ISO sorts and parses)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def accounts(rt: Runtime) -> AccountService:
    return AccountService(
        rt.db,
        rt.audit,
        credentials_changed=rt.authenticator.changed,
        permissions_changed=rt.permissions.changed,
    )


async def write_audit(rt: Runtime, entry: AuditEntry) -> None:
    """Record `entry` now, in a transaction of its own (for actions with no other write)."""

    async def work(s: DbSession) -> None:
        await rt.audit.write(s, entry)

    await run_write(rt.db, work)


async def verify_password(caller: Caller, password: str) -> None:
    """The caller's real password, checked again through the identity provider (with the
    lockout and audit of any sign-in); 403 when wrong."""
    principal = caller.principal
    try:
        checked = await caller.runtime.authenticator.basic(
            principal.name or "", password, Context(caller.origin, registry=False)
        )
    except AuthenticationFailed as exc:
        raise forbidden("the password is wrong") from exc
    if checked.method is not Method.PASSWORD or checked.id != principal.id:
        raise forbidden("the password is wrong")


def reserved_names(rt: Runtime) -> frozenset[str]:
    """Names nobody may sign up with: superusers named in the settings would become
    superusers by name."""
    auth = rt.settings.auth
    return frozenset([*auth.superusers, auth.initial_admin_user])


def user_view(account: Account, principal: Principal) -> dict[str, Any]:
    return {
        "anonymous": False,
        "username": account.username,
        "email": account.email,
        "super_user": principal.superuser,
        "enabled": account.enabled,
        "provider": account.provider,
        "can_create_repo": True,
        "is_me": True,
        "created": iso(account.created_at),
        "last_login": iso(account.last_login_at),
    }


# -- sessions -----------------------------------------------------------------------------


class SigninRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=4096)


@router.post("/signin")
async def signin(body: SigninRequest, caller: AnyoneCaller) -> JSONResponse:
    """Check the password and start a session: sets the `cargohold_session` cookie and
    returns the CSRF token that changes made with the cookie must send back."""
    rt = caller.runtime
    # Only a real password opens a session: a token must not grow into one (its scopes
    # would be lost), nor may a robot sign in. Those are refused before any check, so the
    # log shows no successful login for them.
    if body.username.startswith("$") or "+" in body.username or tokens.parse(body.password):
        rt.audit.record(
            AuditEntry(
                "login_failure",
                ANONYMOUS,
                caller.origin,
                details={"username": body.username, "reason": "not a password"},
            )
        )
        raise unauthorized(WRONG_CREDENTIALS)
    try:
        principal = await rt.authenticator.basic(
            body.username, body.password, Context(caller.origin, registry=False)
        )
    except AuthenticationFailed as exc:
        raise unauthorized(WRONG_CREDENTIALS) from exc
    if (
        principal.kind is not PrincipalKind.USER
        or principal.method is not Method.PASSWORD
        or principal.id is None
    ):
        raise unauthorized(WRONG_CREDENTIALS)
    cookie, session = await rt.sessions.start(principal.id)
    response = JSONResponse({"success": True, "csrf_token": session.csrf_token})
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=caller.request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def signout(caller: SignedInCaller) -> JSONResponse:
    """End the session of the cookie (if the caller signed in with one) and clear it."""
    rt = caller.runtime
    cookie = caller.request.cookies.get(COOKIE)
    if cookie and caller.principal.method is Method.SESSION:
        await rt.sessions.end(cookie)
    await write_audit(rt, caller.audit("logout", namespace=caller.principal.name))
    response = JSONResponse({"success": True})
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=caller.request.url.scheme == "https",
    )
    return response


@router.get("/csrf_token")
async def csrf_token(caller: SignedInCaller) -> dict[str, str]:
    """The CSRF token of the caller's session (a page that lost it asks again)."""
    cookie = caller.request.cookies.get(COOKIE)
    session = await caller.runtime.sessions.find(cookie) if cookie else None
    if caller.principal.method is not Method.SESSION or session is None:
        raise bad_request("only session sign-ins use a CSRF token")
    return {"csrf_token": session.csrf_token}


# -- the signed-in user -------------------------------------------------------------------


async def _me(caller: Caller) -> dict[str, Any]:
    service = accounts(caller.runtime)
    account = await service.get_by_id(caller.user_id)
    if account is None:
        raise not_found("no such user")
    view = user_view(account, caller.principal)
    view["organizations"] = [
        {"name": m.name, "is_org_admin": m.is_admin or caller.principal.superuser}
        for m in await service.organizations(account.id)
    ]
    return view


@router.get("/user/")
async def get_user(caller: UserReader) -> dict[str, Any]:
    """The signed-in user: name, e-mail, superuser flag and organizations."""
    return await _me(caller)


class UserUpdate(BaseModel):
    """What users may change about themselves: nothing else (no name, no flags)."""

    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(None, max_length=255)
    password: str | None = Field(None, max_length=MAX_PASSWORD)
    current_password: str | None = Field(None, max_length=4096)


@router.put("/user/")
async def update_user(body: UserUpdate, caller: UserAdmin) -> dict[str, Any]:
    """Change the e-mail address and/or the password. A new password needs the current
    one; it ends the user's other sessions and revokes the encrypted CLI password."""
    fields = sorted(body.model_fields_set - {"current_password"})
    if not fields:
        raise bad_request("nothing to change: send email and/or password")
    change = Change()
    if "email" in body.model_fields_set:
        change.email, change.email_set = body.email, True
    if body.password is not None:
        if not body.current_password:
            raise bad_request("current_password is required to change the password")
        await verify_password(caller, body.current_password)
        change.password = body.password
        if caller.principal.method is Method.SESSION:
            change.keep_session = caller.request.cookies.get(COOKIE)
    elif "password" in body.model_fields_set:
        raise bad_request("password must not be null")
    name = caller.principal.name
    audit = caller.audit("change_user", namespace=name, details={"fields": fields})
    with answering():
        await accounts(caller.runtime).change(caller.user_id, change, audit)
    return await _me(caller)


class NewUser(BaseModel):
    """Self sign-up: a name, an e-mail address and a password; nothing else."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=255)
    email: str | None = Field(None, max_length=255)
    password: str = Field(max_length=MAX_PASSWORD)


@router.post("/user/", status_code=201)
async def create_user(body: NewUser, caller: AnyoneCaller) -> dict[str, Any]:
    """Sign up (when `auth.user_creation` is on and users live in the database). The new
    user then signs in with POST /signin."""
    rt = caller.runtime
    auth = rt.settings.auth
    if not auth.user_creation:
        raise forbidden("user creation is disabled on this registry")
    if auth.provider != "database":
        raise forbidden(f"users sign in through {auth.provider}: no sign-up here")
    try:
        parse_namespace(body.username)
    except NameInvalid as exc:
        raise bad_request(str(exc)) from exc
    if body.username in reserved_names(rt):
        raise conflict(f"the name {body.username!r} is taken")
    with answering():
        email = check_email(body.email)
    audit = AuditEntry(
        "create_user",
        caller.principal,
        caller.origin,
        namespace=body.username,
        details={"username": body.username, "signup": True},
    )
    try:
        await rt.users.create(body.username, body.password, email=email, audit=audit)
    except NameTaken as exc:
        raise conflict(str(exc)) from exc
    except UserError as exc:
        raise bad_request(str(exc)) from exc
    return {"username": body.username, "email": email, "awaiting_verification": False}


@router.get("/users/{username}")
async def get_public_user(username: str, caller: AnyoneCaller) -> dict[str, Any]:
    """Public information about a user: that they exist, nothing else."""
    try:
        parse_namespace(username)
    except NameInvalid as exc:
        raise not_found("no such user") from exc
    account = await accounts(caller.runtime).get(username)
    if account is None:
        raise not_found("no such user")
    return {"username": account.username, "is_org": False, "is_robot": False}
