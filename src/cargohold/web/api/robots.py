"""Robot accounts of the signed-in user (/user/robots) and of an organization
(/organization/{orgname}/robots), as in Quay. The token appears only in the answers of
creation and regeneration."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.principal import PrincipalKind
from cargohold.services.robots import MAX_DESCRIPTION, RobotInfo, RobotPermission, RobotService
from cargohold.web.api.deps import Caller, OrgAccess, SignedIn
from cargohold.web.api.errors import forbidden
from cargohold.web.api.problems import answering

router = APIRouter(tags=["robots"])

UserAdmin = Annotated[Caller, Depends(SignedIn("user:admin"))]
OrgAdmin = Annotated[Caller, Depends(OrgAccess("orgname", admin=True))]


class RobotBody(BaseModel):
    """What a caller may set on a new robot."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=MAX_DESCRIPTION)


def service(caller: Caller) -> RobotService:
    rt = caller.runtime
    return RobotService(
        rt.db,
        rt.audit,
        credentials_changed=rt.authenticator.changed,
        permissions_changed=rt.permissions.changed,
    )


def robot_json(robot: RobotInfo, token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": robot.name,
        "description": robot.description,
        "created": robot.created_at.isoformat() if robot.created_at else None,
    }
    if token is not None:
        body["token"] = token
    return body


def permissions_json(permissions: list[RobotPermission]) -> dict[str, Any]:
    return {
        "permissions": [
            {
                "repository": {
                    "namespace": p.repository.split("/", 1)[0],
                    "name": p.repository.split("/", 1)[1],
                    "full_name": p.repository,
                    "is_public": p.public,
                },
                "role": p.role,
            }
            for p in permissions
        ]
    }


def _user(caller: Caller) -> str:
    """The signed-in user's namespace (SignedIn lets only users through)."""
    name = caller.principal.name
    if name is None or caller.principal.kind is not PrincipalKind.USER:
        raise forbidden("only a user has robots of their own")
    return name


# -- shared implementations ----------------------------------------------------------------


async def _list(caller: Caller, namespace: str, kind: str) -> dict[str, Any]:
    with answering():
        robots = await service(caller).all_of(namespace, kind)
    return {"robots": [robot_json(r) for r in robots]}


async def _get(caller: Caller, namespace: str, kind: str, shortname: str) -> dict[str, Any]:
    with answering():
        return robot_json(await service(caller).get(namespace, kind, shortname))


async def _create(
    caller: Caller, namespace: str, kind: str, shortname: str, body: RobotBody | None
) -> dict[str, Any]:
    description = body.description if body is not None else ""
    with answering():
        token, robot = await service(caller).create(
            namespace, kind, shortname, description, caller.audit("create_robot")
        )
    return robot_json(robot, token)


async def _delete(caller: Caller, namespace: str, kind: str, shortname: str) -> Response:
    with answering():
        await service(caller).delete(namespace, kind, shortname, caller.audit("delete_robot"))
    return Response(status_code=204)


async def _regenerate(caller: Caller, namespace: str, kind: str, shortname: str) -> dict[str, Any]:
    with answering():
        token, robot = await service(caller).regenerate(
            namespace, kind, shortname, caller.audit("regenerate_robot_token")
        )
    return robot_json(robot, token)


async def _permissions(caller: Caller, namespace: str, kind: str, shortname: str) -> dict[str, Any]:
    with answering():
        _, permissions = await service(caller).permissions(namespace, kind, shortname)
    return permissions_json(permissions)


# -- the signed-in user's robots -----------------------------------------------------------


@router.get("/user/robots", summary="List the signed-in user's robots")
async def list_user_robots(caller: UserAdmin) -> dict[str, Any]:
    return await _list(caller, _user(caller), "user")


@router.get("/user/robots/{robot_shortname}/permissions", summary="A user robot's grants")
async def user_robot_permissions(caller: UserAdmin, robot_shortname: str) -> dict[str, Any]:
    return await _permissions(caller, _user(caller), "user", robot_shortname)


@router.post("/user/robots/{robot_shortname}/regenerate", summary="New token for a user robot")
async def regenerate_user_robot(caller: UserAdmin, robot_shortname: str) -> dict[str, Any]:
    return await _regenerate(caller, _user(caller), "user", robot_shortname)


@router.get("/user/robots/{robot_shortname}", summary="A user robot")
async def get_user_robot(caller: UserAdmin, robot_shortname: str) -> dict[str, Any]:
    return await _get(caller, _user(caller), "user", robot_shortname)


@router.put("/user/robots/{robot_shortname}", status_code=201, summary="Create a user robot")
async def create_user_robot(
    caller: UserAdmin, robot_shortname: str, body: RobotBody | None = None
) -> dict[str, Any]:
    return await _create(caller, _user(caller), "user", robot_shortname, body)


@router.delete(
    "/user/robots/{robot_shortname}",
    status_code=204,
    response_class=Response,
    summary="Delete a user robot",
)
async def delete_user_robot(caller: UserAdmin, robot_shortname: str) -> Response:
    return await _delete(caller, _user(caller), "user", robot_shortname)


# -- an organization's robots --------------------------------------------------------------


@router.get("/organization/{orgname}/robots", summary="List an organization's robots")
async def list_org_robots(caller: OrgAdmin, orgname: str) -> dict[str, Any]:
    return await _list(caller, orgname, "org")


@router.get(
    "/organization/{orgname}/robots/{robot_shortname}/permissions",
    summary="An organization robot's grants",
)
async def org_robot_permissions(
    caller: OrgAdmin, orgname: str, robot_shortname: str
) -> dict[str, Any]:
    return await _permissions(caller, orgname, "org", robot_shortname)


@router.post(
    "/organization/{orgname}/robots/{robot_shortname}/regenerate",
    summary="New token for an organization robot",
)
async def regenerate_org_robot(
    caller: OrgAdmin, orgname: str, robot_shortname: str
) -> dict[str, Any]:
    return await _regenerate(caller, orgname, "org", robot_shortname)


@router.get("/organization/{orgname}/robots/{robot_shortname}", summary="An organization robot")
async def get_org_robot(caller: OrgAdmin, orgname: str, robot_shortname: str) -> dict[str, Any]:
    return await _get(caller, orgname, "org", robot_shortname)


@router.put(
    "/organization/{orgname}/robots/{robot_shortname}",
    status_code=201,
    summary="Create an organization robot",
)
async def create_org_robot(
    caller: OrgAdmin, orgname: str, robot_shortname: str, body: RobotBody | None = None
) -> dict[str, Any]:
    return await _create(caller, orgname, "org", robot_shortname, body)


@router.delete(
    "/organization/{orgname}/robots/{robot_shortname}",
    status_code=204,
    response_class=Response,
    summary="Delete an organization robot",
)
async def delete_org_robot(caller: OrgAdmin, orgname: str, robot_shortname: str) -> Response:
    return await _delete(caller, orgname, "org", robot_shortname)
