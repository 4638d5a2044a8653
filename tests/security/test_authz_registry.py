"""Registry-protocol authorization across tenants (SECURITY.md 1.2 and 1.3): upload
sessions belong to the principal who started them and to their repository; a blob is
reachable only through a repository it is linked into and that the caller may read;
mounts never link from repositories the caller cannot read; the catalog lists only what
the caller can read."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.security.helpers import catalog
from tests.security.registry_support import (
    bearer_client,
    grant_user,
    make_public,
    new_user,
    token_for,
)
from tests.support.identity import Account, unique_name
from tests.support.oci import push_blob, sha256
from tests.support.server import RegistryProcess

OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class Cast:
    """An organization repository two users may write, a private source repository
    holding a secret blob, and a user with push rights only in their own namespace."""

    server: RegistryProcess
    shared: str  # org repository: writer_a and writer_b have write
    source: str  # private org repository holding `secret`
    writer_a: Account
    writer_b: Account
    outsider: Account  # pushes only to `own`
    own: str  # outsider's repository
    secret: bytes
    secret_digest: str


@pytest.fixture(scope="module")
def cast(registry: RegistryProcess) -> Cast:
    org = unique_name("sec")
    shared, source = f"{org}/shared", f"{org}/source"
    writer_a = new_user(registry, unique_name("wa"))
    writer_b = new_user(registry, unique_name("wb"))
    outsider = new_user(registry, unique_name("out"))
    secret = os.urandom(512)
    with registry.client() as admin:  # the superuser creates the organization by pushing
        push_blob(admin, shared, b"shared-seed " + os.urandom(8))
        digest = push_blob(admin, source, secret)
    grant_user(registry, shared, writer_a, "write")
    grant_user(registry, shared, writer_b, "write")
    own = f"{outsider.name}/own"
    with registry.client(auth=outsider.auth) as c:
        push_blob(c, own, b"outsider seed " + os.urandom(8))
    return Cast(registry, shared, source, writer_a, writer_b, outsider, own, secret, digest)


def _start(client: httpx.Client, repo: str) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    return str(r.headers["Location"])


def _attempts(client: httpx.Client, location: str) -> dict[str, httpx.Response]:
    """Every request on an upload session: status, append, finish, cancel."""
    data = b"intruder bytes"
    return {
        "GET": client.get(location),
        "PATCH": client.patch(location, content=data, headers=OCTET),
        "PUT": client.put(location, params={"digest": sha256(data)}, content=data),
        "DELETE": client.delete(location),
    }


def _shape(resp: httpx.Response, upload_id: str) -> tuple[int, Any]:
    """Status and body with the upload id taken out: what tells one 404 from another."""
    body = resp.text.replace(upload_id, "<id>")
    return resp.status_code, body


def test_another_writer_cannot_touch_an_upload(cast: Cast) -> None:
    server = cast.server
    with server.client(auth=cast.writer_a.auth) as a:
        location = _start(a, cast.shared)
        upload_id = location.rsplit("/", 1)[-1]
        first = b"A" * 100
        assert a.patch(location, content=first, headers=OCTET).status_code == 202
    unknown = location.rsplit("/", 1)[0] + "/" + str(uuid.uuid4())
    # The other writer, and the superuser: no exception for either.
    for auth in (cast.writer_b.auth, server.admin_auth):
        with server.client(auth=auth) as other:
            answers = _attempts(other, location)
            for method, resp in answers.items():
                assert resp.status_code == 404, (auth[0], method, resp.text)
                assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
            # Exactly what an upload id that does not exist answers: no oracle.
            baseline = _attempts(other, unknown)
            unknown_id = unknown.rsplit("/", 1)[-1]
            for method, resp in answers.items():
                assert _shape(resp, upload_id) == _shape(baseline[method], unknown_id), method
    # Nothing the others sent changed the upload; its owner finishes it.
    with server.client(auth=cast.writer_a.auth) as a:
        r = a.get(location)
        assert r.status_code == 204
        assert r.headers["Range"] == "0-99"
        rest = b"B" * 50
        r = a.put(location, params={"digest": sha256(first + rest)}, content=rest)
        assert r.status_code == 201, r.text
        r = a.get(f"/v2/{cast.shared}/blobs/{sha256(first + rest)}")
        assert r.content == first + rest


def test_an_upload_belongs_to_the_user_whatever_the_credential(cast: Cast) -> None:
    """Started with Basic credentials, continued with a registry token of the same user;
    the other writer's token with push on the repository still cannot touch it."""
    server = cast.server
    scope = f"repository:{cast.shared}:pull,push"
    with server.client(auth=cast.writer_a.auth) as a:
        location = _start(a, cast.shared)
    with bearer_client(server, token_for(server, cast.writer_b.auth, scope)) as b:
        assert b.get(location).status_code == 404
        assert b.patch(location, content=b"x", headers=OCTET).status_code == 404
    with bearer_client(server, token_for(server, cast.writer_a.auth, scope)) as a:
        assert a.patch(location, content=b"abc", headers=OCTET).status_code == 202
        r = a.put(location, params={"digest": sha256(b"abc")})
        assert r.status_code == 201, r.text


