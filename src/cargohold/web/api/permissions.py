"""Repository permissions granted to users and robots (/permissions/user/...) and to
teams (/permissions/team/...), as in Quay. Every route needs admin on the repository.

These routes are included before repositories.py's, whose `/repository/{repository:path}`
would otherwise take `org/app/permissions/user/bob` for a repository name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict

from cargohold.auth.roles import Role
from cargohold.services.permissions import Grant, GrantService
from cargohold.web.api.deps import Caller, RepoAccess
from cargohold.web.api.problems import answering

router = APIRouter(tags=["permissions"])

Admin = Annotated[Caller, Depends(RepoAccess(Role.ADMIN, "repository"))]
BASE = "/repository/{repository:path}/permissions"


class PermissionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["read", "write", "admin"]


def service(caller: Caller) -> GrantService:
    rt = caller.runtime
    return GrantService(rt.db, rt.audit, rt.permissions.changed)


def user_json(grant: Grant) -> dict[str, Any]:
    return {
        "name": grant.name,
        "role": grant.role,
        "is_robot": grant.kind == "robot",
        "is_org_member": grant.org_member,
    }


def team_json(grant: Grant) -> dict[str, Any]:
    return {"name": grant.name, "role": grant.role}


# -- users and robots ----------------------------------------------------------------------


@router.get(f"{BASE}/user/", summary="Grants to users and robots")
@router.get(f"{BASE}/user", include_in_schema=False)
async def list_user_permissions(caller: Admin, repository: str) -> dict[str, Any]:
    with answering():
        grants = await service(caller).list_users(repository)
    return {"permissions": {g.name: user_json(g) for g in grants}}


@router.get(f"{BASE}/user/{{username}}", summary="A user's or robot's grant")
async def get_user_permission(caller: Admin, repository: str, username: str) -> dict[str, Any]:
    with answering():
        return user_json(await service(caller).get(repository, username, team=False))


@router.put(f"{BASE}/user/{{username}}", summary="Grant a role to a user or robot")
async def set_user_permission(
    caller: Admin, repository: str, username: str, body: PermissionBody
) -> dict[str, Any]:
    with answering():
        grant = await service(caller).set(
            repository, username, body.role, caller.audit("change_repo_permission"), team=False
        )
    return user_json(grant)


@router.delete(
    f"{BASE}/user/{{username}}",
    status_code=204,
    response_class=Response,
    summary="Remove a user's or robot's grant",
)
async def delete_user_permission(caller: Admin, repository: str, username: str) -> Response:
    with answering():
        await service(caller).delete(
            repository, username, caller.audit("delete_repo_permission"), team=False
        )
    return Response(status_code=204)


# -- teams ---------------------------------------------------------------------------------


@router.get(f"{BASE}/team/", summary="Grants to teams")
@router.get(f"{BASE}/team", include_in_schema=False)
async def list_team_permissions(caller: Admin, repository: str) -> dict[str, Any]:
    with answering():
        grants = await service(caller).list_teams(repository)
    return {"permissions": {g.name: team_json(g) for g in grants}}


@router.get(f"{BASE}/team/{{teamname}}", summary="A team's grant")
async def get_team_permission(caller: Admin, repository: str, teamname: str) -> dict[str, Any]:
    with answering():
        return team_json(await service(caller).get(repository, teamname, team=True))


@router.put(f"{BASE}/team/{{teamname}}", summary="Grant a role to a team")
async def set_team_permission(
    caller: Admin, repository: str, teamname: str, body: PermissionBody
) -> dict[str, Any]:
    with answering():
        grant = await service(caller).set(
            repository, teamname, body.role, caller.audit("change_repo_permission"), team=True
        )
    return team_json(grant)


@router.delete(
    f"{BASE}/team/{{teamname}}",
    status_code=204,
    response_class=Response,
    summary="Remove a team's grant",
)
async def delete_team_permission(caller: Admin, repository: str, teamname: str) -> Response:
    with answering():
        await service(caller).delete(
            repository, teamname, caller.audit("delete_repo_permission"), team=True
        )
    return Response(status_code=204)
