"""Immutable tags on every path that could change one: on /v2 a manifest PUT that moves
it, a DELETE of the tag, a DELETE of the manifest it points at (403 DENIED naming the
rule); through the API a move, delete, expiration or restore (409). Pushing the digest it
already has is fine; label expiry passes it by; adding a rule clears expirations of the
tags it matches; rules are bounded and checked."""

from __future__ import annotations

import time

import pytest

from tests.api_v1.access_helpers import admin_api, api_error, new_org, ok
from tests.api_v1.tag_helpers import (
    labelled_image,
    live_tags,
    manifest_status,
    push,
    put_manifest,
    tag_page,
)
from tests.support.audit import assert_logged, last_id
from tests.support.oci import error_codes, make_image, push_image
from tests.support.server import RegistryProcess


def _rule(server: RegistryProcess, repo: str, pattern: str) -> str:
    with admin_api(server) as c:
        return str(
            ok(c.post(f"/repository/{repo}/immutability", json={"pattern": pattern}), 201)["id"]
        )


def _denied(response: object, pattern: str) -> None:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == 403, response.text
    assert error_codes(response) == ["DENIED"]
    message = response.json()["errors"][0]["message"]
    assert "immutable" in message and pattern in message, message


@pytest.fixture
def protected(any_registry: RegistryProcess) -> tuple[RegistryProcess, str, list[str]]:
    """A repository where v1 moved from an old image to the current one (so it has
    history), with a rule `v*`; `latest` on the same manifest is not protected."""
    server = any_registry
    repo = f"{new_org(server, 'imm')}/app"
    old, current = make_image(), make_image()
    push(server, repo, old, "v1")
    push(server, repo, current, "v1")
    push(server, repo, current, "latest")
    _rule(server, repo, "v*")
    return server, repo, [old.digest, current.digest]


def test_the_registry_refuses_changes_to_an_immutable_tag(
    protected: tuple[RegistryProcess, str, list[str]],
) -> None:
    server, repo, (old, current) = protected
    other = make_image()
    with server.client() as c:
        push_image(c, repo, other, "unrelated")
        _denied(put_manifest(c, repo, other, "v1"), "v*")  # a move
        _denied(c.delete(f"/v2/{repo}/manifests/v1"), "v*")  # a tag delete
        _denied(c.delete(f"/v2/{repo}/manifests/{current}"), "v*")  # its manifest
        # The digest it already has: no change, accepted.
        r = c.get(
            f"/v2/{repo}/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        again = c.put(
            f"/v2/{repo}/manifests/v1",
            content=r.content,
            headers={"Content-Type": r.headers["Content-Type"]},
        )
        assert again.status_code == 201, again.text
        # Tags the rule does not match move and go as usual.
        assert put_manifest(c, repo, other, "latest").status_code == 201
        assert c.delete(f"/v2/{repo}/manifests/latest").status_code == 202
        # A new tag matching the rule may be created; then it is protected too.
        assert put_manifest(c, repo, other, "v2").status_code == 201
        _denied(c.delete(f"/v2/{repo}/manifests/v2"), "v*")
    assert live_tags(server, repo) == {"v1": current, "v2": other.digest, "unrelated": other.digest}
    assert manifest_status(server, repo, old) == 200


def test_the_api_refuses_changes_to_an_immutable_tag(
    protected: tuple[RegistryProcess, str, list[str]],
) -> None:
    server, repo, (old, current) = protected
    tag = f"/repository/{repo}/tag/v1"
    with admin_api(server) as c:
        error = api_error(c.put(tag, json={"manifest_digest": old}), 409)
        assert "v*" in error["error_message"]
        api_error(c.delete(tag), 409)
        api_error(c.put(tag, json={"expiration": int(time.time()) + 3600}), 409)
        api_error(
            c.put(tag, json={"manifest_digest": current, "expiration": int(time.time()) + 60}), 409
        )
        api_error(c.post(f"{tag}/restore", json={"manifest_digest": old}), 409)
        # No change, or clearing an expiration it does not have: fine.
        ok(c.put(tag, json={"manifest_digest": current}))
        ok(c.put(tag, json={"expiration": None}))
        # Its history is not the live tag: an admin may remove it.
        assert ok(c.post(f"{tag}/expire", json={})) == {"removed": 1}
        # A new tag matching the rule cannot be created with an expiration.
        api_error(
            c.put(
                f"/repository/{repo}/tag/v9",
                json={"manifest_digest": old, "expiration": int(time.time()) + 60},
            ),
            409,
        )
    assert live_tags(server, repo) == {"v1": current, "latest": current}


