"""Every storage key cargohold writes, built in one place.

    blobs/<algorithm>/<first two hex>/<hex>   content-addressed blob bytes, stored once
    uploads/<upload id>                        bytes of an upload in progress
    health/sentinel                            a few bytes /health/endtoend reads back

Blob keys come from parsed digests and upload keys from UUIDs the server made, so no
client-supplied text reaches a path unchecked."""

from __future__ import annotations

import uuid

from cargohold.domain.digests import Digest
from cargohold.storage.driver import check_key

BLOBS = "blobs"
UPLOADS = "uploads"
HEALTH_SENTINEL = check_key("health/sentinel")


def blob_key(digest: Digest) -> str:
    return check_key(f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}")


def upload_key(upload_id: str) -> str:
    return check_key(f"{UPLOADS}/{uuid.UUID(upload_id)}")
