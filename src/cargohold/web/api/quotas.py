"""Storage quotas of namespaces (docs/quotas.md), shaped after Quay's
endpoints/api/namespacequota.py: members read their organization's quota and usage, users
their own; only superusers set or clear a quota."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.services.usage import MAX_QUOTA_BYTES, NamespaceQuota
from cargohold.web.api.deps import Caller, OrgAccess, SignedIn, Superuser
from cargohold.web.api.errors import not_found
from cargohold.web.api.problems import answering

router = APIRouter(tags=["quotas"])

SuperCaller = Annotated[Caller, Depends(Superuser())]
OrgMember = Annotated[Caller, Depends(OrgAccess(admin=False))]


class QuotaChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Strict: a JSON integer, not `true` (1 byte) or "10".
    limit_bytes: StrictInt = Field(
        ge=0, le=MAX_QUOTA_BYTES, description="The hard limit, in bytes."
    )
    warning_percent: StrictInt | None = Field(
        None, ge=1, le=100, description="Default: the quota.default_warning_percent setting."
    )


def quota_list(quota: NamespaceQuota) -> list[dict[str, Any]]:
    """Quay's list of quotas: always the one that applies (`limit_bytes` null: none)."""
    return [quota.json()]


async def _namespace(caller: Caller, name: str, *, org: bool) -> NamespaceQuota:
    """The namespace `name` (an organization if `org`), 404 if there is none."""
    try:
        parse_namespace(name)
    except NameInvalid as exc:
        raise not_found("no such namespace") from exc
    with answering():
        quota = await caller.runtime.quotas.namespace(name)
    if org and quota.kind != "org":
        raise not_found("no such organization")
    return quota


async def _set(caller: Caller, name: str, body: QuotaChange | None, *, org: bool) -> Any:
    await _namespace(caller, name, org=org)
    quotas = caller.runtime.quotas
    with answering():
        if body is None:
            entry = caller.audit("delete_quota", details={"superuser": True})
            return await quotas.set(name, None, None, entry)
        entry = caller.audit("change_quota", details={"superuser": True})
        return await quotas.set(name, body.limit_bytes, body.warning_percent, entry)


@router.get("/organization/{orgname}/quota", summary="An organization's quota and usage")
async def get_org_quota(orgname: str, caller: OrgMember) -> list[dict[str, Any]]:
    return quota_list(await _namespace(caller, orgname, org=True))


@router.put("/organization/{orgname}/quota", summary="Set an organization's quota")
async def set_org_quota(orgname: str, body: QuotaChange, caller: SuperCaller) -> list[Any]:
    """Superusers only. Usage may already exceed the new limit: then pushes that add
    bytes are refused until usage falls under it."""
    return quota_list(await _set(caller, orgname, body, org=True))


@router.delete(
    "/organization/{orgname}/quota",
    status_code=204,
    response_class=Response,
    summary="Clear an organization's quota",
)
async def clear_org_quota(orgname: str, caller: SuperCaller) -> Response:
    """Superusers only: back to the quota.default_bytes setting (none by default)."""
    await _set(caller, orgname, None, org=True)
    return Response(status_code=204)


@router.get("/user/quota", summary="The caller's own namespace's quota and usage")
async def get_user_quota(
    caller: Annotated[Caller, Depends(SignedIn("user:read"))],
) -> list[dict[str, Any]]:
    return quota_list(await _namespace(caller, caller.principal.name or "", org=False))


@router.get("/superuser/namespaces/{namespace}/quota", summary="A namespace's quota and usage")
async def get_namespace_quota(namespace: str, caller: SuperCaller) -> list[dict[str, Any]]:
    return quota_list(await _namespace(caller, namespace, org=False))


@router.put("/superuser/namespaces/{namespace}/quota", summary="Set a namespace's quota")
async def set_namespace_quota(
    namespace: str, body: QuotaChange, caller: SuperCaller
) -> list[dict[str, Any]]:
    """Any namespace: a user's own or an organization."""
    return quota_list(await _set(caller, namespace, body, org=False))


@router.delete(
    "/superuser/namespaces/{namespace}/quota",
    status_code=204,
    response_class=Response,
    summary="Clear a namespace's quota",
)
async def clear_namespace_quota(namespace: str, caller: SuperCaller) -> Response:
    await _set(caller, namespace, None, org=False)
    return Response(status_code=204)