def test_label_expiry_passes_immutable_tags_by(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'imm')}/app"
    push(server, repo, make_image(), "seed")
    _rule(server, repo, "release-*")
    image = labelled_image({"quay.expires-after": "1h"})
    push(server, repo, image, "release-1")
    push(server, repo, image, "candidate")
    live = {t["name"]: t for t in tag_page(server, repo, onlyActiveTags="true")["tags"]}
    assert "end_ts" not in live["release-1"]
    assert "end_ts" in live["candidate"]
    # Through the API, the label sets the expiry of the mutable tags only.
    other = make_image()
    push(server, repo, other, "release-2")
    push(server, repo, other, "feature")
    with admin_api(server) as c:
        ok(
            c.post(
                f"/repository/{repo}/manifest/{other.digest}/labels",
                json={"key": "quay.expires-after", "value": "2h"},
            ),
            201,
        )
    live = {t["name"]: t for t in tag_page(server, repo, onlyActiveTags="true")["tags"]}
    assert "end_ts" not in live["release-2"]
    assert "end_ts" in live["feature"]


def test_a_new_rule_clears_expirations_it_matches(any_registry: RegistryProcess) -> None:
    server = any_registry
    repo = f"{new_org(server, 'imm')}/app"
    image = make_image()
    later = int(time.time()) + 3600
    with admin_api(server) as c:
        push(server, repo, image, "rc1")
        push(server, repo, image, "dev")
        for tag in ("rc1", "dev"):
            ok(c.put(f"/repository/{repo}/tag/{tag}", json={"expiration": later}))
    mark = last_id(server)
    rule_id = _rule(server, repo, "rc[0-9]")
    live = {t["name"]: t for t in tag_page(server, repo, onlyActiveTags="true")["tags"]}
    assert "end_ts" not in live["rc1"]
    assert live["dev"]["end_ts"] == later
    assert_logged(
        server,
        "create_immutability_rule",
        actor="admin",
        repository=repo,
        details={"pattern": "rc[0-9]", "cleared_expirations": ["rc1"]},
        after=mark,
    )
    with admin_api(server) as c:
        assert c.delete(f"/repository/{repo}/immutability/{rule_id}").status_code == 204
        assert ok(c.get(f"/repository/{repo}/immutability")) == {"rules": []}
        assert c.delete(f"/repository/{repo}/tag/rc1").status_code == 204  # mutable again
    assert_logged(
        server,
        "delete_immutability_rule",
        repository=repo,
        details={"pattern": "rc[0-9]"},
        after=mark,
    )


def test_rules_are_checked_and_bounded(registry: RegistryProcess) -> None:
    repo = f"{new_org(registry, 'imm')}/app"
    push(registry, repo, make_image(), "v1")
    base = f"/repository/{repo}/immutability"
    with admin_api(registry) as c:
        first = ok(c.post(base, json={"pattern": "stable"}), 201)
        api_error(c.post(base, json={"pattern": "stable"}), 409)
        for bad in ("", "a b", "x/y", "../*", "t\x00", "é*", "a" * 257, "{a,b}"):
            api_error(c.post(base, json={"pattern": bad}), 400)
        api_error(c.post(base, json={"pattern": 5}), 400)
        api_error(c.post(base, json={}), 400)
        api_error(c.post(base, json={"pattern": "x", "scope": "all"}), 400)
        for i in range(99):
            ok(c.post(base, json={"pattern": f"p{i}-*"}), 201)
        api_error(c.post(base, json={"pattern": "one-too-many"}), 400)
        rules = ok(c.get(base))["rules"]
        assert len(rules) == 100 and rules[0] == first
        api_error(c.delete(f"{base}/999999999"), 404)
        api_error(c.delete(f"{base}/nope"), 404)
        # A rule of another repository is not found through this one.
        other = f"{new_org(registry, 'imm')}/app"
        push(registry, other, make_image(), "v1")
        api_error(c.delete(f"/repository/{other}/immutability/{first['id']}"), 404)
