"""The registry protocol tests for blobs and uploads, against a registry whose storage is S3
(SeaweedFS): pushes monolithic, streamed and chunked, mounts, ranged pulls, deletes.

They are the same test functions as tests/api runs on the embedded default; this folder's
conftest.py points their `any_registry` (and so `client`) at an S3-backed server."""

from __future__ import annotations

from tests.api.test_blobs import *  # noqa: F403
from tests.api.test_manifests import *  # noqa: F403
from tests.api.test_uploads import *  # noqa: F403
