"""Tags over /api/v1: list (live by name, history newest first, keyset pages), get,
create or move, delete, set or clear an expiration; manifest details and labels; the
organization's time machine window; and bad input (400s, never a 500)."""

from __future__ import annotations

import base64
import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.api_v1.access_helpers import admin_api, api_error, new_org, ok
from tests.api_v1.tag_helpers import (
    labelled_image,
    manifest_status,
    new_repository,
    push,
    registry_tags,
    tag_page,
)
from tests.support.audit import assert_logged, last_id
from tests.support.oci import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    make_image,
    make_index,
    push_blob,
    push_image,
    sha256,
)
from tests.support.server import RegistryProcess

DAY = 86400


def _sizes(image: Any) -> int:
    return len(image.config) + sum(len(layer) for layer in image.layers)


def test_tag_routes_leave_the_repository_routes_alone(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    push(registry, repo, make_image(), "v1")
    namespace, name = repo.split("/", 1)
    with admin_api(registry) as c:
        got = ok(c.get(f"/repository/{repo}"))
        assert (got["namespace"], got["name"]) == (namespace, name)
        ok(c.put(f"/repository/{repo}", json={"description": "tagged"}))
        assert ok(c.get(f"/repository/{repo}"))["description"] == "tagged"
        assert [t["name"] for t in ok(c.get(f"/repository/{repo}/tag/"))["tags"]] == ["v1"]
        # A repository whose last component reads "tag" is still a repository.
        api_error(c.get(f"/repository/{repo}/tag"), 404)


def test_list_live_tags_and_history(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    first, second = labelled_image(layers=2), labelled_image()
    push(registry, repo, first, "a")
    push(registry, repo, second, "b")
    with registry.client() as c:
        push_image(c, repo, second, "a")  # move a: first -> second
    with admin_api(registry) as c:
        assert c.delete(f"/repository/{repo}/tag/b").status_code == 204

    live = tag_page(registry, repo, onlyActiveTags="true")
    assert [(t["name"], t["manifest_digest"]) for t in live["tags"]] == [("a", second.digest)]
    assert live["has_additional"] is False and "next_page" not in live
    assert live["time_machine_seconds"] == 14 * DAY
    (a,) = live["tags"]
    assert a["is_manifest_list"] is False
    assert a["size"] == _sizes(second)
    assert "end_ts" not in a and "expiration" not in a
    assert abs(parsedate_to_datetime(a["last_modified"]).timestamp() - a["start_ts"]) < 1

    history = tag_page(registry, repo)["tags"]
    # Newest first: b deleted (its row ended), a moved onto second, b created, a created.
    assert [(t["name"], t["manifest_digest"]) for t in history] == [
        ("a", second.digest),
        ("b", second.digest),
        ("a", first.digest),
    ]
    assert "end_ts" not in history[0]
    for ended in history[1:]:
        assert ended["end_ts"] >= ended["start_ts"]
        assert parsedate_to_datetime(ended["expiration"]).timestamp() == ended["end_ts"]
    assert history[2]["size"] == _sizes(first)

    only_a = tag_page(registry, repo, specificTag="a")["tags"]
    assert [t["manifest_digest"] for t in only_a] == [second.digest, first.digest]
    assert tag_page(registry, repo, specificTag="b", onlyActiveTags="true")["tags"] == []
    assert tag_page(registry, repo, specificTag="zzz")["tags"] == []

    with admin_api(registry) as c:
        assert ok(c.get(f"/repository/{repo}/tag/a"))["manifest_digest"] == second.digest
        api_error(c.get(f"/repository/{repo}/tag/b"), 404)  # deleted: history only


def test_an_index_tag_is_a_manifest_list_without_size(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    children = [make_image(), make_image()]
    with registry.client() as c:
        for child in children:
            push_image(c, repo, child, child.digest)
        index = make_index(children)
        r = c.put(f"/v2/{repo}/manifests/multi", content=index, headers={"Content-Type": OCI_INDEX})
        assert r.status_code == 201, r.text
    (tag,) = tag_page(registry, repo, onlyActiveTags="true")["tags"]
    assert tag["is_manifest_list"] is True
    assert tag["size"] is None


def test_pages_walk_every_tag_once(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = make_image()
    push(registry, repo, image, "t0")
    names = [f"t{i}" for i in range(7)]
    with admin_api(registry) as c:
        for name in names[1:]:
            ok(c.put(f"/repository/{repo}/tag/{name}", json={"manifest_digest": image.digest}), 201)
        # The same digest again is no change: no new row.
        ok(c.put(f"/repository/{repo}/tag/t0", json={"manifest_digest": image.digest}))

        def walk(**params: Any) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            token = None
            while True:
                query = {**params, "limit": 3, **({"next_page": token} if token else {})}
                page = ok(c.get(f"/repository/{repo}/tag/", params=query))
                assert len(page["tags"]) <= 3
                seen += page["tags"]
                token = page.get("next_page")
                assert page["has_additional"] is (token is not None)
                if token is None:
                    return seen

        active = walk(onlyActiveTags="true")
        assert [t["name"] for t in active] == sorted(names)
        history = walk()
        assert sorted(t["name"] for t in history) == sorted(names)  # one row each
        assert [t["start_ts"] for t in history] == sorted(
            (t["start_ts"] for t in history), reverse=True
        )

        token = ok(c.get(f"/repository/{repo}/tag/", params={"limit": 1}))["next_page"]
        # A history token on the live list, or garbage: 400.
        for bad in (token, "%%%", "bm90LWEtdG9rZW4", "a" * 401):
            api_error(
                c.get(
                    f"/repository/{repo}/tag/",
                    params={"onlyActiveTags": "true", "next_page": bad},
                ),
                400,
            )
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"specificTag": "bad tag"}):
            api_error(c.get(f"/repository/{repo}/tag/", params=params), 400)


def test_put_creates_and_moves_tags(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    one, two = make_image(), make_image()
    push(registry, repo, one, "one")
    push(registry, repo, two, "two")
    mark = last_id(registry)
    path = f"/repository/{repo}/tag/web"
    with admin_api(registry) as c:
        created = ok(c.put(path, json={"manifest_digest": one.digest}), 201)
        assert created["name"] == "web" and created["manifest_digest"] == one.digest
        assert ok(c.put(path, json={"manifest_digest": one.digest}))["manifest_digest"] == (
            one.digest
        )
        moved = ok(c.put(path, json={"manifest_digest": two.digest}))
        assert moved["manifest_digest"] == two.digest
    with registry.client() as c:
        got = c.get(f"/v2/{repo}/manifests/web", headers={"Accept": OCI_MANIFEST})
        assert got.headers["Docker-Content-Digest"] == two.digest
    assert_logged(
        registry,
        "create_tag",
        actor="admin",
        repository=repo,
        details={"tag": "web", "old": None, "new": one.digest},
        after=mark,
    )
    assert_logged(
        registry,
        "move_tag",
        repository=repo,
        details={"tag": "web", "old": one.digest, "new": two.digest},
        after=mark,
    )


def test_put_refuses_bad_input(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = make_image()
    push(registry, repo, image, "v1")
    other = new_repository(registry)
    foreign = make_image()
    push(registry, other, foreign, "v1")
    path = f"/repository/{repo}/tag/v1"
    now = int(time.time())
    with admin_api(registry) as c:
        api_error(c.put(path, json={}), 400)  # nothing to do
        api_error(c.put(path, json={"manifest_digest": "sha256:abc"}), 400)
        api_error(c.put(path, json={"manifest_digest": "md5:" + "0" * 32}), 400)
        api_error(c.put(path, json={"manifest_digest": "x" * 151}), 400)
        api_error(c.put(path, json={"manifest_digest": sha256(b"nothing")}), 404)
        api_error(c.put(path, json={"manifest_digest": foreign.digest}), 404)  # other repo
        api_error(c.put(path, json={"expiration": now - 10}), 400)  # in the past
        api_error(c.put(path, json={"expiration": now + 11 * 365 * DAY}), 400)
        api_error(c.put(path, json={"expiration": 10**30}), 400)
        api_error(c.put(path, json={"expiration": -1}), 400)
        api_error(c.put(path, json={"expiration": "tomorrow"}), 400)
        api_error(c.put(path, json={"manifest_digest": image.digest, "owner": "me"}), 400)
        api_error(
            c.put(path, content=b"{not json", headers={"Content-Type": "application/json"}), 400
        )
        api_error(
            c.put(f"/repository/{repo}/tag/-bad", json={"manifest_digest": image.digest}), 400
        )
        api_error(c.put(f"/repository/{repo}/tag/{'a' * 129}", json={"expiration": None}), 400)
        # Only an expiration, for a tag that is not live: 404.
        api_error(c.put(f"/repository/{repo}/tag/ghost", json={"expiration": now + 3600}), 404)
        api_error(c.delete(f"/repository/{repo}/tag/ghost"), 404)
        api_error(c.delete(f"/repository/{repo}/tag/.bad"), 400)


def test_set_and_clear_an_expiration(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = make_image()
    push(registry, repo, image, "v1")
    path = f"/repository/{repo}/tag/v1"
    later = int(time.time()) + 3600
    mark = last_id(registry)
    with admin_api(registry) as c:
        got = ok(c.put(path, json={"expiration": later}))
        assert got["end_ts"] == later and got["manifest_digest"] == image.digest
        assert parsedate_to_datetime(got["expiration"]).timestamp() == later
        cleared = ok(c.put(path, json={"expiration": None}))
        assert "end_ts" not in cleared and "expiration" not in cleared
        # Creating a tag with an expiration at once.
        created = ok(
            c.put(
                f"/repository/{repo}/tag/temp",
                json={"manifest_digest": image.digest, "expiration": later},
            ),
            201,
        )
        assert created["end_ts"] == later
    entry = assert_logged(
        registry,
        "change_tag_expiration",
        actor="admin",
        repository=repo,
        details={"tag": "v1", "expiration": None, "digest": image.digest},
        after=mark,
    )
    assert entry.details["old_expiration"] is not None


def test_delete_tag(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = make_image()
    push(registry, repo, image, "v1")
    push(registry, repo, image, "keep")
    mark = last_id(registry)
    with admin_api(registry) as c:
        assert c.delete(f"/repository/{repo}/tag/v1").status_code == 204
        api_error(c.delete(f"/repository/{repo}/tag/v1"), 404)
    assert registry_tags(registry, repo) == ["keep"]
    assert manifest_status(registry, repo, "v1") == 404
    assert manifest_status(registry, repo, image.digest) == 200  # the manifest stays
    assert_logged(
        registry,
        "delete_tag",
        actor="admin",
        repository=repo,
        details={"tag": "v1", "digest": image.digest},
        after=mark,
    )


def test_manifest_details_of_an_image(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = labelled_image(
        {"maintainer": "ops@example.org", "version": "1.2"},
        {"org.opencontainers.image.source": "https://example.org/src"},
        layers=2,
    )
    push(registry, repo, image, "v1")
    push(registry, repo, image, "stable")
    # A signature-like artifact that refers to it.
    referrer = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [descriptor(OCI_EMPTY, b"{}")],
            "subject": descriptor(OCI_MANIFEST, image.manifest),
        }
    ).encode()
    with registry.client() as c:
        push_blob(c, repo, b"{}")
        r = c.put(
            f"/v2/{repo}/manifests/{sha256(referrer)}",
            content=referrer,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
    with admin_api(registry) as c:
        got = ok(c.get(f"/repository/{repo}/manifest/{image.digest}"))
    assert got["digest"] == image.digest
    assert got["media_type"] == OCI_MANIFEST and got["is_manifest_list"] is False
    assert got["manifest_size"] == len(image.manifest)
    assert got["manifest_data"] == image.manifest.decode()
    assert got["config"]["digest"] == sha256(image.config)
    assert got["config"]["size"] == len(image.config)
    assert [(layer["index"], layer["digest"], layer["size"]) for layer in got["layers"]] == [
        (i, sha256(b), len(b)) for i, b in enumerate(image.layers)
    ]
    assert got["size"] == _sizes(image)
    assert got["annotations"] == {"org.opencontainers.image.source": "https://example.org/src"}
    assert sorted((x["key"], x["value"], x["source_type"]) for x in got["labels"]) == [
        ("maintainer", "ops@example.org", "manifest"),
        ("org.opencontainers.image.source", "https://example.org/src", "manifest"),
        ("version", "1.2", "manifest"),
    ]
    assert got["referrers"] == [
        {
            "digest": sha256(referrer),
            "media_type": OCI_MANIFEST,
            "size": len(referrer),
            "artifact_type": "application/vnd.example.sig",
        }
    ]
    assert [t["name"] for t in got["tags"]] == ["stable", "v1"]
    with admin_api(registry) as c:
        api_error(c.get(f"/repository/{repo}/manifest/{sha256(b'none')}"), 404)
        api_error(c.get(f"/repository/{repo}/manifest/sha256:short"), 400)
        api_error(c.get(f"/repository/{repo}/manifest/latest"), 400)


def test_manifest_details_of_an_index(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    children = [make_image(), make_image()]
    index = make_index(children)
    with registry.client() as c:
        for child in children:
            push_image(c, repo, child, child.digest)
        r = c.put(f"/v2/{repo}/manifests/v1", content=index, headers={"Content-Type": OCI_INDEX})
        assert r.status_code == 201, r.text
    with admin_api(registry) as c:
        got = ok(c.get(f"/repository/{repo}/manifest/{sha256(index)}"))
    assert got["is_manifest_list"] is True
    assert "layers" not in got
    assert [(m["digest"], m["platform"]) for m in got["manifests"]] == [
        (children[0].digest, {"architecture": "amd64", "os": "linux"}),
        (children[1].digest, {"architecture": "arm64", "os": "linux"}),
    ]


def test_labels_from_content_and_the_api(registry: RegistryProcess) -> None:
    repo = new_repository(registry)
    image = labelled_image({"team": "core", "tier": "web"}, {"team": "core", "note": "hi"})
    push(registry, repo, image, "v1")
    base = f"/repository/{repo}/manifest/{image.digest}/labels"
    mark = last_id(registry)
    with admin_api(registry) as c:
        found = ok(c.get(base))["labels"]
        # The pair present in both the config and the annotations is kept once.
        assert sorted((x["key"], x["value"]) for x in found) == [
            ("note", "hi"),
            ("team", "core"),
            ("tier", "web"),
        ]
        assert {x["source_type"] for x in found} == {"manifest"}
        added = ok(c.post(base, json={"key": "com.example/owner", "value": "alice"}), 201)
        assert added["source_type"] == "api" and added["media_type"] == "text/plain"
        assert ok(c.get(f"{base}/{added['id']}")) == added
        assert [x["key"] for x in ok(c.get(base, params={"filter": "t"}))["labels"]] == [
            "team",
            "tier",
        ]
        content_label = next(x for x in found if x["key"] == "team")
        api_error(c.delete(f"{base}/{content_label['id']}"), 409)
        assert c.delete(f"{base}/{added['id']}").status_code == 204
        api_error(c.get(f"{base}/{added['id']}"), 404)
        api_error(c.delete(f"{base}/{added['id']}"), 404)
        for bad in (
            {"key": "", "value": "x"},
            {"key": "-dash", "value": "x"},
            {"key": "sp ace", "value": "x"},
            {"key": "k" * 256, "value": "x"},
            {"key": "k", "value": "v" * 4097},
            {"key": "k", "value": "nul\x00"},
            {"key": "k", "value": "x", "media_type": "application/json"},
            {"key": "k"},
            {"key": "k", "value": "x", "extra": 1},
            {"key": "quay.expires-after", "value": "soon"},
        ):
            api_error(c.post(base, json=bad), 400)
        api_error(c.get(f"{base}/not-a-number"), 404)
        api_error(c.get(f"{base}/{10**17}"), 404)
        other = make_image()
        push(registry, repo, other, "v2")
        api_error(
            c.get(f"/repository/{repo}/manifest/{other.digest}/labels/{content_label['id']}"), 404
        )
    assert_logged(
        registry,
        "manifest_label_add",
        actor="admin",
        repository=repo,
        details={"digest": image.digest, "key": "com.example/owner", "value": "alice"},
        after=mark,
    )
    assert_logged(
        registry,
        "manifest_label_delete",
        repository=repo,
        details={"digest": image.digest, "key": "com.example/owner"},
        after=mark,
    )


def test_unusable_configs_give_no_labels(registry: RegistryProcess) -> None:
    """A config that is not JSON (an artifact's), or Labels of the wrong shape, or
    oversized pairs: the push works and those labels are skipped."""
    repo = new_repository(registry)
    odd = labelled_image({"ok": "yes", "big": "v" * 5000, "num": 3})  # type: ignore[dict-item]
    push(registry, repo, odd, "odd")
    raw = b"\x00\x01 not json"
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.example.config", raw),
            "layers": [descriptor(OCI_EMPTY, b"{}")],
            "annotations": {"kind": "artifact"},
        }
    ).encode()
    with registry.client() as c:
        push_blob(c, repo, raw)
        push_blob(c, repo, b"{}")
        r = c.put(
            f"/v2/{repo}/manifests/art", content=artifact, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
    with admin_api(registry) as c:
        odd_labels = ok(c.get(f"/repository/{repo}/manifest/{odd.digest}/labels"))["labels"]
        art_labels = ok(c.get(f"/repository/{repo}/manifest/{sha256(artifact)}/labels"))["labels"]
    assert [(x["key"], x["value"]) for x in odd_labels] == [("ok", "yes")]
    assert [(x["key"], x["value"]) for x in art_labels] == [("kind", "artifact")]


def test_organization_time_machine_window(registry: RegistryProcess) -> None:
    org = new_org(registry, "tmw")
    mark = last_id(registry)
    with admin_api(registry) as c:
        assert ok(c.get(f"/organization/{org}"))["tag_expiration_s"] == 14 * DAY
        assert (
            ok(c.put(f"/organization/{org}", json={"tag_expiration_s": 3600}))["tag_expiration_s"]
            == 3600
        )
        assert ok(c.get(f"/organization/{org}"))["tag_expiration_s"] == 3600
        assert (
            ok(c.put(f"/organization/{org}", json={"tag_expiration_s": 0}))["tag_expiration_s"] == 0
        )
        for bad in (-1, 10 * 366 * DAY, "soon", 1.5):
            api_error(c.put(f"/organization/{org}", json={"tag_expiration_s": bad}), 400)
        reset = ok(c.put(f"/organization/{org}", json={"tag_expiration_s": None}))
        assert reset["tag_expiration_s"] == 14 * DAY
    assert_logged(
        registry,
        "change_org",
        namespace=org,
        details={"tag_expiration_s": 0, "old_tag_expiration_s": 3600},
        after=mark,
    )


@pytest.mark.parametrize("path", ["tag/", "tag/v1", "manifest/sha256:" + "0" * 64, "immutability"])
def test_unknown_repository_is_404(registry: RegistryProcess, path: str) -> None:
    with admin_api(registry) as c:
        api_error(c.get(f"/repository/nosuchns/nosuchrepo/{path}"), 404)


def _token(text: str) -> str:
    """A next_page token as the service writes them (urlsafe base64 without padding)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_odd_ids_page_tokens_and_durations_are_refused_not_500s(
    any_registry: RegistryProcess,
) -> None:
    """Digits int() refuses ("²"), numbers past the databases' integers, a NUL in a tag
    name (PostgreSQL), a duration past what a timedelta holds: 4xx, never a 500."""
    server = any_registry
    repo = f"{new_org(server, 'odd')}/app"
    image = make_image()
    push(server, repo, image, "v1")
    tags = f"/repository/{repo}/tag/"
    labels = f"/repository/{repo}/manifest/{image.digest}/labels"
    with admin_api(server) as c:
        for token in ("i:²", "i:" + "9" * 40, "i:-1", "i:", "n:v1"):
            api_error(c.get(tags, params={"next_page": _token(token)}), 400)
        for token in ("n:a\x00b", "n:-x", "i:5"):
            api_error(
                c.get(tags, params={"onlyActiveTags": "true", "next_page": _token(token)}), 400
            )
        # The largest id a token may carry still reads as "from the start".
        page = ok(c.get(tags, params={"next_page": _token("i:" + "9" * 19)}))
        assert [t["name"] for t in page["tags"]] == ["v1"]
        api_error(c.get(f"{labels}/%C2%B2"), 404)
        api_error(c.delete(f"{labels}/%C2%B2"), 404)
        api_error(c.delete(f"/repository/{repo}/immutability/%C2%B2"), 404)
        api_error(c.delete(f"/repository/{repo}/immutability/{'9' * 30}"), 404)
        for value in ("999999999w", "999999999d", "3651d"):
            body = api_error(
                c.post(labels, json={"key": "quay.expires-after", "value": value}), 400
            )
            assert "quay.expires-after" in body["error_message"]
    # In the content, such a label is ignored: the push works and sets no expiration.
    far = labelled_image({"quay.expires-after": "999999999w"}, {"quay.expires-after": "3651d"})
    push(server, repo, far, "far")
    (tag,) = tag_page(server, repo, onlyActiveTags="true", specificTag="far")["tags"]
    assert "end_ts" not in tag
    assert manifest_status(server, repo, "far") == 200
