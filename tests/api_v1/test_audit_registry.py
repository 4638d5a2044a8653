"""The audit log of the registry protocol: every push, tag change, delete and pull is
recorded with its principal (user, token, robot, anonymous), address, user agent,
repository and details. Content changes are written in the change's own transaction;
pulls are queued, and can be switched off."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.audit import assert_logged, drain_queue, entries, execute, last_id
from tests.support.audit_setup import Member, grant, organization, robot, users
from tests.support.oci import OCI_MANIFEST, Image, descriptor, make_image, push_image
from tests.support.server import RegistryProcess


def agent() -> str:
    return f"audit-test/{uuid.uuid4().hex[:8]}"


def client_as(server: RegistryProcess, auth: tuple[str, str] | None, ua: str) -> httpx.Client:
    return server.client(auth=auth, headers={"User-Agent": ua})


@pytest.fixture
def alice(any_registry: RegistryProcess) -> Member:
    return users(any_registry, 1)[0]


def test_push_records_repository_push_and_new_tag(
    any_registry: RegistryProcess, alice: Member
) -> None:
    server, repo, ua = any_registry, f"{alice.name}/app", agent()
    mark = last_id(server)
    image = make_image()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, image, "v1")
    push = assert_logged(
        server,
        "push",
        actor=alice.name,
        actor_kind="user",
        namespace=alice.name,
        repository=repo,
        ip="127.0.0.1",
        user_agent=ua,
        details={
            "digest": image.digest,
            "tag": "v1",
            "media_type": OCI_MANIFEST,
            "size": len(image.manifest),
            "new": True,
            "auth": "password",
        },
        after=mark,
    )
    tag = assert_logged(
        server,
        "create_tag",
        actor=alice.name,
        actor_kind="user",
        repository=repo,
        user_agent=ua,
        details={"tag": "v1", "old": None, "new": image.digest},
        after=mark,
    )
    assert tag.id > push.id  # the push, then what it did to the tag
    # The registry login that came with it (queued).
    assert_logged(
        server,
        "login",
        actor=alice.name,
        actor_kind="user",
        user_agent=ua,
        details={"method": "password", "registry": True},
        after=mark,
    )


def test_new_repository_by_a_creator(any_registry: RegistryProcess) -> None:
    """A member of a team with the creator role pushes a new repository into the
    organization: created at the first push, with admin for its creator."""
    server, ua = any_registry, agent()
    maker = users(server, 1)[0]
    org = organization(server, creators=(maker,))
    repo = f"{org}/fresh"
    mark = last_id(server)
    with client_as(server, maker.auth, ua) as c:
        push_image(c, repo, make_image(), "v1")
    created = assert_logged(
        server,
        "create_repo",
        actor=maker.name,
        actor_kind="user",
        namespace=org,
        repository=repo,
        ip="127.0.0.1",
        user_agent=ua,
        details={"public": False, "granted": 1},
        after=mark,
    )
    push = assert_logged(server, "push", actor=maker.name, repository=repo, after=mark)
    assert created.id < push.id


def test_move_tag_and_repush(any_registry: RegistryProcess, alice: Member) -> None:
    server, repo, ua = any_registry, f"{alice.name}/moving", agent()
    first, second = make_image(), make_image()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, first, "latest")
        mark = last_id(server)
        push_image(c, repo, second, "latest")
        assert_logged(
            server,
            "move_tag",
            actor=alice.name,
            repository=repo,
            details={"tag": "latest", "old": first.digest, "new": second.digest},
            after=mark,
        )
        # The same manifest to the same tag again: a push, and no tag change.
        mark = last_id(server)
        push_image(c, repo, second, "latest")
        repush = assert_logged(
            server, "push", repository=repo, details={"digest": second.digest}, after=mark
        )
        assert repush.details["new"] is False
        assert not [e for e in entries(server, after=mark) if e.kind.endswith("_tag")]
        # By digest: no tag in the details.
        mark = last_id(server)
        third = make_image()
        push_image(c, repo, third, third.digest)
        by_digest = assert_logged(
            server, "push", repository=repo, details={"digest": third.digest}, after=mark
        )
        assert "tag" not in by_digest.details


def test_failed_push_leaves_no_entry(any_registry: RegistryProcess, alice: Member) -> None:
    server, repo = any_registry, f"{alice.name}/broken"
    image = make_image()
    with client_as(server, alice.auth, agent()) as c:
        push_image(c, repo, image, "ok")
        mark = last_id(server)
        missing = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", b"{}"),
                "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"absent")],
            }
        ).encode()
        r = c.put(
            f"/v2/{repo}/manifests/nope",
            content=missing,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 400, r.text
    # The transaction rolled back with its entries: no push, no tag.
    assert [e.kind for e in entries(server, after=mark) if e.repository == repo] == []


def test_delete_tag_and_manifest(any_registry: RegistryProcess, alice: Member) -> None:
    server, repo, ua = any_registry, f"{alice.name}/deleting", agent()
    kept, gone = make_image(), make_image()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, kept, "t1")
        push_image(c, repo, kept, "t2")
        push_image(c, repo, gone, "t3")
        mark = last_id(server)
        assert c.delete(f"/v2/{repo}/manifests/t3").status_code == 202
        assert_logged(
            server,
            "delete_tag",
            actor=alice.name,
            actor_kind="user",
            repository=repo,
            namespace=alice.name,
            ip="127.0.0.1",
            user_agent=ua,
            details={"tag": "t3", "digest": gone.digest},
            after=mark,
        )
        mark = last_id(server)
        assert c.delete(f"/v2/{repo}/manifests/{kept.digest}").status_code == 202
    deleted = assert_logged(
        server,
        "delete_manifest",
        actor=alice.name,
        repository=repo,
        user_agent=ua,
        details={"digest": kept.digest, "tags": ["t1", "t2"]},
        after=mark,
    )
    tags = [e for e in entries(server, "delete_tag", after=mark) if e.repository == repo]
    assert [(e.details["tag"], e.details["with_manifest"]) for e in tags] == [
        ("t1", True),
        ("t2", True),
    ]
    assert all(e.id < deleted.id and e.details["digest"] == kept.digest for e in tags)


def test_get_is_a_pull_head_is_not(any_registry: RegistryProcess, alice: Member) -> None:
    server, repo, ua = any_registry, f"{alice.name}/pulled", agent()
    image = make_image()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, image, "v1")
        mark = last_id(server)
        assert c.head(f"/v2/{repo}/manifests/v1").status_code == 200
        assert c.get(f"/v2/{repo}/manifests/v1").status_code == 200
        assert c.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200
    drain_queue(server)
    pulls = [e for e in entries(server, "pull", after=mark) if e.repository == repo]
    assert [e.details.get("tag") for e in pulls] == ["v1", None]
    for e in pulls:
        assert (e.actor, e.actor_kind, e.namespace) == (alice.name, "user", alice.name)
        assert (e.ip, e.user_agent) == ("127.0.0.1", ua)
        assert e.details["digest"] == image.digest
        assert e.details["media_type"] == OCI_MANIFEST
    assert_logged(server, "pull", repository=repo, details={"tag": "v1"}, after=mark)


def test_app_token_is_recorded_as_a_token(any_registry: RegistryProcess, alice: Member) -> None:
    """With Basic `$app:<token>` and through the token flow (what docker does)."""
    server, repo, ua = any_registry, f"{alice.name}/tokened", agent()
    mark = last_id(server)
    with client_as(server, ("$app", alice.token), ua) as c:
        push_image(c, repo, make_image(), "basic")
        scope = f"repository:{repo}:pull,push"
        answer = c.get("/v2/auth", params={"service": "cargohold", "scope": scope})
        assert answer.status_code == 200, answer.text
        jwt = answer.json()["token"]
    basic = assert_logged(
        server,
        "push",
        actor=alice.name,
        actor_kind="token",
        repository=repo,
        user_agent=ua,
        details={"tag": "basic", "auth": "app_token"},
        after=mark,
    )
    assert isinstance(basic.details["credential_id"], int)
    issued = assert_logged(
        server,
        "token_issued",
        actor=alice.name,
        actor_kind="token",
        user_agent=ua,
        details={"access": [f"{scope}"]},
        after=mark,
    )
    assert issued.details["credential_id"] == basic.details["credential_id"]
    headers = {"User-Agent": ua, "Authorization": f"Bearer {jwt}"}
    with server.client(auth=None, headers=headers) as c:
        push_image(c, repo, make_image(), "flow")
    flow = assert_logged(
        server,
        "push",
        actor=alice.name,
        actor_kind="token",
        repository=repo,
        details={"tag": "flow", "auth": "registry_token"},
        after=mark,
    )
    assert flow.details["credential_id"] == basic.details["credential_id"]


def test_robot_push_and_pull(any_registry: RegistryProcess, alice: Member) -> None:
    server, repo, ua = any_registry, f"{alice.name}/robotic", agent()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, make_image(), "seed")
    name, robot_id, token = robot(server, alice.name)
    grant(server, repo, "robot", robot_id, "write")
    mark = last_id(server)
    image = make_image()
    with client_as(server, (name, token), ua) as c:
        push_image(c, repo, image, "bot")
        assert c.get(f"/v2/{repo}/manifests/bot").status_code == 200
    assert_logged(
        server,
        "push",
        actor=name,
        actor_kind="robot",
        repository=repo,
        details={"tag": "bot", "auth": "robot_token"},
        after=mark,
    )
    assert_logged(
        server,
        "create_tag",
        actor=name,
        actor_kind="robot",
        repository=repo,
        details={"tag": "bot", "new": image.digest},
        after=mark,
    )
    assert_logged(
        server,
        "pull",
        actor=name,
        actor_kind="robot",
        repository=repo,
        user_agent=ua,
        details={"tag": "bot"},
        after=mark,
    )


def test_anonymous_pull_of_a_public_repository(
    any_registry: RegistryProcess, alice: Member
) -> None:
    server, repo, ua = any_registry, f"{alice.name}/open", agent()
    image = make_image()
    with client_as(server, alice.auth, ua) as c:
        push_image(c, repo, image, "v1")
    execute(
        server,
        "UPDATE repository SET public = :yes WHERE name = :name",
        [{"yes": True, "name": repo}],
    )
    mark = last_id(server)
    with client_as(server, None, ua) as c:
        assert c.get(f"/v2/{repo}/manifests/v1").status_code == 200
    entry = assert_logged(
        server, "pull", actor_kind="anonymous", repository=repo, user_agent=ua, after=mark
    )
    assert entry.actor is None
    assert "auth" not in entry.details


def test_failed_login_is_recorded(any_registry: RegistryProcess, alice: Member) -> None:
    server, ua = any_registry, agent()
    mark = last_id(server)
    with client_as(server, (alice.name, "not-the-password"), ua) as c:
        assert c.get("/v2/").status_code == 401
    assert_logged(
        server,
        "login_failure",
        actor_kind="anonymous",
        ip="127.0.0.1",
        user_agent=ua,
        details={"username": alice.name},
        after=mark,
    )


# -- pull logging switched off -------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data: Path = tmp_path_factory.mktemp("registry-no-pulls")
    server = RegistryProcess(data, env={"CARGOHOLD_AUTH__AUDIT__LOG_PULLS": "false"}).start()
    yield server
    server.stop()


def test_pull_logging_off(quiet_registry: RegistryProcess) -> None:
    server = quiet_registry
    repo = f"quiet/r{uuid.uuid4().hex[:8]}"
    image: Image = make_image()
    with server.client() as c:
        push_image(c, repo, image, "v1")
        assert c.get(f"/v2/{repo}/manifests/v1").status_code == 200
        assert c.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200
    # Everything queued before the drain is written by now: still no pull.
    drain_queue(server)
    assert entries(server, "pull") == []
    # Changes are still recorded.
    assert_logged(server, "push", actor="admin", repository=repo, details={"tag": "v1"})
