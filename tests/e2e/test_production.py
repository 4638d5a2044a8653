"""Real clients against the production deployment: three replicas on PostgreSQL, S3
(SeaweedFS) and Redis behind nginx (the session fixture `production`,
tests/support/production.py). The clients know only the balancer's address; the token
challenge sends them to the balancer's token endpoint (`auth.realm`), and round-robin
spreads each client's requests (token, blob uploads and their PATCHes, manifests) over
the replicas.

- skopeo: the multi-arch index (amd64 + arm64) copied in with `--all` and back out into
  a fresh OCI layout, every manifest and blob byte-identical;
- podman: an image pulled through the balancer, run, pushed under another name, removed
  and pulled back, digest unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.production import ProductionDeployment

from .conftest import ContainersEnv, OciLayout, Skopeo
from .helpers import HELLO_TEXT, OCI_INDEX, RegistryHTTP, manifest_blobs, read_digestfile

pytestmark = pytest.mark.e2e

INSECURE = "--tls-verify=false"  # plain HTTP on loopback; the balancer is not in registries.conf


@pytest.fixture(scope="module")
def prod_http(production: ProductionDeployment) -> RegistryHTTP:
    return RegistryHTTP(production.url, auth=production.admin_auth)


@pytest.fixture(scope="module")
def prod_skopeo(
    production: ProductionDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Skopeo:
    """skopeo logged in to the balancer (an auth file of its own)."""
    client = Skopeo.isolated(tmp_path_factory.mktemp("skopeo-production"))
    out = client.login(production.host, *production.admin_auth)
    assert "Login Succeeded" in out.stdout, out.stdout + out.stderr
    return client


def assert_same_image(layout: OciLayout, original: OciLayout, digest: str) -> None:
    """`layout` holds the manifest `digest` and its blobs, byte-identical to `original`."""
    body = layout.blob(digest)  # OciLayout.blob verifies the digest of what it reads
    assert body == original.blob(digest)
    for desc in manifest_blobs(json.loads(body)):
        assert layout.blob(desc["digest"]) == original.blob(desc["digest"])


def test_skopeo_copies_a_multi_arch_image_in_and_out(
    production: ProductionDeployment,
    prod_http: RegistryHTTP,
    prod_skopeo: Skopeo,
    oci_layout: OciLayout,
    tmp_path: Path,
) -> None:
    host, name = production.host, "e2e/production-multi"
    src = oci_layout.descriptor("multi")
    digestfile = tmp_path / "digest"
    logged = len(production.front.access_entries())
    prod_skopeo(
        "copy",
        "--all",
        "--quiet",
        "--dest-tls-verify=false",
        "--digestfile",
        str(digestfile),
        oci_layout.ref("multi"),
        f"docker://{host}/{name}:v1",
    )
    assert read_digestfile(digestfile) == src["digest"]
    # skopeo asked the balancer for its token (the realm), and its requests were spread
    # over every replica (upstream "-": nginx answered itself, to skopeo's first try at
    # HTTPS on this plain HTTP port).
    entries = production.front.access_entries()[logged:]
    assert any(line.startswith("GET /v2/auth?") and status == 200 for line, status, _ in entries)
    upstreams = {upstream for _, _, upstream in entries if upstream != "-"}
    assert upstreams == {r.host for r in production.replicas}

    # Every replica serves it (not only the one that took the manifest).
    for replica in production.replicas:
        direct = RegistryHTTP(replica.url, auth=production.admin_auth)
        served = direct.get_manifest(name, "v1", accept=(OCI_INDEX,))
        assert served.digest == src["digest"] and served.body == oci_layout.blob(src["digest"])
    index = prod_http.get_manifest(name, "v1", accept=(OCI_INDEX,)).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]

    back = OciLayout(tmp_path / "back")
    prod_skopeo(
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{host}/{name}:v1",
        f"oci:{back.path}:v1",
    )
    assert back.descriptor("v1")["digest"] == src["digest"]
    assert back.blob(src["digest"]) == oci_layout.blob(src["digest"])
    for child in index["manifests"]:
        assert_same_image(back, oci_layout, child["digest"])


def test_podman_pulls_pushes_and_pulls_back(
    production: ProductionDeployment,
    prod_http: RegistryHTTP,
    prod_skopeo: Skopeo,
    oci_layout: OciLayout,
    containers_env: ContainersEnv,
    tmp_path: Path,
) -> None:
    host, cenv = production.host, containers_env
    authfile = tmp_path / "podman-auth.json"
    authfile.write_text('{"auths": {}}\n')
    user, secret = production.admin_auth
    login = cenv.podman(
        "login",
        INSECURE,
        "--username",
        user,
        "--password-stdin",
        host,
        input=secret + "\n",
        authfile=authfile,
    )
    assert "Login Succeeded" in login.stdout, login.stdout + login.stderr

    base = f"{host}/e2e/production-busybox:1.35"
    prod_skopeo(
        "copy", "--quiet", "--dest-tls-verify=false", oci_layout.ref("busybox"), f"docker://{base}"
    )
    cenv.podman("pull", "--quiet", INSECURE, base, authfile=authfile)
    run = cenv.podman("run", "--rm", base, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT

    target = f"{host}/e2e/production-podman:v1"
    cenv.podman("tag", base, target)
    digestfile = tmp_path / "digest"
    cenv.podman(
        "push", "--quiet", INSECURE, "--digestfile", str(digestfile), target, authfile=authfile
    )
    digest = read_digestfile(digestfile)
    served = prod_http.get_manifest("e2e/production-podman", "v1")
    assert served.digest == digest
    for desc in manifest_blobs(served.json()):
        assert len(prod_http.get_blob("e2e/production-podman", desc["digest"])) == desc["size"]

    cenv.podman("rmi", "--force", target, base)
    cenv.podman("pull", "--quiet", INSECURE, target, authfile=authfile)
    # The same image may also be known under other names from other tests (one storage).
    assert f"{host}/e2e/production-podman@{digest}" in json.loads(
        cenv.podman("image", "inspect", "--format", "{{json .RepoDigests}}", target).stdout
    )
    run = cenv.podman("run", "--rm", target, "cat", "/hello.txt")
    assert run.stdout == HELLO_TEXT
    cenv.podman("rmi", "--force", target)