def test_the_owner_cannot_continue_an_upload_in_another_repository(cast: Cast) -> None:
    """An upload id is bound to its repository: neither a user with push on another
    repository nor the upload's own starter can reach it through that other one."""
    server = cast.server
    with server.client(auth=cast.writer_a.auth) as a:
        location = _start(a, cast.shared)
    upload_id = location.rsplit("/", 1)[-1]
    # The outsider has push on their own repository, not on the shared one.
    with server.client(auth=cast.outsider.auth) as out:
        for resp in _attempts(out, f"/v2/{cast.own}/blobs/uploads/{upload_id}").values():
            assert resp.status_code == 404, resp.text
            assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    # writer_a through a repository of their own namespace.
    mine = f"{cast.writer_a.name}/elsewhere"
    with server.client(auth=cast.writer_a.auth) as a:
        push_blob(a, mine, b"seed " + os.urandom(8))
        for resp in _attempts(a, f"/v2/{mine}/blobs/uploads/{upload_id}").values():
            assert resp.status_code == 404, resp.text
        assert a.get(location).status_code == 204  # still there, untouched


def test_mount_from_an_unreadable_repository_is_an_upload(cast: Cast) -> None:
    server = cast.server
    blob_url = f"/v2/{cast.own}/blobs/{cast.secret_digest}"
    params = {"mount": cast.secret_digest, "from": cast.source}
    with server.client(auth=cast.outsider.auth) as out:
        r = out.post(f"/v2/{cast.own}/blobs/uploads/", params=params)
        assert r.status_code == 202, r.text  # an upload session, not a mount
        assert "/blobs/uploads/" in r.headers["Location"]
        assert out.head(blob_url).status_code == 404
        assert out.get(blob_url).status_code == 404
    # Through the token flow: the token does not get pull on the source, and the mount
    # is refused the same way.
    token = token_for(
        server,
        cast.outsider.auth,
        f"repository:{cast.own}:pull,push",
        f"repository:{cast.source}:pull",
    )
    with bearer_client(server, token) as out:
        r = out.post(f"/v2/{cast.own}/blobs/uploads/", params=params)
        assert r.status_code == 202, r.text
        assert out.head(blob_url).status_code == 404


def test_mount_from_a_readable_repository_links_the_blob(registry: RegistryProcess) -> None:
    """The positive case of the test above: read access on the source is what counts."""
    source, reader = unique_name("src") + "/repo", new_user(registry, unique_name("rd"))
    data = os.urandom(300)
    with registry.client() as admin:
        digest = push_blob(admin, source, data)
    grant_user(registry, source, reader, "read")
    target = f"{reader.name}/copy"
    with registry.client(auth=reader.auth) as c:
        r = c.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/{target}/blobs/{digest}").content == data


