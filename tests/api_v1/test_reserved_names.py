"""The words of the API's repository paths (`/api/v1/repository/{repository:path}/<word>`)
are reserved as repository name components after the namespace (domain/names.py): a push
or an API create of such a name is refused, a read of one finds no repository, and no API
route may use a word the list lacks. Otherwise `DELETE /repository/org/a/tag/v1` could
mean tag v1 of org/a or the repository org/a/tag/v1."""

from __future__ import annotations

import re
import uuid

from cargohold.domain.names import RESERVED_COMPONENTS
from tests.api_v1.access_helpers import admin_api, api_error, new_org, ok
from tests.api_v1.tag_helpers import live_tags, push
from tests.authz.test_api_policies import api_routes
from tests.support.oci import error_codes, make_image, push_image, unique_repo
from tests.support.server import RegistryProcess

_WORD = re.compile(r"/repository/\{repository:path\}/([^/{]+)")


def test_every_word_after_a_repository_path_is_reserved() -> None:
    words = set()
    for route in api_routes():
        found = _WORD.match(route.path)
        if found:
            words.add(found.group(1))
    assert {"tag", "manifest", "immutability", "permissions", "logs"} <= words
    assert words <= RESERVED_COMPONENTS, f"reserve {sorted(words - RESERVED_COMPONENTS)}"


def test_the_api_refuses_to_create_a_reserved_name(registry: RegistryProcess) -> None:
    org = new_org(registry, "rsv")
    with admin_api(registry) as c:
        for word in sorted(RESERVED_COMPONENTS):
            for name in (word, f"app/{word}", f"app/{word}/v1"):
                body = api_error(
                    c.post("/repository", json={"namespace": org, "repository": name}), 400
                )
                assert f"{word!r} is reserved" in body["error_message"]
            # A name that merely contains the word is a name like any other.
            ok(c.post("/repository", json={"namespace": org, "repository": f"{word}s"}), 201)
            ok(c.post("/repository", json={"namespace": org, "repository": f"my-{word}"}), 201)
        listed = ok(c.get("/repository", params={"namespace": org}))["repositories"]
    assert len(listed) == 2 * len(RESERVED_COMPONENTS)


def test_a_tag_path_names_the_tag_only(registry: RegistryProcess) -> None:
    """The reviewer's case: `org/a/tag/v1` cannot be created, so the path is tag v1."""
    org = new_org(registry, "rsv")
    repo = f"{org}/a"
    push(registry, repo, make_image(), "v1")
    with admin_api(registry) as c:
        api_error(c.post("/repository", json={"namespace": org, "repository": "a/tag/v1"}), 400)
        assert c.delete(f"/repository/{repo}/tag/v1").status_code == 204
        ok(c.get(f"/repository/{repo}"))  # the repository itself stays
    assert live_tags(registry, repo) == {}


def test_the_registry_refuses_pushes_to_reserved_names(registry: RegistryProcess) -> None:
    image = make_image()
    with registry.client() as c:
        for word in sorted(RESERVED_COMPONENTS):
            for repo in (f"rsv{uuid.uuid4().hex[:8]}/{word}", f"{unique_repo('rsv')}/{word}"):
                for r in (
                    c.post(f"/v2/{repo}/blobs/uploads/"),
                    c.put(
                        f"/v2/{repo}/manifests/v1",
                        content=image.manifest,
                        headers={"Content-Type": image.media_type},
                    ),
                ):
                    assert r.status_code == 400, r.text
                    assert error_codes(r) == ["NAME_INVALID"]
                    assert f"{word!r} is reserved" in r.json()["errors"][0]["message"]
                # Reads of such a name find no repository, like any other missing one.
                for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/tags/list"):
                    r = c.get(path)
                    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"], r.text
        # The namespace itself may be called so; so may a name containing the word.
        for repo in (f"tag/r{uuid.uuid4().hex[:8]}", f"{unique_repo('rsv')}/tags"):
            assert push_image(c, repo, image, "v1").status_code == 201
