"""Manifest GET, HEAD, PUT and DELETE."""

from __future__ import annotations

from starlette.responses import Response

from cargohold.domain.errors import ManifestTooLarge
from cargohold.services.manifests import parse_reference
from cargohold.web.context import origin_of
from cargohold.web.registry.params import content_length
from cargohold.web.registry.router import Call


async def get_manifest(call: Call) -> Response:
    reference = parse_reference(call.params["reference"])
    is_get = call.request.method == "GET"
    record = await call.runtime.manifests.get(
        call.repo,
        reference,
        principal=call.principal,
        origin=origin_of(call.request),
        log_pull=is_get,  # a HEAD checks, a GET pulls
    )
    headers = {
        "Docker-Content-Digest": record.digest,
        "ETag": f'"{record.digest}"',
        "Content-Length": str(record.size),
    }
    body = record.payload if is_get else b""
    return Response(body, headers=headers, media_type=record.media_type)


async def put_manifest(call: Call) -> Response:
    reference = parse_reference(call.params["reference"])
    limit = call.runtime.settings.registry.max_manifest_bytes
    declared = content_length(call.request)
    if declared is not None and declared > limit:
        raise ManifestTooLarge(f"manifest larger than {limit} bytes")
    body = bytearray()
    async for data in call.request.stream():
        body += data
        if len(body) > limit:
            raise ManifestTooLarge(f"manifest larger than {limit} bytes")
    record = await call.runtime.manifests.put(
        call.repo,
        reference,
        bytes(body),
        call.request.headers.get("content-type"),
        principal=call.principal,
        origin=origin_of(call.request),
    )
    headers = {
        "Location": f"/v2/{call.repo}/manifests/{record.digest}",
        "Docker-Content-Digest": record.digest,
        "Content-Length": "0",
    }
    if record.subject:
        headers["OCI-Subject"] = record.subject
    return Response(status_code=201, headers=headers)


async def delete_manifest(call: Call) -> Response:
    reference = parse_reference(call.params["reference"])
    await call.runtime.manifests.delete(
        call.repo, reference, principal=call.principal, origin=origin_of(call.request)
    )
    return Response(status_code=202, headers={"Content-Length": "0"})
