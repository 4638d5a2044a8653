"""The /v2 route table: every endpoint of the OCI Distribution Specification 1.1."""

from __future__ import annotations

from cargohold.auth.access import Action
from cargohold.web.registry import blobs, listings, manifests, uploads
from cargohold.web.registry.router import Router, route

NAME = r"(?P<name>[^?#]+?)"
DIGEST = r"(?P<digest>[^/]+)"
UPLOAD = r"(?P<upload>[^/]+)"
REFERENCE = r"(?P<reference>[^/]+)"

ROUTES = [
    route("GET,HEAD", r"/v2/?", None, listings.api_version),
    route("GET", r"/v2/_catalog", Action.CATALOG, listings.catalog),
    route("GET", rf"/v2/{NAME}/tags/list", Action.PULL, listings.list_tags),
    route("GET,HEAD", rf"/v2/{NAME}/manifests/{REFERENCE}", Action.PULL, manifests.get_manifest),
    route("PUT", rf"/v2/{NAME}/manifests/{REFERENCE}", Action.PUSH, manifests.put_manifest),
    route("DELETE", rf"/v2/{NAME}/manifests/{REFERENCE}", Action.DELETE, manifests.delete_manifest),
    route("POST", rf"/v2/{NAME}/blobs/uploads/?", Action.PUSH, uploads.start_upload),
    route("GET", rf"/v2/{NAME}/blobs/uploads/{UPLOAD}", Action.PUSH, uploads.upload_status),
    route("PATCH", rf"/v2/{NAME}/blobs/uploads/{UPLOAD}", Action.PUSH, uploads.patch_upload),
    route("PUT", rf"/v2/{NAME}/blobs/uploads/{UPLOAD}", Action.PUSH, uploads.finish_upload),
    route("DELETE", rf"/v2/{NAME}/blobs/uploads/{UPLOAD}", Action.PUSH, uploads.cancel_upload),
    route("GET,HEAD", rf"/v2/{NAME}/blobs/{DIGEST}", Action.PULL, blobs.get_blob),
    route("DELETE", rf"/v2/{NAME}/blobs/{DIGEST}", Action.DELETE, blobs.delete_blob),
    route("GET", rf"/v2/{NAME}/referrers/{DIGEST}", Action.PULL, listings.referrers),
]

router = Router(ROUTES)
