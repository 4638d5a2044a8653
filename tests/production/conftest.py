"""Here, the protocol tests run in production mode: their `any_registry` (and so `client`)
is the balancer in front of three replicas on PostgreSQL, S3 (SeaweedFS) and Redis
(tests/support/production.py), so consecutive requests of one test, the PATCHes of one
upload included, land on different replicas."""

from __future__ import annotations

import pytest

from tests.support.production import ProductionDeployment


@pytest.fixture(scope="session")
def any_registry(production: ProductionDeployment) -> ProductionDeployment:
    return production
