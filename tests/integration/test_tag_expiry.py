"""Tag expiration, by the API and by the `quay.expires-after` label, over HTTP on SQLite
and PostgreSQL: an expired tag leaves tags/list, manifest GET by tag (cached answers
included) and the API's live list; the expiry job ends it (`tag_expired`) and it becomes
history that can be restored; a push over it starts a new live row. Waits poll; nothing
asserts how long anything took."""

from __future__ import annotations

import time

from tests.api_v1.access_helpers import admin_api, new_org, ok
from tests.api_v1.tag_helpers import (
    labelled_image,
    live_tags,
    manifest_status,
    push,
    registry_tags,
    tag_page,
    wait_until,
)
from tests.support.audit import assert_logged, last_id
from tests.support.oci import make_image
from tests.support.server import RegistryProcess


def _gone(server: RegistryProcess, repo: str, tag: str) -> bool:
    return (
        tag not in registry_tags(server, repo)
        and manifest_status(server, repo, tag) == 404
        and tag not in live_tags(server, repo)
    )


def test_expiration_set_through_the_api(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'exp')}/app"
    image = make_image()
    push(server, repo, image, "short")
    push(server, repo, image, "stays")
    mark = last_id(server)
    expires = int(time.time()) + 2
    with admin_api(server) as c:
        got = ok(c.put(f"/repository/{repo}/tag/short", json={"expiration": expires}))
    assert got["end_ts"] == expires
    assert manifest_status(server, repo, "short") == 200  # remembered by the server's cache
    wait_until(lambda: _gone(server, repo, "short"), "the tag to expire")
    assert registry_tags(server, repo) == ["stays"]
    assert manifest_status(server, repo, image.digest) == 200
    assert_logged(
        server,
        "tag_expired",
        actor_kind="anonymous",
        repository=repo,
        details={"tag": "short", "digest": image.digest},
        after=mark,
        timeout=60,
    )
    # History: the row ended when it expired, and can be restored.
    (row,) = tag_page(server, repo, specificTag="short")["tags"]
    assert row["end_ts"] == expires
    with admin_api(server) as c:
        ok(c.post(f"/repository/{repo}/tag/short/restore", json={"manifest_digest": image.digest}))
    assert manifest_status(server, repo, "short") == 200
    (live,) = tag_page(server, repo, specificTag="short", onlyActiveTags="true")["tags"]
    assert "end_ts" not in live  # restored without an expiration


def test_expiration_from_the_config_label(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'exp')}/app"
    image = labelled_image({"quay.expires-after": "2s"})
    mark = last_id(server)
    push(server, repo, image, "nightly")
    created = assert_logged(
        server, "create_tag", repository=repo, details={"tag": "nightly"}, after=mark
    )
    assert "expires_at" in created.details
    (tag,) = tag_page(server, repo, onlyActiveTags="true")["tags"]
    assert tag["end_ts"] >= tag["start_ts"]
    assert manifest_status(server, repo, "nightly") == 200
    wait_until(lambda: _gone(server, repo, "nightly"), "the labelled tag to expire")
    # A push of the same image over the expired tag starts a new live row (expiring again).
    push(server, repo, image, "nightly")
    assert manifest_status(server, repo, "nightly") == 200
    rows = tag_page(server, repo, specificTag="nightly")["tags"]
    assert len(rows) == 2 and rows[0]["manifest_digest"] == image.digest
    wait_until(lambda: _gone(server, repo, "nightly"), "the pushed-again tag to expire")


def test_expiration_from_an_annotation_and_bad_values(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'exp')}/app"
    annotated = labelled_image(annotations={"quay.expires-after": "1s"})
    push(server, repo, annotated, "ann")
    for i, value in enumerate(("2x", "0s", "-1h", "", "99999999999w", "1 d")):
        push(server, repo, labelled_image({"quay.expires-after": value}), f"bad-{i}")
    plain = make_image()
    push(server, repo, plain, "plain")
    wait_until(lambda: _gone(server, repo, "ann"), "the annotated tag to expire")
    live = tag_page(server, repo, onlyActiveTags="true")["tags"]
    assert "ann" not in {t["name"] for t in live}
    # Labels that do not parse set no expiration.
    assert all("end_ts" not in t for t in live), live


def test_an_expired_tag_can_be_moved_by_a_push(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'exp')}/app"
    first, second = make_image(), make_image()
    push(server, repo, first, "v1")
    with admin_api(server) as c:
        ok(c.put(f"/repository/{repo}/tag/v1", json={"expiration": int(time.time()) + 1}))
    wait_until(lambda: manifest_status(server, repo, "v1") == 404, "v1 to expire")
    mark = last_id(server)
    push(server, repo, second, "v1")  # whether or not the job ended the row yet
    assert live_tags(server, repo) == {"v1": second.digest}
    assert_logged(
        server,
        "create_tag",
        repository=repo,
        details={"tag": "v1", "old": None, "new": second.digest},
        after=mark,
    )
