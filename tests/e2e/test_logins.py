"""Issue 4, acceptance 2: docker, podman and skopeo log in with each kind of credential
and push and pull exactly as the permissions say.

The credentials: a user's password, a robot's token (`<user>+<robot>`), an app-specific
token (user name `$app`, as on Quay) and the encrypted CLI password (the user's own name).
Each client logs in with its own command into a credentials file of the test's own, then
goes through the token flow as it does against Quay: the registry answers 401 with a Bearer
challenge, the client asks GET /v2/auth (Basic credentials, its scopes) and sends the JWT.
The audit log shows it: a `token_issued` entry per token, with who asked, how they proved
it (`auth`: password, robot_token, app_token, cli_key), the client's user agent and the
access granted, which is what was asked for intersected with what is allowed.

Accounts are made with the `cargohold user create` CLI; everything else the way a user
would, over the REST API, signed in with a session cookie (changes carry its CSRF token):
robots, repository permissions, visibility, app tokens, the encrypted password."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.support.identity import Account, create_user, unique_name
from tests.support.server import ADMIN_PASSWORD, ADMIN_USER, RegistryProcess

from .conftest import BaseImage, ContainersEnv, Dockerd, OciLayout, Skopeo
from .helpers import RegistryHTTP, wait_until

pytestmark = pytest.mark.e2e

#: What a client prints when the registry refuses a push or a pull (401 or 403).
REFUSED = re.compile(r"denied|unauthorized", re.IGNORECASE)
#: ... and a login (docker: "unauthorized: invalid username or password"; podman and
#: skopeo: "invalid username/password").
LOGIN_REFUSED = re.compile(r"unauthorized|invalid username/password", re.IGNORECASE)


# ---------------------------------------------------------------------------------------
# The accounts, their credentials and repositories, made over the REST API
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    kind: str  # password | robot | app_token | cli_password
    username: str  # what the client's `login` is given
    secret: str
    performer: str  # whom the registry sees: the audit log's performer
    method: str  # the audit log's `auth`: how the principal proved who it is


@dataclass
class World:
    alice: Account
    bob: Account
    credentials: dict[str, Credential]
    revoked: Credential  # alice's app token, revoked
    public: str  # bob's public repository (namespace/name:tag)
    private: str  # bob's private repository
    shared: str  # alice's private repository, which her robot may read
    logs: Callable[[datetime], list[dict[str, Any]]]  # token_issued entries since then


def expect(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:2000]}"
    )
    body: dict[str, Any] = resp.json() if resp.content else {}
    return body


@pytest.fixture(scope="module")
def world(
    registry: RegistryProcess, oci_layout: OciLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    alice = create_user(registry, unique_name("alice"))
    bob = create_user(registry, unique_name("bob"))
    host = registry.host
    public, private = f"{bob.name}/public:v1", f"{bob.name}/private:v1"
    shared = f"{alice.name}/shared:v1"

    # each owner pushes their repositories (new repositories are private)
    for owner, refs in ((bob, (public, private)), (alice, (shared,))):
        pusher = Skopeo.isolated(tmp_path_factory.mktemp(f"seed-{owner.name}"))
        pusher.login(host, *owner.auth)
        for ref in refs:
            pusher(
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                oci_layout.ref("busybox"),
                f"docker://{host}/{ref}",
            )

    clients: list[httpx.Client] = []

    def signed_in(user: str, password: str) -> httpx.Client:
        """An API client with the session cookie of a sign-in, sending its CSRF token."""
        client = registry.client(auth=None)
        clients.append(client)
        body = expect(
            client.post("/api/v1/signin", json={"username": user, "password": password}), 200
        )
        client.headers["X-CSRF-Token"] = body["csrf_token"]
        return client

    try:
        # Bob makes one repository public.
        bob_api = signed_in(*bob.auth)
        expect(
            bob_api.post(
                f"/api/v1/repository/{public.split(':')[0]}/changevisibility",
                json={"visibility": "public"},
            ),
            200,
        )

        alice_api = signed_in(*alice.auth)
        # A robot that may read alice/shared, and nothing else.
        robot = expect(alice_api.put("/api/v1/user/robots/reader", json={}), 201)
        assert robot["name"] == f"{alice.name}+reader"
        expect(
            alice_api.put(
                f"/api/v1/repository/{shared.split(':')[0]}/permissions/user/{robot['name']}",
                json={"role": "read"},
            ),
            200,
        )
        # App tokens without API scopes: passwords for the registry only. One is revoked
        # after it was used (so a cache of verified credentials cannot hide the revocation).
        app = expect(alice_api.post("/api/v1/user/apptoken", json={"title": "ci"}), 201)
        gone = expect(alice_api.post("/api/v1/user/apptoken", json={"title": "old"}), 201)
        with registry.client(auth=("$app", gone["token"]["token_code"])) as used:
            assert expect(used.get("/v2/auth"), 200)["token"]
            expect(alice_api.delete(f"/api/v1/user/apptoken/{gone['token']['id']}"), 204)
            assert used.get("/v2/auth").status_code == 401

        # The encrypted CLI password (asking for it takes the password again).
        key = expect(
            alice_api.post("/api/v1/user/clientkey", json={"password": alice.password}), 200
        )["key"]
        assert key != alice.password

        admin_api = signed_in(ADMIN_USER, ADMIN_PASSWORD)

        def logs(since: datetime) -> list[dict[str, Any]]:
            params: dict[str, str | int] = {
                "kinds": "token_issued",
                "starttime": since.isoformat(),
                "limit": 1000,
            }
            entries: list[dict[str, Any]] = expect(
                admin_api.get("/api/v1/superuser/logs", params=params), 200
            )["logs"]
            return entries

        credentials = [
            Credential("password", alice.name, alice.password, alice.name, "password"),
            Credential("robot", robot["name"], robot["token"], robot["name"], "robot_token"),
            Credential("app_token", "$app", app["token"]["token_code"], alice.name, "app_token"),
            Credential("cli_password", alice.name, key, alice.name, "cli_key"),
        ]
        yield World(
            alice=alice,
            bob=bob,
            credentials={c.kind: c for c in credentials},
            revoked=Credential(
                "app_token", "$app", gone["token"]["token_code"], alice.name, "app_token"
            ),
            public=public,
            private=private,
            shared=shared,
            logs=logs,
        )
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------------------
# The three clients behind one face: log in, push the busybox image, pull an image
# ---------------------------------------------------------------------------------------


class LoginClient(Protocol):
    name: str
    user_agent: str  # how its requests start their User-Agent

    def login(self, credential: Credential) -> subprocess.CompletedProcess[str]: ...

    def push(self, ref: str) -> subprocess.CompletedProcess[str]: ...

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]: ...


@dataclass
class DockerClient:
    """`docker login` into a DOCKER_CONFIG of the test's own; pushes the busybox image
    that the session's (superuser) configuration pulled."""

    dockerd: Dockerd
    host: str
    config: Path
    image: str
    name: str = "docker"
    user_agent: str = "docker/"

    def login(self, credential: Credential) -> subprocess.CompletedProcess[str]:
        return self.dockerd.login(
            self.host, credential.username, credential.secret, config=self.config, check=False
        )

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        target = f"{self.host}/{ref}"
        self.dockerd.docker("tag", self.image, target)
        try:
            return self.dockerd.docker("push", target, config=self.config, check=False)
        finally:
            self.dockerd.docker("rmi", target)  # the name only: the image has others

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        target = f"{self.host}/{ref}"
        done = self.dockerd.docker("pull", target, config=self.config, check=False)
        if done.returncode == 0:
            self.dockerd.docker("rmi", target)
        return done


