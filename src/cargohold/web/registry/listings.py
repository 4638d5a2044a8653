"""The API version check, tag lists, the catalog and the referrers API."""

from __future__ import annotations

import json

from starlette.responses import Response

from cargohold.domain import mediatypes as mt
from cargohold.domain.digests import parse_digest
from cargohold.web.registry.params import last_param, next_link, page_size
from cargohold.web.registry.router import Call


def _json(
    payload: object, link: str | None = None, media_type: str = "application/json"
) -> Response:
    headers = {"Link": link} if link else None
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, media_type=media_type, headers=headers)


async def api_version(call: Call) -> Response:
    return _json({})


async def list_tags(call: Call) -> Response:
    reg = call.runtime.settings.registry
    n = page_size(call.request, reg.max_page_size, default=reg.max_tag_list)
    page = await call.runtime.listings.tags(call.repo, n, last_param(call.request))
    link = None
    if page.has_more and page.last:
        link = next_link(f"/v2/{call.repo}/tags/list", n, page.last)
    return _json({"name": call.repo.value, "tags": page.items}, link)


async def catalog(call: Call) -> Response:
    n = page_size(call.request, call.runtime.settings.registry.max_page_size)
    page = await call.runtime.listings.repositories(n, last_param(call.request), call.principal)
    link = next_link("/v2/_catalog", n, page.last) if page.has_more and page.last else None
    return _json({"repositories": page.items}, link)


async def referrers(call: Call) -> Response:
    subject = parse_digest(call.params["digest"])
    artifact_type = call.request.query_params.get("artifactType") or None
    n = page_size(call.request, call.runtime.settings.registry.max_page_size)
    descriptors, has_more = await call.runtime.listings.referrers(
        call.repo, subject, artifact_type, n, last_param(call.request)
    )
    link = None
    if has_more and descriptors:
        extra = {"artifactType": artifact_type} if artifact_type else {}
        link = next_link(
            f"/v2/{call.repo}/referrers/{subject}", n, descriptors[-1]["digest"], **extra
        )
    response = _json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors},
        link,
        media_type=mt.OCI_INDEX,
    )
    if artifact_type is not None:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    return response
