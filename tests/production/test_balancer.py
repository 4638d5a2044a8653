"""What a load balancer in front of the replicas changes for clients.

- The token challenge names the balancer (`auth.realm`), the token it hands out is
  accepted by every replica (they share the signing keys), and Locations are paths.
- A request refused before its body was read (401, 404, 413) gets its answer through
  nginx, which streams request bodies: the replica reads the rest of the body away before
  answering. Answered at once, the replica closed the connection under nginx while it was
  still sending, and the client got a 502 instead; nginx also counted that as the
  replica failing and took it out of the rotation (web/registry/drain.py).
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.api.helpers import assert_error
from tests.support.oci import OCI_MANIFEST, make_image, sha256, unique_repo
from tests.support.production import ProductionDeployment, served_by

MIB = 1024 * 1024
NO_SUCH_UPLOAD = "0f0f0f0f-0000-4000-8000-000000000000"


def bearer_client(production: ProductionDeployment, repo: str) -> httpx.Client:
    """A client holding a token from the realm the challenge names, as docker does."""
    with httpx.Client(timeout=30.0) as anonymous:
        r = anonymous.get(f"{production.url}/v2/")
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    realm = f"{production.url}/v2/auth"
    assert challenge.startswith(f'Bearer realm="{realm}",service="cargohold"'), challenge
    with httpx.Client(timeout=30.0, auth=production.admin_auth) as signing_in:
        answer = signing_in.get(
            realm, params={"service": "cargohold", "scope": f"repository:{repo}:pull,push"}
        )
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    return httpx.Client(
        base_url=production.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_token_from_the_balancers_realm_works_on_every_replica(
    production: ProductionDeployment,
) -> None:
    repo = unique_repo("token")
    image = make_image(layers=3)
    served: set[int] = set()
    with bearer_client(production, repo) as client:
        blobs = [image.config, *image.layers]
        for blob in blobs:
            r = client.post(f"/v2/{repo}/blobs/uploads/")
            assert r.status_code == 202, r.text
            served.add(served_by(r))
            location = r.headers["Location"]
            assert location.startswith(f"/v2/{repo}/blobs/uploads/")  # a path: any replica
            r = client.put(location, params={"digest": sha256(blob)}, content=blob)
            assert r.status_code == 201, r.text
            served.add(served_by(r))
        r = client.put(
            f"/v2/{repo}/manifests/v1",
            content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert r.headers["Location"] == f"/v2/{repo}/manifests/{image.digest}"
        for _ in production.replicas:
            r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == image.manifest
            served.add(served_by(r))
    assert served == {r.port for r in production.replicas}


@pytest.mark.parametrize("size", [MIB, 4 * MIB + 1])
def test_a_refused_request_with_a_body_gets_its_answer_through_the_balancer(
    production: ProductionDeployment, size: int
) -> None:
    repo = unique_repo("refused")
    body = os.urandom(size)
    with production.client() as client, httpx.Client(base_url=production.url) as anonymous:
        for _ in range(5):
            r = client.patch(f"/v2/{repo}/blobs/uploads/{NO_SUCH_UPLOAD}", content=body)
            assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
            r = anonymous.patch(f"/v2/{repo}/blobs/uploads/{NO_SUCH_UPLOAD}", content=body)
            assert_error(r, 401, "UNAUTHORIZED")
            assert r.headers["WWW-Authenticate"].startswith(
                f'Bearer realm="{production.url}/v2/auth"'
            )
            if size > 4 * MIB:  # registry.max_manifest_bytes, refused from Content-Length
                r = client.put(
                    f"/v2/{repo}/manifests/big",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert_error(r, 413, "SIZE_INVALID")
        # No replica was counted as failing: round-robin still reaches all of them.
        ports = {served_by(client.get("/v2/")) for _ in range(2 * len(production.replicas))}
    assert ports == {r.port for r in production.replicas}
