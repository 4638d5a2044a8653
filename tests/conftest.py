"""Shared fixtures: real cargohold servers over HTTP, on SQLite and on PostgreSQL, and the
production deployment (replicas behind a load balancer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.postgres import temporary_database
from tests.support.server import RegistryProcess

if TYPE_CHECKING:
    from tests.support.production import ProductionDeployment


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """The embedded default: SQLite and a local folder."""
    server = RegistryProcess(tmp_path_factory.mktemp("registry-sqlite")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with temporary_database() as url:
        server = RegistryProcess(tmp_path_factory.mktemp("registry-pg"), database_url=url).start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionDeployment]:
    """Production mode: three replicas on PostgreSQL, S3 and Redis behind nginx
    (tests/support/production.py); its `url`, `host` and `client()` are the balancer's.
    Imported here: boto3 and redis stay out of every other session's start-up."""
    from tests.support.production import ProductionDeployment

    with ProductionDeployment(tmp_path_factory.mktemp("production")) as deployment:
        yield deployment


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def any_registry(request: pytest.FixtureRequest) -> RegistryProcess:
    """Runs a test once against each database backend."""
    name = "registry" if request.param == "sqlite" else "registry_postgres"
    server: RegistryProcess = request.getfixturevalue(name)
    return server


@pytest.fixture
def client(any_registry: RegistryProcess) -> Iterator[httpx.Client]:
    # verify=False: plain HTTP on loopback; building a TLS context costs ~100 ms per client.
    with any_registry.client() as c:
        yield c


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