@dataclass
class PodmanClient:
    """`podman login --authfile` of the test's own (podman and the session share storage)."""

    cenv: ContainersEnv
    host: str
    authfile: Path
    image: str
    name: str = "podman"
    user_agent: str = "containers/"

    def login(self, credential: Credential) -> subprocess.CompletedProcess[str]:
        return self.cenv.login(
            self.host, credential.username, credential.secret, authfile=self.authfile, check=False
        )

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.cenv.podman(
            "push",
            "--quiet",
            self.image,
            f"docker://{self.host}/{ref}",
            authfile=self.authfile,
            check=False,
        )

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        target = f"{self.host}/{ref}"
        done = self.cenv.podman("pull", "--quiet", target, authfile=self.authfile, check=False)
        if done.returncode == 0:
            # the name only (the image has others): the session's storage stays as it was
            self.cenv.podman("rmi", target)
        return done


@dataclass
class SkopeoClient:
    """`skopeo login --authfile`; copies the busybox OCI layout in, images out to dirs."""

    skopeo: Skopeo
    host: str
    layout: OciLayout
    out: Path
    name: str = "skopeo"
    user_agent: str = "skopeo/"

    def login(self, credential: Credential) -> subprocess.CompletedProcess[str]:
        return self.skopeo.login(self.host, credential.username, credential.secret, check=False)

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.skopeo.run(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            self.layout.ref("busybox"),
            f"docker://{self.host}/{ref}",
            check=False,
        )

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        target = self.out / f"pulled-{len(list(self.out.iterdir()))}"
        return self.skopeo.run(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{self.host}/{ref}",
            f"dir:{target}",
            check=False,
        )


CLIENTS = ("docker", "podman", "skopeo")


