"""Tag lists: order, `n`/`last` pagination with Link headers, and errors."""

from __future__ import annotations

import random
import urllib.parse

import httpx
import pytest

from tests.api.helpers import assert_error, follow_pages, http_client, next_link, start_upload
from tests.support.oci import make_image, push_image, unique_repo
from tests.support.server import RegistryProcess

# ASCIIbetical order puts upper case before lower case and digits before both.
TAGS = [
    "1.0",
    "1.10",
    "1.2",
    "Beta",
    "_private",
    "alpha",
    "latest",
    "v1",
    "v1.0-rc.1",
    "v2",
    "zeta",
]


@pytest.fixture(scope="module")
def tagged(any_registry: RegistryProcess) -> str:
    """A repository with one image under every tag in TAGS, pushed in random order.

    Shared by this module's tests (per server), which only read it."""
    repo = unique_repo()
    image = make_image()
    order = TAGS.copy()
    random.shuffle(order)
    with http_client(any_registry) as client:
        push_image(client, repo, image, order[0])
        for tag in order[1:]:
            r = client.put(
                f"/v2/{repo}/manifests/{tag}",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            assert r.status_code == 201
    return repo


def test_full_list_is_sorted(client: httpx.Client, tagged: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"name": tagged, "tags": sorted(TAGS)}
    assert "Link" not in r.headers


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 11])
def test_pagination_follows_links_to_the_end(client: httpx.Client, tagged: str, n: int) -> None:
    first = client.get(f"/v2/{tagged}/tags/list", params={"n": n})
    link = next_link(first)
    if n < len(TAGS):
        assert link is not None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
        assert urllib.parse.urlsplit(link).path == f"/v2/{tagged}/tags/list"
        assert query == {"n": [str(n)], "last": [first.json()["tags"][-1]]}
    else:
        assert link is None
    pages = follow_pages(client, f"/v2/{tagged}/tags/list?n={n}", "tags")
    assert all(len(page) == n for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= n
    assert [tag for page in pages for tag in page] == sorted(TAGS)
    assert len(pages) == -(-len(TAGS) // n)


def test_last_page_has_no_link(client: httpx.Client, tagged: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"n": 4, "last": sorted(TAGS)[-5]})
    assert r.json()["tags"] == sorted(TAGS)[-4:]
    assert "Link" not in r.headers


def test_last_without_n(client: httpx.Client, tagged: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"last": "alpha"})
    assert r.status_code == 200
    assert r.json()["tags"] == [t for t in sorted(TAGS) if t > "alpha"]
    assert "Link" not in r.headers


def test_last_need_not_be_an_existing_tag(client: httpx.Client, tagged: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"n": 2, "last": "b"})
    assert r.json()["tags"] == [t for t in sorted(TAGS) if t > "b"][:2]


def test_last_after_every_tag(client: httpx.Client, tagged: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"n": 5, "last": "zzz"})
    assert r.status_code == 200
    assert r.json() == {"name": tagged, "tags": []}
    assert "Link" not in r.headers


@pytest.mark.parametrize("n", ["1000000", "18446744073709551616", str(10**40)])
def test_huge_n_is_clamped(client: httpx.Client, tagged: str, n: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"n": n})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == sorted(TAGS)
    assert "Link" not in r.headers


def test_n_zero_is_an_empty_list(client: httpx.Client, tagged: str) -> None:
    for params in ({"n": "0"}, {"n": "0", "last": "alpha"}):
        r = client.get(f"/v2/{tagged}/tags/list", params=params)
        assert r.status_code == 200
        assert r.json() == {"name": tagged, "tags": []}
        assert "Link" not in r.headers


# "\u00b2" (superscript two) and "\u0661" (Arabic-Indic one) pass str.isdigit().
@pytest.mark.parametrize("n", ["abc", "-1", "1.5", "0x10", " 5", "\u00b2", "\u0661"])
def test_invalid_n(client: httpx.Client, tagged: str, n: str) -> None:
    r = client.get(f"/v2/{tagged}/tags/list", params={"n": n})
    assert_error(r, 400, "PAGINATION_NUMBER_INVALID")


def test_unknown_repository(client: httpx.Client) -> None:
    repo = unique_repo()
    error = assert_error(client.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN")
    assert error["detail"] == {"name": repo}


def test_repository_without_tags(client: httpx.Client) -> None:
    repo = unique_repo()
    start_upload(client, repo)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": []}


def test_deleted_and_moved_tags(client: httpx.Client) -> None:
    repo = unique_repo()
    first, second = make_image(), make_image()
    push_image(client, repo, first, "a")
    push_image(client, repo, first, "b")
    push_image(client, repo, second, "b")  # moved, listed once
    push_image(client, repo, second, "c")
    assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["b", "c"]
    pages = follow_pages(client, f"/v2/{repo}/tags/list?n=1", "tags")
    assert pages == [["b"], ["c"]]


def test_tags_of_other_repositories_are_not_listed(client: httpx.Client) -> None:
    image = make_image()
    mine, other = unique_repo(), f"{unique_repo()}/nested"
    push_image(client, mine, image, "mine")
    push_image(client, other, image, "theirs")
    assert client.get(f"/v2/{mine}/tags/list").json()["tags"] == ["mine"]
    assert client.get(f"/v2/{other}/tags/list").json() == {"name": other, "tags": ["theirs"]}
