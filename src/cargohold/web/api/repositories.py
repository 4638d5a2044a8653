"""Repositories: create, list what the caller can read, describe, change visibility,
delete (empty ones only, until garbage collection exists: see docs/api.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.principal import ANONYMOUS
from cargohold.auth.roles import Role
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.services.repository_admin import (
    MAX_DESCRIPTION,
    MAX_PAGE,
    RepositoryAdmin,
    RepositoryInfo,
    decode_page,
)
from cargohold.services.repository_search import RepositorySearch, user_id
from cargohold.web.api.deps import Anyone, Caller, RepoAccess, SignedIn, has_scope
from cargohold.web.api.errors import bad_request
from cargohold.web.api.problems import answering
from cargohold.web.api.stars import listed_json
from cargohold.web.api.users import iso

router = APIRouter(tags=["repositories"])

Reader = Annotated[Caller, Depends(RepoAccess(Role.READ, "repository"))]
Admin = Annotated[Caller, Depends(RepoAccess(Role.ADMIN, "repository"))]

Visibility = Literal["public", "private"]


class NewRepository(BaseModel):
    """POST /repository. `repo_kind` is accepted for Quay's clients ("image" only)."""

    model_config = ConfigDict(extra="forbid")
    repository: str = Field(max_length=255, description="The name within the namespace.")
    namespace: str = Field(max_length=255)
    visibility: Visibility | None = Field(
        None, description="Default: the auth.new_repositories_public setting."
    )
    description: str = Field("", max_length=MAX_DESCRIPTION)
    repo_kind: Literal["image"] | None = None


class RepositoryChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(max_length=MAX_DESCRIPTION)


class VisibilityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility: Visibility


def service(caller: Caller) -> RepositoryAdmin:
    rt = caller.runtime
    return RepositoryAdmin(
        rt.db,
        rt.audit,
        rt.creator,
        permissions_changed=rt.permissions.changed,
        content_changed=rt.cache.invalidate,
    )


def summary_json(repo: RepositoryInfo) -> dict[str, Any]:
    return {
        "namespace": repo.namespace,
        "name": repo.short_name,
        "kind": "image",
        "description": repo.description,
        "is_public": repo.public,
    }


SUCCESS = {"success": True}


@router.post("/repository", status_code=201, summary="Create a repository")
async def create_repository(
    caller: Annotated[Caller, Depends(SignedIn("repo:create"))], body: NewRepository
) -> dict[str, Any]:
    public = None if body.visibility is None else body.visibility == "public"
    with answering():
        repo = await service(caller).create(
            caller.principal,
            body.namespace,
            body.repository,
            public=public,
            description=body.description,
            origin=caller.origin,
        )
    return {"namespace": repo.namespace, "name": repo.short_name, "kind": "image"}


@router.get("/repository", summary="List the repositories the caller can read")
async def list_repositories(
    caller: Annotated[Caller, Depends(Anyone())],
    namespace: Annotated[str, Query(max_length=255)] = "",
    public: bool = False,
    starred: Annotated[bool, Query(description="Only those the caller starred.")] = False,
    last: Annotated[str, Query(max_length=255, description="A full name to list after.")] = "",
    next_page: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> dict[str, Any]:
    """Each with `is_starred`, `size` (bytes linked into it) and `last_modified`."""
    if namespace:
        try:
            parse_namespace(namespace)
        except NameInvalid as exc:
            raise bad_request(f"namespace: {exc}") from exc
    if starred and user_id(caller.principal) is None:
        raise bad_request("starred=true lists a signed-in user's stars: sign in")
    principal = caller.principal
    if not has_scope(principal, "repo:read"):
        principal = ANONYMOUS  # a token without repo:read sees what anyone sees
    with answering():
        after = decode_page(next_page) if next_page else last
        page = await RepositorySearch(caller.runtime.db, caller.runtime.audit).page(
            principal,
            viewer=caller.principal,
            namespace=namespace,
            with_public=public or starred,
            starred_only=starred,
            last=after,
            limit=limit,
        )
    body: dict[str, Any] = {"repositories": [listed_json(r) for r in page.repositories]}
    if page.next_page:
        body["next_page"] = page.next_page
    return body


# The longer paths first: {repository:path} would swallow "/changevisibility".


@router.post(
    "/repository/{repository:path}/changevisibility", summary="Make a repository public/private"
)
async def change_visibility(
    caller: Admin, repository: str, body: VisibilityChange
) -> dict[str, Any]:
    with answering():
        await service(caller).set_visibility(
            repository, body.visibility == "public", caller.audit("change_repo_visibility")
        )
    return SUCCESS


@router.get("/repository/{repository:path}", summary="A repository")
async def get_repository(caller: Reader, repository: str) -> dict[str, Any]:
    with answering():
        repo = await service(caller).get(repository)
        usage = await caller.runtime.quotas.repository(repository, caller.principal)
    principal = caller.principal
    access = await caller.runtime.permissions.repository(principal, repository)
    role = access.role
    can_write = role is not None and role >= Role.WRITE and has_scope(principal, "repo:write")
    can_admin = role is Role.ADMIN and has_scope(principal, "repo:admin")
    return {
        **summary_json(repo),
        "is_organization": repo.namespace_kind == "org",
        "can_write": can_write,
        "can_admin": can_admin,
        "size": usage.used_bytes,
        "last_modified": iso(usage.last_modified),
        # Quay's: the repository's bytes and the limit of its namespace (docs/quotas.md),
        # the limit only for members of the namespace (as GET .../quota).
        "quota_report": {"quota_bytes": usage.used_bytes}
        | ({"configured_quota": usage.namespace.limit_bytes} if usage.member else {}),
    }


@router.put("/repository/{repository:path}", summary="Change a repository's description")
async def change_repository(
    caller: Admin, repository: str, body: RepositoryChange
) -> dict[str, Any]:
    with answering():
        await service(caller).set_description(
            repository, body.description, caller.audit("change_repo_description")
        )
    return SUCCESS


@router.delete(
    "/repository/{repository:path}",
    status_code=204,
    response_class=Response,
    summary="Delete an empty repository",
)
async def delete_repository(caller: Admin, repository: str) -> Response:
    with answering():
        await service(caller).delete(repository, caller.audit("delete_repo"))
    return Response(status_code=204)
