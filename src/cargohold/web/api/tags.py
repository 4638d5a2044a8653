"""Tags, the time machine, manifests, labels and immutability rules of a repository,
shaped after Quay's `/api/v1/repository/{repository}/tag/...` and `/manifest/...`.

Where this differs from Quay (docs/api.md): the tag list pages with an opaque
`next_page` token (keyset) rather than page numbers, live tags come by name and the
history newest first; an immutable tag's refusal is a 409 naming the rule."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cargohold.auth.roles import Role
from cargohold.services.immutability import MAX_PATTERN, ImmutabilityRules, Rule
from cargohold.services.labels import MAX_KEY, MAX_VALUE
from cargohold.services.manifest_details import ManifestAdmin
from cargohold.services.tags import MAX_PAGE, TagRow, TagService, from_unix
from cargohold.web.api.deps import Caller, RepoAccess
from cargohold.web.api.errors import bad_request, not_found
from cargohold.web.api.problems import answering

router = APIRouter(tags=["tags"])

Reader = Annotated[Caller, Depends(RepoAccess(Role.READ, "repository"))]
Writer = Annotated[Caller, Depends(RepoAccess(Role.WRITE, "repository"))]
Admin = Annotated[Caller, Depends(RepoAccess(Role.ADMIN, "repository"))]

TAG = "/repository/{repository:path}/tag/{tag}"
MANIFEST = "/repository/{repository:path}/manifest/{digest}"
IMMUTABILITY = "/repository/{repository:path}/immutability"
DIGEST_LENGTH = 150  # the column's length


class TagChange(BaseModel):
    """PUT a tag: point it at a manifest of the repository, and/or set (UNIX seconds) or
    clear (null) its expiration."""

    model_config = ConfigDict(extra="forbid")
    manifest_digest: str | None = Field(None, max_length=DIGEST_LENGTH)
    expiration: int | None = Field(
        None, ge=0, description="UNIX seconds in the future; null clears the expiration."
    )


class TagRestore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest_digest: str = Field(max_length=DIGEST_LENGTH)


class HistoryRemoval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest_digest: str | None = Field(
        None, max_length=DIGEST_LENGTH, description="Only the rows on this manifest."
    )


class NewLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: str = Field(max_length=MAX_VALUE)
    media_type: str | None = Field(None, description='"text/plain" (the only kind stored).')


class NewRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(min_length=1, max_length=MAX_PATTERN, description="A glob: v*, 1.*")


def tags(caller: Caller) -> TagService:
    rt = caller.runtime
    return TagService(
        rt.db,
        rt.audit,
        time_machine_seconds=rt.settings.tags.time_machine_seconds,
        content_changed=rt.cache.invalidate,
    )


def manifests(caller: Caller) -> ManifestAdmin:
    rt = caller.runtime
    return ManifestAdmin(
        rt.db,
        rt.audit,
        time_machine_seconds=rt.settings.tags.time_machine_seconds,
        content_changed=rt.cache.invalidate,
    )


def rules(caller: Caller) -> ImmutabilityRules:
    rt = caller.runtime
    return ImmutabilityRules(rt.db, rt.audit, content_changed=rt.cache.invalidate)


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def tag_json(row: TagRow) -> dict[str, Any]:
    """Quay's tag fields: `end_ts`/`expiration` are the row's end (when it was moved or
    deleted, or when it expires or expired)."""
    out: dict[str, Any] = {
        "name": row.name,
        "manifest_digest": row.digest,
        "is_manifest_list": row.is_manifest_list,
        "size": row.size,
        "start_ts": int(row.started_at.timestamp()),
        "last_modified": _rfc2822(row.started_at),
    }
    end = row.end
    if end is not None:
        out["end_ts"] = int(end.timestamp())
        out["expiration"] = _rfc2822(end)
    return out


def rule_json(rule: Rule) -> dict[str, Any]:
    return {"id": str(rule.id), "pattern": rule.pattern}


def _number(text: str, what: str) -> int:
    """An id from the path; anything else names nothing (isdigit() alone takes "²")."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise not_found(f"no such {what}")
    return int(text)


async def _live(caller: Caller, repository: str, tag: str) -> dict[str, Any] | None:
    page = await tags(caller).page(repository, active_only=True, specific=tag, limit=1)
    return tag_json(page.tags[0]) if page.tags else None


# -- tags ------------------------------------------------------------------------------------


