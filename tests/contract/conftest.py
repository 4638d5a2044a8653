"""A real S3 server (SeaweedFS, which checks signatures) for the storage contract, started
once per session and only when a test asks for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cargohold.storage.s3 import S3Driver
from tests.support.s3 import SeaweedS3
from tests.support.server import RegistryProcess

BUCKET = "cargohold-contract"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


def make_s3_driver(server: SeaweedS3, **kwargs: object) -> S3Driver:
    """A driver on its own prefix of the shared bucket: tests never see each other's keys."""
    options: dict[str, object] = {"bucket": BUCKET, "prefix": f"t-{uuid.uuid4().hex[:12]}"}
    options.update(server.driver_kwargs())
    options.update(kwargs)
    return S3Driver(**options)  # type: ignore[arg-type]


@pytest.fixture
def s3_driver(seaweed: SeaweedS3) -> Iterator[S3Driver]:
    driver = make_s3_driver(seaweed)
    yield driver
    driver.close()


@pytest.fixture(scope="session")
def any_registry(
    seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """Here, the protocol tests run against a registry that keeps its blobs in S3."""
    env = seaweed.settings_env(BUCKET, prefix=f"registry-{uuid.uuid4().hex[:8]}")
    server = RegistryProcess(tmp_path_factory.mktemp("registry-s3"), env=env).start()
    yield server
    server.stop()
