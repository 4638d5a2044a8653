"""Blob GET, HEAD and DELETE."""

from __future__ import annotations

from starlette.responses import Response

from cargohold.domain.digests import parse_digest
from cargohold.web.registry.responses import BlobResponse, parse_range
from cargohold.web.registry.router import Call


async def get_blob(call: Call) -> Response:
    digest = parse_digest(call.params["digest"])
    blob = await call.runtime.blobs.stat(call.repo, digest)
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    byte_range = parse_range(call.request.headers.get("range"), blob.size)
    send_body = call.request.method == "GET"
    storage = call.runtime.storage
    if send_body:
        # A location that holds the blob (the only one, unless several are configured).
        storage = await call.runtime.sources.source(digest)
        url = await storage.redirect_url(blob.key)  # a presigned URL, if the storage says so
        if url is not None:
            # Not cacheable: the URL expires long before the blob's own max-age.
            redirect = {"Location": url, "Docker-Content-Digest": str(digest)}
            return Response(status_code=307, headers=redirect)
    path = storage.local_path(blob.key) if send_body else None
    stream = None
    if path is None and send_body:
        start = byte_range[0] if byte_range else 0
        length = (byte_range[1] - start + 1) if byte_range else None
        stream = storage.read(blob.key, start, length)
    return BlobResponse(
        size=blob.size,
        headers=headers,
        path=path,
        stream=stream,
        byte_range=byte_range,
        send_body=send_body,
    )


async def delete_blob(call: Call) -> Response:
    digest = parse_digest(call.params["digest"])
    await call.runtime.blobs.delete(call.repo, digest)
    return Response(status_code=202, headers={"Content-Length": "0"})
