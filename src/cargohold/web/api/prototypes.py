"""Default permissions ("prototypes") of an organization:
/api/v1/organization/{orgname}/prototypes[/{prototypeid}], shaped after Quay's
endpoints/api/prototype.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.services.prototypes import Delegate
from cargohold.web.api.deps import Caller, OrgAccess
from cargohold.web.api.organizations import prototypes
from cargohold.web.api.problems import answering

router = APIRouter(tags=["default permissions"])

PROTOTYPES = "/organization/{orgname}/prototypes"
Admin = Annotated[Caller, Depends(OrgAccess())]


class DelegateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=512, description="User, team or robot name.")
    kind: Literal["user", "team", "robot"] = Field(
        description="A robot may also be given as kind user with its name `org+short`."
    )

    def value(self) -> Delegate:
        return Delegate(self.name, self.kind)


class ActivatingUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)


class NewPrototype(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["read", "write", "admin"]
    delegate: DelegateBody
    activating_user: ActivatingUser | None = Field(
        None, description="Only when this user creates the repository (default: anyone)."
    )


class PrototypeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["read", "write", "admin"] | None = None
    delegate: DelegateBody | None = None
    activating_user: ActivatingUser | None = Field(
        None, description="Given as null: anyone. Left out: unchanged."
    )


@router.get(PROTOTYPES, summary="List an organization's default permissions")
async def list_prototypes(orgname: str, caller: Admin) -> dict[str, Any]:
    with answering():
        return {"prototypes": await prototypes(caller).for_org(orgname)}


@router.post(PROTOTYPES, summary="Create a default permission")
async def create_prototype(orgname: str, body: NewPrototype, caller: Admin) -> dict[str, Any]:
    """When the activating user (or anyone) creates a repository in the organization,
    grant `role` to the delegate (a user, a team or a robot of the organization)."""
    activating = body.activating_user.name if body.activating_user else None
    with answering():
        return await prototypes(caller).create(
            orgname, body.role, body.delegate.value(), activating, caller.audit("create_prototype")
        )


@router.get(PROTOTYPES + "/{prototypeid}", summary="Get a default permission")
async def get_prototype(orgname: str, prototypeid: str, caller: Admin) -> dict[str, Any]:
    with answering():
        return await prototypes(caller).get(orgname, prototypeid)


@router.put(PROTOTYPES + "/{prototypeid}", summary="Change a default permission")
async def change_prototype(
    orgname: str, prototypeid: str, body: PrototypeUpdate, caller: Admin
) -> dict[str, Any]:
    """Changes the role, and the delegate and activating user when given."""
    given = "activating_user" in body.model_fields_set
    with answering():
        return await prototypes(caller).change(
            orgname,
            prototypeid,
            caller.audit("change_prototype"),
            role=body.role,
            delegate=body.delegate.value() if body.delegate else None,
            activating_user=body.activating_user.name if body.activating_user else None,
            activating_user_given=given,
        )


@router.delete(
    PROTOTYPES + "/{prototypeid}", status_code=204, summary="Delete a default permission"
)
async def delete_prototype(orgname: str, prototypeid: str, caller: Admin) -> Response:
    with answering():
        await prototypes(caller).delete(orgname, prototypeid, caller.audit("delete_prototype"))
    return Response(status_code=204)
