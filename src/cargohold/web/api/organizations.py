"""Organizations: /api/v1/organization/ (create) and /api/v1/organization/{orgname}
(details, e-mail, delete, members), shaped after Quay's endpoints/api/organization.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.services.organizations import OrganizationService
from cargohold.services.prototypes import PrototypeService
from cargohold.services.tags import MAX_WINDOW_SECONDS, TimeMachineWindows
from cargohold.services.teams import TeamService
from cargohold.web.api.deps import Caller, OrgAccess, SignedIn
from cargohold.web.api.problems import answering

router = APIRouter(tags=["organizations"])


# -- shared by organizations.py, teams.py and prototypes.py ---------------------------


def organizations(caller: Caller) -> OrganizationService:
    rt = caller.runtime
    return OrganizationService(rt.db, rt.audit, rt.permissions.changed, rt.authenticator.changed)


def teams(caller: Caller) -> TeamService:
    rt = caller.runtime
    return TeamService(rt.db, rt.audit, rt.permissions.changed)


def prototypes(caller: Caller) -> PrototypeService:
    rt = caller.runtime
    return PrototypeService(rt.db, rt.audit, rt.permissions.changed)


# -- request bodies: only what a caller may set ---------------------------------------


class NewOrg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, description="The organization's name.")
    email: str | None = Field(None, max_length=255, description="Contact e-mail address.")


class UpdateOrg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(None, max_length=255, description="Contact e-mail address.")
    tag_expiration_s: int | None = Field(
        None,
        ge=0,
        le=MAX_WINDOW_SECONDS,
        description="The time machine's window in seconds (0: none); null: the default.",
    )


def windows(caller: Caller) -> TimeMachineWindows:
    rt = caller.runtime
    return TimeMachineWindows(
        rt.db, rt.audit, default_seconds=rt.settings.tags.time_machine_seconds
    )


# -- routes ---------------------------------------------------------------------------


@router.post("/organization/", status_code=201, summary="Create an organization")
async def create_organization(
    body: NewOrg, caller: Annotated[Caller, Depends(SignedIn("org:admin"))]
) -> dict[str, Any]:
    """Any signed-in user may create an organization; they become its first admin
    (member of the team `owners`, role admin)."""
    service = organizations(caller)
    with answering():
        await service.create(body.name, body.email, caller.principal, caller.audit("create_org"))
        return await service.view(body.name, caller.principal)


@router.get("/organization/{orgname}", summary="Get an organization")
async def get_organization(
    orgname: str, caller: Annotated[Caller, Depends(OrgAccess(admin=False))]
) -> dict[str, Any]:
    """Members see the organization and their own teams; admins see every team with its
    role and counts, and the e-mail address. Anyone else gets 404."""
    with answering():
        view = await organizations(caller).view(orgname, caller.principal)
        view["tag_expiration_s"] = await windows(caller).get(orgname)
        quota = await caller.runtime.quotas.namespace(orgname)  # docs/quotas.md
        view["used_bytes"] = quota.used_bytes
        view["quota"] = quota.json()
        view["quota_report"] = quota.report()
        return view


@router.put("/organization/{orgname}", summary="Change an organization's details")
async def change_organization(
    orgname: str, body: UpdateOrg, caller: Annotated[Caller, Depends(OrgAccess())]
) -> dict[str, Any]:
    service = organizations(caller)
    with answering():
        if "email" in body.model_fields_set:
            await service.change(orgname, body.email, caller.audit("change_org"))
        if "tag_expiration_s" in body.model_fields_set:
            await windows(caller).set(orgname, body.tag_expiration_s, caller.audit("change_org"))
        view = await service.view(orgname, caller.principal)
        view["tag_expiration_s"] = await windows(caller).get(orgname)
        return view


@router.delete("/organization/{orgname}", status_code=204, summary="Delete an organization")
async def delete_organization(
    orgname: str, caller: Annotated[Caller, Depends(OrgAccess())]
) -> Response:
    """Refused (409) while the organization has repositories. Deletes its teams, robots,
    default permissions and OAuth applications (with their tokens)."""
    with answering():
        await organizations(caller).delete(orgname, caller.audit("delete_org"))
    return Response(status_code=204)


@router.get("/organization/{orgname}/members", summary="List an organization's members")
async def organization_members(
    orgname: str, caller: Annotated[Caller, Depends(OrgAccess())]
) -> dict[str, Any]:
    """Every user and robot in a team of the organization, with their teams."""
    with answering():
        return {"members": await organizations(caller).members(orgname)}
