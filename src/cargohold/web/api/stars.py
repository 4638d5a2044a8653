"""Stars (/user/starred) and the repository search (/find/repositories), shaped after
Quay's endpoints/api/repository.py (starred) and search.py (find)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.principal import ANONYMOUS
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_repository
from cargohold.services.repository_admin import MAX_PAGE, decode_page
from cargohold.services.repository_search import (
    MAX_QUERY,
    ListedRepository,
    RepositorySearch,
)
from cargohold.web.api.deps import Anyone, Caller, SignedIn, has_scope
from cargohold.web.api.errors import not_found
from cargohold.web.api.problems import answering
from cargohold.web.api.users import iso

router = APIRouter(tags=["repositories"])

Starrer = Annotated[Caller, Depends(SignedIn("repo:read"))]
PageToken = Annotated[str | None, Query(max_length=400)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


class NewStar(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str = Field(max_length=255)
    repository: str = Field(max_length=255, description="The name within the namespace.")


def search(caller: Caller) -> RepositorySearch:
    return RepositorySearch(caller.runtime.db, caller.runtime.audit)


def listed_json(repo: ListedRepository) -> dict[str, Any]:
    """A repository in a list: Quay's summary plus `is_starred`, `size`, `last_modified`."""
    return {
        "namespace": repo.namespace,
        "name": repo.short_name,
        "kind": "image",
        "description": repo.description,
        "is_public": repo.public,
        "is_starred": repo.starred,
        "size": repo.size,
        "last_modified": iso(repo.last_modified),
    }


@router.post("/user/starred", status_code=201, summary="Star a repository")
async def star(caller: Starrer, body: NewStar) -> dict[str, str]:
    """Star a repository the caller can read (404 otherwise, as for one that does not
    exist); starring it again changes nothing."""
    try:
        name = parse_repository(f"{body.namespace}/{body.repository}")
    except NameInvalid as exc:
        raise not_found("no such repository") from exc
    access = await caller.runtime.permissions.repository(caller.principal, name.value)
    if access.role is None or not access.exists:
        raise not_found("no such repository")
    with answering():
        await search(caller).star(caller.user_id, name.value, caller.audit("star_repo"))
    return {"namespace": name.namespace, "repository": name.value.split("/", 1)[1]}


@router.get("/user/starred", summary="The repositories the caller starred")
async def starred(
    caller: Starrer, next_page: PageToken = None, limit: Limit = MAX_PAGE
) -> dict[str, Any]:
    """Only those the caller can still read, by name; `next_page` when there are more."""
    with answering():
        after = decode_page(next_page) if next_page else ""
        page = await search(caller).page(
            caller.principal, starred_only=True, with_public=True, last=after, limit=limit
        )
    body: dict[str, Any] = {"repositories": [listed_json(r) for r in page.repositories]}
    if page.next_page:
        body["next_page"] = page.next_page
    return body


@router.delete(
    "/user/starred/{repository:path}",
    status_code=204,
    response_class=Response,
    summary="Remove a star",
)
async def unstar(caller: Starrer, repository: str) -> Response:
    """204 whether or not the repository was starred, or exists."""
    try:
        name = parse_repository(repository)
    except NameInvalid:
        return Response(status_code=204)  # nothing by that name was ever starred
    with answering():
        await search(caller).unstar(caller.user_id, name.value, caller.audit("unstar_repo"))
    return Response(status_code=204)


@router.get("/find/repositories", summary="Search repositories by name or description")
async def find_repositories(
    caller: Annotated[Caller, Depends(Anyone())],
    query: Annotated[str, Query(min_length=1, max_length=MAX_QUERY)],
    next_page: PageToken = None,
    limit: Limit = MAX_PAGE,
) -> dict[str, Any]:
    """Repositories the caller can read (public ones included) whose full name or
    description contains `query`, any case; by name, `next_page` when there are more."""
    principal = caller.principal
    if not has_scope(principal, "repo:read"):
        principal = ANONYMOUS
    with answering():
        after = decode_page(next_page) if next_page else ""
        page = await search(caller).page(
            principal,
            viewer=caller.principal,
            with_public=True,
            query=query,
            last=after,
            limit=limit,
        )
    results = [
        {
            **listed_json(r),
            "kind": "repository",  # Quay's kind of search result
            "namespace": {"name": r.namespace, "kind": _kind(r.namespace_kind)},
            "href": f"/repository/{r.name}",
        }
        for r in page.repositories
    ]
    body: dict[str, Any] = {"results": results}
    if page.next_page:
        body["next_page"] = page.next_page
    return body


def _kind(namespace_kind: str) -> str:
    return "organization" if namespace_kind == "org" else "user"
