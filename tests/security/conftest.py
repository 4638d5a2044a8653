"""Fixtures of the security suite: an HTTP client on the shared SQLite server, and a guard
that checks the server's data directory (and a canary beside it) after a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.helpers import storage_problems
from tests.support.server import RegistryProcess


@pytest.fixture(scope="session")
def http(registry: RegistryProcess) -> Iterator[httpx.Client]:
    """A client of the shared SQLite server (module and session scope, so Hypothesis can
    reuse it across examples)."""
    with registry.client() as c:
        yield c


@pytest.fixture(scope="session")
def canary(registry: RegistryProcess) -> Path:
    """An empty directory next to the server's data directory: nothing may ever appear in
    it (an escape from storage/ through `..` would land here first)."""
    path = registry.data_dir.parent / "security-canary"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def storage_guard(registry: RegistryProcess, canary: Path) -> Iterator[None]:
    """After the test: every file in the data directory is one cargohold may write, every
    blob file holds exactly its digest's bytes, and the canary is still empty."""
    yield
    assert storage_problems(registry.data_dir) == []
    assert list(canary.iterdir()) == []