@pytest.fixture(params=CLIENTS)
def login_client(
    request: pytest.FixtureRequest, registry: RegistryProcess, tmp_path: Path
) -> LoginClient:
    """Each client, with credentials files of this test's own (empty: not logged in)."""
    host = registry.host
    if request.param == "docker":
        dockerd: Dockerd = request.getfixturevalue("dockerd")
        base: BaseImage = request.getfixturevalue("base_image")
        dockerd.docker("pull", "--quiet", base.ref)  # as the superuser, for the pushes
        return DockerClient(dockerd, host, tmp_path / "docker-config", base.ref)
    if request.param == "podman":
        cenv: ContainersEnv = request.getfixturevalue("containers_env")
        base = request.getfixturevalue("base_image")
        cenv.podman("pull", "--quiet", base.ref)
        return PodmanClient(cenv, host, tmp_path / "auth.json", base.ref)
    layout: OciLayout = request.getfixturevalue("oci_layout")
    (tmp_path / "pulled").mkdir()
    return SkopeoClient(Skopeo.isolated(tmp_path / "skopeo"), host, layout, tmp_path / "pulled")


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


def allowed(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, output(done)


def refused(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode != 0, output(done)
    assert REFUSED.search(done.stdout + done.stderr), output(done)


def logged_in(client: LoginClient, credential: Credential) -> None:
    done = client.login(credential)
    assert done.returncode == 0 and "Login Succeeded" in done.stdout, output(done)


def tokens_issued(
    world: World, since: datetime, client: LoginClient, credential: Credential, wanted: set[str]
) -> list[dict[str, Any]]:
    """The `token_issued` entries since `since` for this client (its user agent), this
    principal and this kind of credential (`auth`), once every access line in `wanted`
    (e.g. "repository:alice/x:pull,push") shows up in one of them: each of the client's
    requests was made with a token issued for this credential. (Entries are written
    within a second of the request.)"""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [
            e
            for e in world.logs(since)
            if e["performer"]["name"] == credential.performer
            and e["metadata"].get("auth") == credential.method
            and (e["user_agent"] or "").startswith(client.user_agent)
        ]
        granted = {line for e in found for line in e["metadata"]["access"]}
        return wanted <= granted

    wait_until(seen, timeout=15, interval=0.3, what=f"token_issued entries with {wanted}")
    return found


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "app_token", "cli_password"])
def test_user_credential(
    kind: str, login_client: LoginClient, world: World, registry_http: RegistryHTTP
) -> None:
    """A user's credential: push to their own namespace (the repository is created), pull
    another user's public repository; not push into another user's namespace, nor pull
    their private repository."""
    credential = world.credentials[kind]
    client = login_client
    since = now()
    logged_in(client, credential)

    own = f"{world.alice.name}/{client.name}-{kind}:v1"
    allowed(client.push(own))
    assert registry_http.head_manifest(own.split(":")[0], "v1").status_code == 200
    allowed(client.pull(world.public))

    theirs = f"{world.bob.name}/{client.name}-{kind}:v1"
    refused(client.push(theirs))
    assert registry_http.head_manifest(theirs.split(":")[0], "v1").status_code == 404
    refused(client.pull(world.private))

    own_repo, theirs_repo = own.split(":")[0], theirs.split(":")[0]
    public_repo, private_repo = world.public.split(":")[0], world.private.split(":")[0]
    entries = tokens_issued(
        world,
        since,
        client,
        credential,
        {
            f"repository:{own_repo}:pull,push",  # their namespace: created on push
            f"repository:{public_repo}:pull",
            f"repository:{theirs_repo}:",  # asked for pull,push: nothing granted
            f"repository:{private_repo}:",
        },
    )
    assert {e["performer"]["kind"] for e in entries} == (
        {"user"} if kind == "password" else {"token"}
    ), entries


def test_robot_token(login_client: LoginClient, world: World) -> None:
    """A robot with read permission on one repository pulls it, and cannot push to it."""
    credential = world.credentials["robot"]
    client = login_client
    since = now()
    logged_in(client, credential)
    allowed(client.pull(world.shared))
    refused(client.push(f"{world.shared.split(':')[0]}:robot-{client.name}"))
    refused(client.pull(world.private))

    shared_repo = world.shared.split(":")[0]
    entries = tokens_issued(
        world,
        since,
        client,
        credential,
        {f"repository:{shared_repo}:pull", f"repository:{world.private.split(':')[0]}:"},
    )
    assert {e["performer"]["kind"] for e in entries} == {"robot"}, entries
    granted = {line for e in entries for line in e["metadata"]["access"]}
    assert not any("push" in line.rsplit(":", 1)[1] for line in granted), granted


def test_revoked_app_token_cannot_log_in(login_client: LoginClient, world: World) -> None:
    done = login_client.login(world.revoked)
    assert done.returncode != 0, output(done)
    assert LOGIN_REFUSED.search(done.stdout + done.stderr), output(done)
    assert "Login Succeeded" not in done.stdout


def test_anonymous_is_challenged_to_the_token_endpoint(registry: RegistryProcess) -> None:
    """What every client above first sees: GET /v2/ without credentials is 401 with a
    Bearer challenge naming the token endpoint and the service."""
    with registry.client(auth=None) as anonymous:
        resp = anonymous.get("/v2/")
    assert resp.status_code == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert f'realm="{registry.url}/v2/auth"' in challenge, challenge
    assert 'service="' in challenge, challenge
