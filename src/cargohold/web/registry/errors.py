"""Domain errors to OCI error JSON: the one table of statuses and codes."""

from __future__ import annotations

import json

from starlette.responses import Response

from cargohold.domain import errors as e

# Most specific classes first: the first isinstance match wins.
ERROR_TABLE: tuple[tuple[type[e.RegistryError], int, str], ...] = (
    (e.RangeInvalid, 416, "BLOB_UPLOAD_INVALID"),
    (e.RangeNotSatisfiable, 416, "RANGE_INVALID"),
    (e.BlobUploadInvalid, 400, "BLOB_UPLOAD_INVALID"),
    (e.BlobUnknown, 404, "BLOB_UNKNOWN"),
    (e.BlobUploadUnknown, 404, "BLOB_UPLOAD_UNKNOWN"),
    (e.DigestInvalid, 400, "DIGEST_INVALID"),
    (e.ManifestBlobUnknown, 400, "MANIFEST_BLOB_UNKNOWN"),
    (e.ManifestInvalid, 400, "MANIFEST_INVALID"),
    (e.ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
    (e.ManifestTooLarge, 413, "SIZE_INVALID"),
    (e.NameInvalid, 400, "NAME_INVALID"),
    (e.NameUnknown, 404, "NAME_UNKNOWN"),
    (e.SizeInvalid, 400, "SIZE_INVALID"),
    (e.TagInvalid, 400, "TAG_INVALID"),
    (e.PaginationInvalid, 400, "PAGINATION_NUMBER_INVALID"),
    (e.Unauthorized, 401, "UNAUTHORIZED"),
    (e.Denied, 403, "DENIED"),
    (e.Referenced, 409, "DENIED"),
    (e.Unsupported, 400, "UNSUPPORTED"),
    (e.TooManyRequests, 429, "TOOMANYREQUESTS"),
)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(
    status: int,
    code: str,
    message: str,
    detail: object = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = json.dumps(
        {"errors": [{"code": code, "message": message, "detail": detail}]}, separators=(",", ":")
    )
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**API_VERSION_HEADER, **(headers or {})},
    )


def to_response(exc: e.RegistryError) -> Response:
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            if isinstance(exc, e.RangeInvalid):
                headers["Range"] = f"0-{max(exc.size - 1, 0)}"
            elif isinstance(exc, e.RangeNotSatisfiable):
                headers["Content-Range"] = f"bytes */{exc.size}"
            return error_response(status, code, exc.message, exc.detail, headers)
    return error_response(500, "UNKNOWN", "unknown error")
