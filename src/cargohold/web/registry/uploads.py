"""Blob uploads: POST (start, monolithic, mount), PATCH, PUT, GET status, DELETE.

An upload session belongs to the principal who started it: every later request on it
passes that principal as the owner, and another principal's upload id answers 404
BLOB_UPLOAD_UNKNOWN, like an id that does not exist (SECURITY.md 1.2)."""

from __future__ import annotations

from starlette.responses import Response

from cargohold.auth.access import Action
from cargohold.auth.principal import Principal
from cargohold.domain.digests import parse_digest
from cargohold.domain.errors import DigestInvalid, NameInvalid
from cargohold.domain.names import RepositoryName, parse_repository
from cargohold.services.blobs import BlobInfo
from cargohold.services.uploads import ANONYMOUS_OWNER, UploadState
from cargohold.web.context import origin_of
from cargohold.web.registry.params import chunk_range, content_length
from cargohold.web.registry.router import Call


def upload_owner(principal: Principal) -> str:
    """Who an upload belongs to: the same user or robot whether it authenticates with
    Basic credentials or a registry token (superusers are no exception)."""
    if principal.is_anonymous or principal.id is None:
        return ANONYMOUS_OWNER
    return f"{principal.kind.value}:{principal.id}"


def _upload_headers(state: UploadState) -> dict[str, str]:
    return {
        "Location": f"/v2/{state.repository}/blobs/uploads/{state.id}",
        "Docker-Upload-UUID": state.id,
        "Range": f"0-{max(state.size - 1, 0)}",
        "Content-Length": "0",
    }


def _created(call: Call, blob: BlobInfo) -> Response:
    return Response(
        status_code=201,
        headers={
            "Location": f"/v2/{call.repo}/blobs/{blob.digest}",
            "Docker-Content-Digest": str(blob.digest),
            "Content-Length": "0",
        },
    )


async def start_upload(call: Call) -> Response:
    query = call.request.query_params
    runtime = call.runtime
    origin = origin_of(call.request)
    mount = query.get("mount")
    if mount is not None:
        digest = parse_digest(mount)
        source_name = query.get("from")
        source: RepositoryName | None = None
        usable = True
        try:
            source = parse_repository(source_name) if source_name else None
        except NameInvalid:
            usable = False  # an unusable `from` just means no mount: upload instead

        async def readable(name: str) -> bool:
            # Mounting needs read access on the source, as pulling it would.
            return await call.runtime.access.may(call.principal, Action.PULL, name)

        blob = None
        if usable:
            blob = await runtime.blobs.mount(
                call.repo, digest, source, readable, principal=call.principal, origin=origin
            )
        if blob is not None:
            return _created(call, blob)
    owner = upload_owner(call.principal)
    digest_text = query.get("digest")
    if digest_text is not None:
        digest = parse_digest(digest_text)
        state = await runtime.uploads.start(
            call.repo, owner=owner, principal=call.principal, origin=origin
        )
        blob = await runtime.uploads.finish(
            call.repo,
            state.id,
            digest,
            call.request.stream(),
            content_length=content_length(call.request),
            owner=owner,
            principal=call.principal,
            origin=origin,
        )
        return _created(call, blob)
    state = await runtime.uploads.start(
        call.repo, owner=owner, principal=call.principal, origin=origin
    )
    return Response(status_code=202, headers=_upload_headers(state))


async def upload_status(call: Call) -> Response:
    state = await call.runtime.uploads.status(
        call.repo, call.params["upload"], owner=upload_owner(call.principal)
    )
    return Response(status_code=204, headers=_upload_headers(state))


async def patch_upload(call: Call) -> Response:
    state = await call.runtime.uploads.append(
        call.repo,
        call.params["upload"],
        call.request.stream(),
        chunk=chunk_range(call.request),
        content_length=content_length(call.request),
        owner=upload_owner(call.principal),
        principal=call.principal,
        origin=origin_of(call.request),
    )
    return Response(status_code=202, headers=_upload_headers(state))


async def finish_upload(call: Call) -> Response:
    digest_text = call.request.query_params.get("digest")
    if not digest_text:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    blob = await call.runtime.uploads.finish(
        call.repo,
        call.params["upload"],
        parse_digest(digest_text),
        call.request.stream(),
        chunk=chunk_range(call.request),
        content_length=content_length(call.request),
        owner=upload_owner(call.principal),
        principal=call.principal,
        origin=origin_of(call.request),
    )
    return _created(call, blob)


async def cancel_upload(call: Call) -> Response:
    await call.runtime.uploads.cancel(
        call.repo, call.params["upload"], owner=upload_owner(call.principal)
    )
    return Response(status_code=204, headers={"Content-Length": "0"})
