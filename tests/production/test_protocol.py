"""The registry protocol tests of tests/api (base, uploads, blobs, manifests, tags, catalog,
referrers) against the production deployment behind the load balancer.

They are the same test functions as tests/api runs on the embedded default (SQLite and a
folder) and on PostgreSQL; this folder's conftest.py points their `any_registry` at the
balancer. test_errors.py is left out: its error bodies come from the same code whatever the
deployment, and its coverage check reads the sources."""

from __future__ import annotations

from tests.api.test_base import *  # noqa: F403
from tests.api.test_blobs import *  # noqa: F403
from tests.api.test_catalog import *  # noqa: F403
from tests.api.test_manifests import *  # noqa: F403
from tests.api.test_referrers import *  # noqa: F403
from tests.api.test_tags import *  # noqa: F403
from tests.api.test_uploads import *  # noqa: F403
