"""Teams of an organization: /api/v1/organization/{orgname}/team/{teamname}[/members[/…]],
shaped after Quay's endpoints/api/team.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.web.api.deps import Caller, OrgAccess
from cargohold.web.api.organizations import teams
from cargohold.web.api.problems import answering

router = APIRouter(tags=["teams"])

TEAM = "/organization/{orgname}/team/{teamname}"


class TeamDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["member", "creator", "admin"] | None = Field(
        None,
        description="What membership gives in the organization (a new team: member).",
    )
    description: str | None = Field(None, max_length=4096)


@router.get(TEAM + "/members", summary="List a team's members")
async def team_members(
    orgname: str, teamname: str, caller: Annotated[Caller, Depends(OrgAccess(admin=False))]
) -> dict[str, Any]:
    """Organization admins see every team; other members only the teams they are in."""
    with answering():
        return await teams(caller).members(orgname, teamname, caller.principal)


@router.put(TEAM + "/members/{membername}", summary="Add a user or robot to a team")
async def add_team_member(
    orgname: str,
    teamname: str,
    membername: str,
    caller: Annotated[Caller, Depends(OrgAccess())],
) -> dict[str, Any]:
    """`membername` is a user name, or a robot `<orgname>+<name>` of this organization."""
    with answering():
        return await teams(caller).add_member(
            orgname, teamname, membername, caller.audit("add_team_member")
        )


@router.delete(
    TEAM + "/members/{membername}", status_code=204, summary="Remove a member from a team"
)
async def remove_team_member(
    orgname: str,
    teamname: str,
    membername: str,
    caller: Annotated[Caller, Depends(OrgAccess())],
) -> Response:
    """Refused (409) for the last user of the organization's admin teams."""
    with answering():
        await teams(caller).remove_member(
            orgname, teamname, membername, caller.audit("remove_team_member")
        )
    return Response(status_code=204)


@router.get(TEAM, summary="Get a team")
async def get_team(
    orgname: str, teamname: str, caller: Annotated[Caller, Depends(OrgAccess(admin=False))]
) -> dict[str, Any]:
    with answering():
        return await teams(caller).get(orgname, teamname, caller.principal)


@router.put(TEAM, summary="Create or change a team")
async def put_team(
    orgname: str,
    teamname: str,
    body: TeamDescription,
    caller: Annotated[Caller, Depends(OrgAccess())],
) -> dict[str, Any]:
    """Creates the team if it does not exist (role `member` unless given), otherwise
    changes its role and/or description."""
    with answering():
        view, created = await teams(caller).put(
            orgname, teamname, caller.audit, role=body.role, description=body.description
        )
    return {**view, "new_team": created}


@router.delete(TEAM, status_code=204, summary="Delete a team")
async def delete_team(
    orgname: str, teamname: str, caller: Annotated[Caller, Depends(OrgAccess())]
) -> Response:
    """Refused (409) for the organization's last admin team."""
    with answering():
        await teams(caller).delete(orgname, teamname, caller.audit("delete_team"))
    return Response(status_code=204)
