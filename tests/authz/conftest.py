"""The cast of the authorization matrix, built once per test session."""

from __future__ import annotations

import pytest

from tests.authz.world import World, build_world
from tests.support.server import RegistryProcess


@pytest.fixture(scope="session")
def world(registry: RegistryProcess) -> World:
    return build_world(registry)