def test_blob_linked_only_elsewhere_is_unknown_here(cast: Cast) -> None:
    """HEAD/GET of a digest whose bytes exist, but only in another repository, is 404
    even for callers with read on this repository (and for the superuser)."""
    server = cast.server
    url = f"/v2/{cast.shared}/blobs/{cast.secret_digest}"
    for auth in (cast.writer_a.auth, server.admin_auth):
        with server.client(auth=auth) as c:
            assert c.head(url).status_code == 404
            r = c.get(url)
            assert r.status_code == 404
            assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            assert cast.secret not in r.content
            ranged = c.get(url, headers={"Range": "bytes=0-10"})
            assert ranged.status_code == 404


def test_automatic_mount_never_links_from_unreadable_repositories(cast: Cast) -> None:
    server = cast.server
    blob_url = f"/v2/{cast.own}/blobs/{cast.secret_digest}"
    with server.client(auth=cast.outsider.auth) as out:
        r = out.post(f"/v2/{cast.own}/blobs/uploads/", params={"mount": cast.secret_digest})
        assert r.status_code == 202, r.text
        assert out.head(blob_url).status_code == 404
    # A monolithic upload with the digest but other bytes does not link it either.
    with server.client(auth=cast.outsider.auth) as out:
        r = out.post(
            f"/v2/{cast.own}/blobs/uploads/",
            params={"digest": cast.secret_digest},
            content=b"not the secret",
            headers=OCTET,
        )
        assert r.status_code == 400
        assert out.head(blob_url).status_code == 404


def test_automatic_mount_from_a_readable_repository(registry: RegistryProcess) -> None:
    source, reader = unique_name("asrc") + "/repo", new_user(registry, unique_name("ar"))
    data = os.urandom(300)
    with registry.client() as admin:
        digest = push_blob(admin, source, data)
    target = f"{reader.name}/auto"
    with registry.client(auth=reader.auth) as c:
        r = c.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
        assert r.status_code == 202  # no read on the only holder yet
        grant_user(registry, source, reader, "read")
        r = c.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/{target}/blobs/{digest}").content == data


def test_catalog_lists_only_what_the_caller_can_read(cast: Cast) -> None:
    server = cast.server
    public = unique_name("pub") + "/open"
    with server.client() as admin:
        push_blob(admin, public, b"public seed " + os.urandom(8))
    make_public(server, public)
    with server.client(auth=None) as anonymous:  # challenged, then with a token
        r = anonymous.get("/v2/_catalog")
        assert r.status_code == 401
        assert 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    with bearer_client(server, token_for(server, None, "registry:catalog:*")) as anonymous:
        seen = set(catalog(anonymous))
    assert public in seen
    assert not seen & {cast.shared, cast.source, cast.own}
    with server.client(auth=cast.outsider.auth) as out:
        seen = set(catalog(out))
    assert {public, cast.own} <= seen
    assert not seen & {cast.shared, cast.source}
    with server.client(auth=cast.writer_a.auth) as a:
        seen = set(catalog(a))
    assert {public, cast.shared} <= seen
    assert not seen & {cast.source, cast.own}
    with server.client() as admin:
        assert {public, cast.shared, cast.source, cast.own} <= set(catalog(admin))


def test_catalog_with_a_token(cast: Cast) -> None:
    server = cast.server
    without = token_for(server, cast.outsider.auth, f"repository:{cast.own}:pull")
    with bearer_client(server, without) as c:
        r = c.get("/v2/_catalog")
    assert r.status_code == 401
    assert 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # registry:catalog with another action than `*` is in the token, with no actions:
    # that grants nothing either.
    pull_only = token_for(server, cast.outsider.auth, "registry:catalog:pull")
    with bearer_client(server, pull_only) as c:
        assert c.get("/v2/_catalog").status_code == 401
    with_scope = token_for(server, cast.outsider.auth, "registry:catalog:*")
    with bearer_client(server, with_scope) as c:
        seen = set(catalog(c))
    assert cast.own in seen
    assert not seen & {cast.shared, cast.source}
    anonymous = token_for(server, None, "registry:catalog:*")
    with bearer_client(server, anonymous) as c:
        assert not set(catalog(c)) & {cast.shared, cast.source, cast.own}
