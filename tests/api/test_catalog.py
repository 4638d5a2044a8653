"""The catalog: every repository, sorted, with `n`/`last` pagination.

The servers are shared by the whole session, so the catalog also lists other tests'
repositories: these tests check properties of the whole list and the place of their
own repositories in it."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.api.helpers import assert_error, follow_pages, http_client, next_link
from tests.support.oci import push_blob, unique_repo
from tests.support.server import RegistryProcess


@pytest.fixture(scope="module")
def own_repos(any_registry: RegistryProcess) -> list[str]:
    """Five repositories under one fresh namespace, in ASCIIbetical order.

    The namespace sorts after every other test's, so the catalog's tail past it is short."""
    namespace = f"zzcat{uuid.uuid4().hex[:10]}"
    names = [f"{namespace}/{leaf}" for leaf in ("a", "a-b", "a.b", "a/b", "b")]
    with http_client(any_registry) as client:
        for name in names:
            push_blob(client, name, name.encode())
    return sorted(names)


def full_catalog(client: httpx.Client) -> list[str]:
    pages = follow_pages(client, "/v2/_catalog", "repositories")
    return [name for page in pages for name in page]


def test_catalog_lists_repositories_sorted(client: httpx.Client, own_repos: list[str]) -> None:
    r = client.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.json()) == {"repositories"}
    everything = full_catalog(client)
    assert everything == sorted(everything)
    assert len(everything) == len(set(everything))
    positions = [everything.index(name) for name in own_repos]
    assert positions == list(range(positions[0], positions[0] + len(own_repos)))


@pytest.mark.parametrize("n", [1, 3, 50])
def test_catalog_pagination_follows_links(
    client: httpx.Client, own_repos: list[str], n: int
) -> None:
    everything = full_catalog(client)
    # Small pages start just before this test's namespace, to keep the walk short.
    start = own_repos[0].split("/")[0] if n < 50 else ""
    expected = [name for name in everything if name > start]
    pages = follow_pages(client, f"/v2/_catalog?n={n}&last={start}", "repositories")
    assert all(len(page) == n for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= n
    assert [name for page in pages for name in page] == expected
    assert set(own_repos) <= set(expected)


def test_catalog_link_header(client: httpx.Client, own_repos: list[str]) -> None:
    r = client.get("/v2/_catalog", params={"n": 2, "last": own_repos[0]})
    assert r.json()["repositories"] == own_repos[1:3]
    assert r.headers["Link"] == (
        f'</v2/_catalog?n=2&last={own_repos[2].replace("/", "%2F")}>; rel="next"'
    )
    link = next_link(r)
    assert link is not None
    assert client.get(link).json()["repositories"] == own_repos[3:5]


def test_catalog_last(client: httpx.Client, own_repos: list[str]) -> None:
    r = client.get("/v2/_catalog", params={"last": own_repos[2], "n": 2})
    assert r.json()["repositories"] == own_repos[3:5]


def test_catalog_last_page_has_no_link(client: httpx.Client, own_repos: list[str]) -> None:
    last = full_catalog(client)[-1]
    r = client.get("/v2/_catalog", params={"n": 5, "last": last})
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "Link" not in r.headers


def test_catalog_n_zero(client: httpx.Client, own_repos: list[str]) -> None:
    r = client.get("/v2/_catalog", params={"n": 0})
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "Link" not in r.headers


def test_catalog_huge_n_is_clamped(client: httpx.Client, own_repos: list[str]) -> None:
    r = client.get("/v2/_catalog", params={"n": 10**30})
    assert r.status_code == 200
    page = r.json()["repositories"]
    everything = full_catalog(client)
    assert page == everything[: len(page)]
    if next_link(r) is None:
        assert page == everything


@pytest.mark.parametrize("n", ["abc", "-3", "2.0"])
def test_catalog_invalid_n(client: httpx.Client, n: str) -> None:
    assert_error(client.get("/v2/_catalog", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_new_repository_appears(client: httpx.Client) -> None:
    repo = unique_repo()
    assert repo not in full_catalog(client)
    push_blob(client, repo, b"hello")
    assert repo in full_catalog(client)
