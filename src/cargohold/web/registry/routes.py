"""The /v2 route table: every endpoint of the OCI Distribution Specification 1.1."""

from __future__ import annotations

from starlette.responses import Response

from cargohold.auth.access import Action
from cargohold.web.registry import auth, blobs, listings, manifests, uploads
from cargohold.web.registry.router import Call, Router, route

NAME = r"(?P<name>[^?#]+?)"
DIGEST = r"(?P<digest>[^/]+)"
UPLOAD = r"(?P<upload>[^/]+)"
REFERENCE = r"(?P<reference>[^/]+)"


async def _token(call: Call) -> Response:
    return await auth.token(call.request, call.runtime)


M, B, U = "/manifests/", "/blobs/", "/blobs/uploads"
ROUTES = [
    route("GET,HEAD", r"/v2/?", Action.LOGIN, listings.api_version),
    route("GET,POST", r"/v2/auth", None, _token, "/auth"),
    route("GET", r"/v2/_catalog", Action.CATALOG, listings.catalog, "_catalog"),
    route("GET", rf"/v2/{NAME}/tags/list", Action.PULL, listings.list_tags, "/tags/list"),
    route("GET,HEAD", rf"/v2/{NAME}{M}{REFERENCE}", Action.PULL, manifests.get_manifest, M),
    route("PUT", rf"/v2/{NAME}{M}{REFERENCE}", Action.PUSH, manifests.put_manifest, M),
    route("DELETE", rf"/v2/{NAME}{M}{REFERENCE}", Action.DELETE, manifests.delete_manifest, M),
    route("POST", rf"/v2/{NAME}{U}/?", Action.PUSH, uploads.start_upload, U),
    route("GET", rf"/v2/{NAME}{U}/{UPLOAD}", Action.PUSH, uploads.upload_status, U),
    route("PATCH", rf"/v2/{NAME}{U}/{UPLOAD}", Action.PUSH, uploads.patch_upload, U),
    route("PUT", rf"/v2/{NAME}{U}/{UPLOAD}", Action.PUSH, uploads.finish_upload, U),
    route("DELETE", rf"/v2/{NAME}{U}/{UPLOAD}", Action.PUSH, uploads.cancel_upload, U),
    route("GET,HEAD", rf"/v2/{NAME}{B}{DIGEST}", Action.PULL, blobs.get_blob, B),
    route("DELETE", rf"/v2/{NAME}{B}{DIGEST}", Action.DELETE, blobs.delete_blob, B),
    route("GET", rf"/v2/{NAME}/referrers/{DIGEST}", Action.PULL, listings.referrers, "/referrers/"),
]

router = Router(ROUTES)
