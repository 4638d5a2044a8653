"""Team sync: make a team follow a group of the identity provider (Quay's `/syncing`).

POST sets the group (LDAP: `group_dn`, a full DN that must exist in the directory and is
stored as the directory spells it; OIDC: `group_name`, a value of the groups claim);
DELETE stops syncing and keeps the synced members as ordinary members. Organization
administrators only. services/teamsync.py does the syncing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.external import LdapUnavailable
from cargohold.services.teamsync import TeamSyncError
from cargohold.web.api.deps import Caller, OrgAccess
from cargohold.web.api.errors import ApiError, bad_request, not_found

router = APIRouter(tags=["teams"])

PATH = "/organization/{orgname}/team/{teamname}/syncing"


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group_dn: str | None = Field(None, max_length=512, description="LDAP: the group's DN")
    group_name: str | None = Field(None, max_length=512, description="OIDC: the group name")


def _view(caller: Caller, teamname: str, group: str | None) -> dict[str, Any]:
    provider = caller.runtime.settings.auth.provider
    field = "group_dn" if provider == "ldap" else "group_name"
    return {
        "name": teamname,
        "is_synced": group is not None,
        "synced": None if group is None else {"service": provider, "config": {field: group}},
    }


@router.post(PATH, summary="Sync a team with an identity provider group")
async def enable_sync(
    orgname: str,
    teamname: str,
    body: SyncRequest,
    caller: Annotated[Caller, Depends(OrgAccess("orgname", admin=True))],
) -> dict[str, Any]:
    teamsync = caller.runtime.teamsync
    provider = caller.runtime.settings.auth.provider
    given = body.group_dn if provider == "ldap" else body.group_name
    other = body.group_name if provider == "ldap" else body.group_dn
    if provider not in ("ldap", "oidc"):
        raise bad_request("team sync needs auth.provider ldap or oidc")
    if given is None or other is not None:
        wanted = "group_dn" if provider == "ldap" else "group_name"
        raise bad_request(f"send {wanted} (the {provider} group)")
    try:
        group = await teamsync.canonical_group(given)
    except TeamSyncError as exc:
        raise bad_request(str(exc)) from exc
    except LdapUnavailable as exc:
        raise ApiError(502, "the LDAP directory cannot be reached", "upstream_error") from exc
    entry = caller.audit(
        "sync_team",
        namespace=orgname,
        details={"team": teamname, "group": group, "service": provider, "enabled": True},
    )
    if await teamsync.set_group(orgname, teamname, group, entry) is None:
        raise not_found("no such team")
    return _view(caller, teamname, group)


@router.delete(PATH, status_code=204, summary="Stop syncing a team")
async def disable_sync(
    orgname: str,
    teamname: str,
    caller: Annotated[Caller, Depends(OrgAccess("orgname", admin=True))],
) -> Response:
    entry = caller.audit(
        "sync_team",
        namespace=orgname,
        details={"team": teamname, "enabled": False},
    )
    if not await caller.runtime.teamsync.remove_group(orgname, teamname, entry):
        raise not_found("no such team")
    return Response(status_code=204)
