"""The time machine over HTTP, on SQLite and PostgreSQL: a tag moved five times is
restored to each manifest it pointed at; a deleted tag is restored; the window of the
organization bounds what can be restored (0: nothing); an admin removes a tag's history
for good."""

from __future__ import annotations

from tests.api_v1.access_helpers import admin_api, api, api_error, grant, new_org, ok, person
from tests.api_v1.tag_helpers import live_tags, manifest_status, push, registry_tags, tag_page
from tests.support.audit import assert_logged, last_id
from tests.support.oci import OCI_MANIFEST, make_image, push_image, sha256
from tests.support.server import RegistryProcess


def _pulled(server: RegistryProcess, repo: str, tag: str) -> str:
    with server.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert sha256(r.content) == r.headers["Docker-Content-Digest"]
    return r.headers["Docker-Content-Digest"]


def _restore(server: RegistryProcess, repo: str, tag: str, digest: str) -> dict[str, object]:
    with admin_api(server) as c:
        return dict(
            ok(c.post(f"/repository/{repo}/tag/{tag}/restore", json={"manifest_digest": digest}))
        )


def test_a_tag_moved_five_times_is_restored_to_each_manifest(
    any_registry: RegistryProcess,
) -> None:
    server = any_registry
    repo = f"{new_org(server, 'tm')}/app"
    images = [make_image() for _ in range(6)]
    with server.client() as c:
        for image in images:  # created, then moved five times
            push_image(c, repo, image, "latest")
    assert _pulled(server, repo, "latest") == images[-1].digest
    history = tag_page(server, repo, specificTag="latest")["tags"]
    assert [t["manifest_digest"] for t in history] == [i.digest for i in reversed(images)]

    mark = last_id(server)
    for image in [*images[:-1], images[-1], images[0]]:
        restored = _restore(server, repo, "latest", image.digest)
        assert restored["manifest_digest"] == image.digest
        assert _pulled(server, repo, "latest") == image.digest
        assert registry_tags(server, repo) == ["latest"]
    assert_logged(
        server,
        "restore_tag",
        actor="admin",
        repository=repo,
        details={"tag": "latest", "digest": images[0].digest, "old": images[-1].digest},
        after=mark,
    )
    # Each restore started a row; one tag is live throughout.
    assert len(tag_page(server, repo, specificTag="latest", limit=100)["tags"]) == 6 + 7
    assert live_tags(server, repo) == {"latest": images[0].digest}


def test_a_deleted_tag_is_restored(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'tm')}/app"
    image = make_image()
    push(server, repo, image, "v1")
    push(server, repo, image, "other")
    with server.client() as c:
        assert c.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert manifest_status(server, repo, "v1") == 404
    assert registry_tags(server, repo) == ["other"]
    mark = last_id(server)
    _restore(server, repo, "v1", image.digest)
    assert _pulled(server, repo, "v1") == image.digest
    assert registry_tags(server, repo) == ["other", "v1"]
    assert_logged(
        server,
        "restore_tag",
        repository=repo,
        details={"tag": "v1", "digest": image.digest, "old": None},
        after=mark,
    )
    # Restoring what is already live changes nothing.
    _restore(server, repo, "v1", image.digest)
    assert len(tag_page(server, repo, specificTag="v1")["tags"]) == 2


def test_restore_only_what_the_tag_pointed_at_within_the_window(
    any_registry: RegistryProcess,
) -> None:
    server = any_registry
    org = new_org(server, "tm")
    repo = f"{org}/app"
    old, new, stranger = make_image(), make_image(), make_image()
    push(server, repo, old, "v1")
    push(server, repo, new, "v1")
    push(server, repo, stranger, "elsewhere")
    path = f"/repository/{repo}/tag/v1/restore"
    with admin_api(server) as c:
        api_error(c.post(path, json={"manifest_digest": stranger.digest}), 404)  # never there
        api_error(c.post(path, json={"manifest_digest": sha256(b"no such")}), 404)
        api_error(c.post(path, json={"manifest_digest": "sha256:nope"}), 400)
        api_error(c.post(path, json={}), 400)
        api_error(
            c.post(f"/repository/{repo}/tag/never/restore", json={"manifest_digest": old.digest}),
            404,
        )
        # Window 0: nothing is kept, so nothing can be restored.
        ok(c.put(f"/organization/{org}", json={"tag_expiration_s": 0}))
        error = api_error(c.post(path, json={"manifest_digest": old.digest}), 404)
        assert "window" in error["error_message"]
        assert tag_page(server, repo)["time_machine_seconds"] == 0
        ok(c.put(f"/organization/{org}", json={"tag_expiration_s": 3600}))
        ok(c.post(path, json={"manifest_digest": old.digest}))
    assert _pulled(server, repo, "v1") == old.digest


def test_removing_a_tag_from_the_time_machine(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'tm')}/app"
    first, second, third = make_image(), make_image(), make_image()
    for image in (first, second, third):
        push(server, repo, image, "v1")
    mark = last_id(server)
    expire = f"/repository/{repo}/tag/v1/expire"
    with admin_api(server) as c:
        assert ok(c.post(expire, json={"manifest_digest": first.digest})) == {"removed": 1}
        restore = f"/repository/{repo}/tag/v1/restore"
        api_error(c.post(restore, json={"manifest_digest": first.digest}), 404)
        api_error(c.post(expire, json={"manifest_digest": first.digest}), 404)  # gone already
        api_error(c.post(expire, json={"manifest_digest": "sha256:x"}), 400)
        assert ok(c.post(expire, json={})) == {"removed": 1}  # second's row; the live one stays
        api_error(c.post(restore, json={"manifest_digest": second.digest}), 404)
        api_error(c.post(expire, json={}), 404)
        api_error(c.post(f"/repository/{repo}/tag/-x/expire", json={}), 400)
    assert [t["manifest_digest"] for t in tag_page(server, repo)["tags"]] == [third.digest]
    assert _pulled(server, repo, "v1") == third.digest
    assert_logged(
        server,
        "permanently_delete_tag",
        actor="admin",
        repository=repo,
        details={"tag": "v1", "digest": first.digest, "rows": 1},
        after=mark,
    )


def test_removing_history_is_for_admins(registry: RegistryProcess) -> None:
    """A writer restores; only an admin removes history."""
    writer = person(registry, "tmw")
    repo = f"{new_org(registry, 'tm')}/app"
    push(registry, repo, make_image(), "v1")
    push(registry, repo, make_image(), "v1")
    grant(registry, repo, writer.name, "write")
    with api(registry, writer.token) as c:
        api_error(c.post(f"/repository/{repo}/tag/v1/expire", json={}), 403)
        digest = tag_page(registry, repo)["tags"][1]["manifest_digest"]
        ok(c.post(f"/repository/{repo}/tag/v1/restore", json={"manifest_digest": digest}))