@router.get("/repository/{repository:path}/tag/", summary="List tags, or their history")
async def list_tags(
    caller: Reader,
    repository: str,
    only_active: Annotated[bool, Query(alias="onlyActiveTags")] = False,
    specific: Annotated[str | None, Query(alias="specificTag", max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    next_page: Annotated[str | None, Query(max_length=400)] = None,
) -> dict[str, Any]:
    """Live tags by name with `onlyActiveTags=true`; otherwise every lifetime row of
    every tag (live, moved, deleted, expired), newest first."""
    with answering():
        page = await tags(caller).page(
            repository,
            active_only=only_active,
            specific=specific,
            limit=limit,
            next_page=next_page,
        )
    body: dict[str, Any] = {
        "tags": [tag_json(t) for t in page.tags],
        "has_additional": page.next_page is not None,
        "time_machine_seconds": int(page.window.total_seconds()),
    }
    if page.next_page:
        body["next_page"] = page.next_page
    return body


@router.post(TAG + "/restore", summary="Restore a tag from the time machine")
async def restore_tag(
    caller: Writer, repository: str, tag: str, body: TagRestore
) -> dict[str, Any]:
    with answering():
        await tags(caller).restore(
            repository,
            tag,
            body.manifest_digest,
            principal=caller.principal,
            origin=caller.origin,
        )
        live = await _live(caller, repository, tag)
    return live or {}


@router.post(TAG + "/expire", summary="Remove a tag's history from the time machine")
async def remove_tag_history(
    caller: Admin, repository: str, tag: str, body: HistoryRemoval
) -> dict[str, Any]:
    with answering():
        removed = await tags(caller).remove_history(
            repository,
            tag,
            body.manifest_digest,
            principal=caller.principal,
            origin=caller.origin,
        )
    return {"removed": removed}


@router.put(TAG, summary="Create or move a tag; set or clear its expiration")
async def put_tag(
    caller: Writer, repository: str, tag: str, body: TagChange, response: Response
) -> dict[str, Any]:
    fields = body.model_fields_set
    with answering():
        created = await tags(caller).put(
            repository,
            tag,
            digest=body.manifest_digest,
            set_expiration="expiration" in fields,
            expiration=from_unix(body.expiration),
            principal=caller.principal,
            origin=caller.origin,
        )
        live = await _live(caller, repository, tag)
    response.status_code = 201 if created else 200
    return live or {}


@router.get(TAG, summary="A live tag")
async def get_tag(caller: Reader, repository: str, tag: str) -> dict[str, Any]:
    with answering():
        live = await _live(caller, repository, tag)
    if live is None:
        raise not_found(f"no live tag {tag} in {repository}")
    return live


@router.delete(TAG, status_code=204, response_class=Response, summary="Delete a tag")
async def delete_tag(caller: Writer, repository: str, tag: str) -> Response:
    with answering():
        await tags(caller).delete(repository, tag, principal=caller.principal, origin=caller.origin)
    return Response(status_code=204)


# -- manifests and labels ----------------------------------------------------------------------


@router.get(MANIFEST + "/labels/{label_id}", summary="A label of a manifest")
async def get_label(caller: Reader, repository: str, digest: str, label_id: str) -> dict[str, Any]:
    with answering():
        label = await manifests(caller).label(repository, digest, _number(label_id, "label"))
    return label.json()


@router.delete(
    MANIFEST + "/labels/{label_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a label added through the API",
)
async def delete_label(caller: Writer, repository: str, digest: str, label_id: str) -> Response:
    with answering():
        await manifests(caller).delete_label(
            repository,
            digest,
            _number(label_id, "label"),
            principal=caller.principal,
            origin=caller.origin,
        )
    return Response(status_code=204)


@router.get(MANIFEST + "/labels", summary="Labels of a manifest")
async def list_labels(
    caller: Reader,
    repository: str,
    digest: str,
    prefix: Annotated[str | None, Query(alias="filter", max_length=MAX_KEY)] = None,
) -> dict[str, Any]:
    """`filter`: only keys starting with it."""
    with answering():
        found = await manifests(caller).labels(repository, digest, prefix)
    return {"labels": [label.json() for label in found]}


@router.post(MANIFEST + "/labels", status_code=201, summary="Add a label to a manifest")
async def add_label(caller: Writer, repository: str, digest: str, body: NewLabel) -> dict[str, Any]:
    if body.media_type not in (None, "text/plain"):
        raise bad_request("media_type: only text/plain labels are stored")
    with answering():
        label = await manifests(caller).add_label(
            repository,
            digest,
            body.key,
            body.value,
            principal=caller.principal,
            origin=caller.origin,
        )
    return label.json()


@router.get(MANIFEST, summary="A manifest: layers, config, platforms, labels, referrers, tags")
async def get_manifest(caller: Reader, repository: str, digest: str) -> dict[str, Any]:
    with answering():
        return await manifests(caller).details(repository, digest)


# -- immutability rules --------------------------------------------------------------------------


@router.delete(
    IMMUTABILITY + "/{rule_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a tag immutability rule",
)
async def delete_rule(caller: Admin, repository: str, rule_id: str) -> Response:
    with answering():
        await rules(caller).delete(
            repository, _number(rule_id, "rule"), caller.audit("delete_immutability_rule")
        )
    return Response(status_code=204)


@router.get(IMMUTABILITY, summary="Tag immutability rules of a repository")
async def list_rules(caller: Admin, repository: str) -> dict[str, Any]:
    with answering():
        found = await rules(caller).list(repository)
    return {"rules": [rule_json(r) for r in found]}


@router.post(IMMUTABILITY, status_code=201, summary="Add a tag immutability rule")
async def add_rule(caller: Admin, repository: str, body: NewRule) -> dict[str, Any]:
    with answering():
        rule = await rules(caller).add(
            repository, body.pattern, caller.audit("create_immutability_rule")
        )
    return rule_json(rule)
