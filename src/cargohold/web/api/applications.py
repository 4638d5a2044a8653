"""OAuth applications of an organization (/organization/{orgname}/applications), for its
administrators, and a direct way for them to generate an access token for themselves.

The client secret appears only in the answers of creation and reset (Quay shows it on
every read; here only its hash is kept). The authorization-code grant itself is served
outside the API, at /oauth/authorize and /oauth/access_token (web/oauth.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.roles import API_SCOPES
from cargohold.services.applications import (
    MAX_DESCRIPTION,
    MAX_NAME,
    MAX_REDIRECT_URI,
    TOKEN_LIFETIME,
    Application,
    ApplicationService,
)
from cargohold.services.runtime import Runtime
from cargohold.web.api.deps import Caller, OrgAccess
from cargohold.web.api.problems import answering
from cargohold.web.api.tokens import grantable
from cargohold.web.api.users import iso

router = APIRouter(tags=["applications"])

OrgAdmin = Annotated[Caller, Depends(OrgAccess("orgname", admin=True))]
BASE = "/organization/{orgname}/applications"


def applications(rt: Runtime) -> ApplicationService:
    return ApplicationService(rt.db, rt.audit, rt.credentials, rt.authenticator.changed)


def app_view(app: Application, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": app.name,
        "description": app.description,
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "organization": app.organization,
        "created": iso(app.created_at),
    }
    if secret is not None:
        view["client_secret"] = secret
    return view


class NewApplication(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    redirect_uri: str = Field("", max_length=MAX_REDIRECT_URI)


class ApplicationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=MAX_NAME)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    redirect_uri: str | None = Field(None, max_length=MAX_REDIRECT_URI)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: list[str] = Field(min_length=1, max_length=len(API_SCOPES))


@router.get(BASE)
async def list_applications(orgname: str, caller: OrgAdmin) -> dict[str, Any]:
    with answering():
        apps = await applications(caller.runtime).in_org(orgname)
    return {"applications": [app_view(a) for a in apps]}


@router.post(BASE, status_code=201)
async def create_application(
    orgname: str, body: NewApplication, caller: OrgAdmin
) -> dict[str, Any]:
    """Register an application; its `client_secret` is in this answer only."""
    audit = caller.audit("create_application", namespace=orgname)
    with answering():
        app, secret = await applications(caller.runtime).create(
            orgname, body.name, body.description, body.redirect_uri, audit
        )
    return app_view(app, secret)


@router.get(BASE + "/{client_id}")
async def get_application(orgname: str, client_id: str, caller: OrgAdmin) -> dict[str, Any]:
    with answering():
        return app_view(await applications(caller.runtime).get(orgname, client_id))


@router.put(BASE + "/{client_id}")
async def update_application(
    orgname: str, client_id: str, body: ApplicationUpdate, caller: OrgAdmin
) -> dict[str, Any]:
    """Change the name, description or redirect URI (only the fields sent)."""
    fields = sorted(body.model_fields_set)
    audit = caller.audit("change_application", namespace=orgname, details={"fields": fields})
    with answering():
        app = await applications(caller.runtime).update(
            orgname,
            client_id,
            audit,
            name=body.name,
            description=body.description,
            redirect_uri=body.redirect_uri,
        )
    return app_view(app)


@router.delete(BASE + "/{client_id}", status_code=204)
async def delete_application(orgname: str, client_id: str, caller: OrgAdmin) -> Response:
    """Delete the application and revoke every token issued for it."""
    audit = caller.audit("delete_application", namespace=orgname)
    with answering():
        await applications(caller.runtime).delete(orgname, client_id, audit)
    return Response(status_code=204)


@router.post(BASE + "/{client_id}/resetclientsecret")
async def reset_client_secret(orgname: str, client_id: str, caller: OrgAdmin) -> dict[str, Any]:
    """A new client secret (in this answer only); the old one stops working."""
    audit = caller.audit("reset_application_secret", namespace=orgname)
    with answering():
        app, secret = await applications(caller.runtime).reset_secret(orgname, client_id, audit)
    return app_view(app, secret)


@router.post(BASE + "/{client_id}/token", status_code=201)
async def generate_token(
    orgname: str, client_id: str, body: TokenRequest, caller: OrgAdmin
) -> dict[str, Any]:
    """An access token of this application for the caller, with the scopes asked for
    (never more than the caller's own token has). It acts as the caller."""
    grantable(caller.principal, body.scopes)
    service = applications(caller.runtime)
    audit = caller.audit("create_oauth_token", namespace=orgname, details={"grant": "direct"})
    with answering():
        app = await service.get(orgname, client_id)
        token, info = await service.issue_token(app, caller.user_id, body.scopes, audit)
    return {
        "access_token": token,
        "token_type": "Bearer",
        "scope": " ".join(info.scopes),
        "expires_in": int(TOKEN_LIFETIME.total_seconds()),
    }
