"""The protocol suite's `client`: the shared fixture's, minus TLS set-up.

The servers speak plain HTTP on loopback, and building httpx's default TLS context
(loading the CA bundle) costs about 100 ms per client: more than most tests here."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import http_client
from tests.support.server import RegistryProcess


@pytest.fixture
def client(any_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with http_client(any_registry) as c:
        yield c
