"""A real OpenID Connect provider on loopback for tests: npm `oidc-provider` run by Node.js.

`tests/support/oidc/server.mjs` is the provider; this module installs its npm packages (`npm ci`,
once, into `tests/support/oidc/node_modules`), writes its JSON config, runs it in its own process
group on a free 127.0.0.1 port and plays the browser for it with httpx::

    with OidcProvider(tmp_path, clients=[OidcClient("ui", "s3cret", [redirect_uri])],
                      accounts=[OidcAccount("u-1", "alice", "alice-pw", groups=["admins"])]) as op:
        authorize_url = ...  # where the relying party sends the browser
        with httpx.Client() as browser:
            redirect = op.login(browser, authorize_url, "alice", "alice-pw")
        # redirect == "<redirect_uri>?code=...&state=...&iss=<op.issuer>", not followed

The provider re-reads its config on every client or account lookup, so `add_client`,
`add_account` and the `accounts` setter also work while it runs (no restart).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import httpx

NODE_PROJECT = Path(__file__).resolve().parent / "oidc"
SERVER_SCRIPT = NODE_PROJECT / "server.mjs"

# The provider's cookie names (server.mjs `cookies.names`); Koa adds `<name>.sig` signature cookies.
PROVIDER_COOKIES = frozenset({"oidc_session", "oidc_interaction", "oidc_resume"})
MAX_REDIRECTS = 20


class OidcLoginError(RuntimeError):
    """The provider did not send the browser back to the relying party."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code


@dataclass
class OidcClient:
    """A relying party registered with the provider (confidential, authorization code flow)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    token_endpoint_auth_method: str = "client_secret_basic"  # or "client_secret_post"
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # any other client metadata

    def to_json(self) -> dict[str, Any]:
        return {
            **self.metadata,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
        }


@dataclass
class OidcAccount:
    """A user who can sign in with `username` and `password`. `username` is preferred_username."""

    sub: str
    username: str
    password: str
    email: str | None = None
    email_verified: bool = True
    groups: list[str] = field(default_factory=list)
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sub": self.sub,
            "username": self.username,
            "preferred_username": self.username,
            "password": self.password,
            "email_verified": self.email_verified,
            "groups": list(self.groups),
        }
        if self.email is not None:
            data["email"] = self.email
        if self.name is not None:
            data["name"] = self.name
        return data


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned_version() -> str:
    package = json.loads((NODE_PROJECT / "package.json").read_text())
    return str(package["dependencies"]["oidc-provider"])


def _installed_version() -> str | None:
    try:
        installed = json.loads(
            (NODE_PROJECT / "node_modules" / "oidc-provider" / "package.json").read_text()
        )
    except (OSError, ValueError):
        return None
    if not (NODE_PROJECT / "node_modules" / ".package-lock.json").is_file():
        return None  # an interrupted install
    return str(installed.get("version"))


def ensure_node_modules(timeout: float = 600.0) -> None:
    """Run `npm ci` in tests/support/oidc unless the pinned oidc-provider is installed there.

    Needs the npm registry (or npm's cache) the first time only. Serialized with a lock on
    package.json so parallel test processes do not install over each other.
    """
    if _installed_version() == _pinned_version():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError(
            "node and npm are needed for the OIDC provider: run scripts/install-system-deps.sh"
        )
    with open(NODE_PROJECT / "package.json", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() == _pinned_version():
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            cwd=NODE_PROJECT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 or _installed_version() != _pinned_version():
            raise RuntimeError(
                f"npm ci failed in {NODE_PROJECT} (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )


def _end_process_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds, and reap the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The leader may be gone while others in its group live on: SIGKILL the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class _Form:
    id: str
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _PageParser(HTMLParser):
    """Collects the forms of a page (with their input values) and its links that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, _Form] = {}
        self.links: dict[str, str] = {}
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = _Form(
                a.get("id", ""), a.get("action", ""), a.get("method", "get").upper()
            )
            self.forms[self._current.id] = self._current
        elif tag == "input" and "name" in a and a.get("type", "text") != "submit":
            owner = self.forms.get(a["form"]) if "form" in a else self._current
            if owner is not None:
                owner.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and "id" in a and "href" in a:
            self.links[a["id"]] = a["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _parse(response: httpx.Response) -> _PageParser:
    parser = _PageParser()
    if response.headers.get("content-type", "").startswith("text/html"):
        parser.feed(response.text)
        parser.close()
    return parser


def _describe(response: httpx.Response) -> str:
    body = response.text
    return f"HTTP {response.status_code} from {response.url}:\n{body[:1000]}"


class OidcProvider:
    """One oidc-provider process on 127.0.0.1 with the given clients and accounts.

    The port (and so `issuer`) is chosen when the object is made; should that port be taken by
    the time the provider starts, start() picks another one, so read `issuer` after start().
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        clients: Iterable[OidcClient] = (),
        accounts: Iterable[OidcAccount] = (),
        port: int | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="cargohold-oidc-")) if workdir is None else workdir
        )
        self.config_path = self.workdir / "oidc-provider.json"
        self.log_path = self.workdir / "oidc-provider.log"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._clients: dict[str, OidcClient] = {c.client_id: c for c in clients}
        self._accounts: list[OidcAccount] = list(accounts)
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- what the relying party needs --------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document."""
        response = httpx.get(self.discovery_url, timeout=10.0)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    # -- clients and accounts (live: the provider re-reads its config on each lookup) ----------

    @property
    def clients(self) -> list[OidcClient]:
        return list(self._clients.values())

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: Iterable[str],
        *,
        token_endpoint_auth_method: str = "client_secret_basic",
        post_logout_redirect_uris: Iterable[str] = (),
        **metadata: Any,
    ) -> OidcClient:
        """Register (or replace) a client; effective at once, also while the provider runs."""
        client = OidcClient(
            client_id,
            client_secret,
            list(redirect_uris),
            token_endpoint_auth_method=token_endpoint_auth_method,
            post_logout_redirect_uris=list(post_logout_redirect_uris),
            metadata=dict(metadata),
        )
        self._clients[client_id] = client
        self._write_config()
        return client

    @property
    def accounts(self) -> list[OidcAccount]:
        """A copy: assign to `accounts` (or call add_account) to change them."""
        return list(self._accounts)

    @accounts.setter
    def accounts(self, accounts: Iterable[OidcAccount]) -> None:
        self._accounts = list(accounts)
        self._write_config()

    def add_account(
        self,
        sub: str,
        username: str,
        password: str,
        *,
        email: str | None = None,
        email_verified: bool = True,
        groups: Iterable[str] = (),
        name: str | None = None,
    ) -> OidcAccount:
        account = OidcAccount(sub, username, password, email, email_verified, list(groups), name)
        self._accounts = [a for a in self._accounts if a.sub != sub] + [account]
        self._write_config()
        return account

    def _write_config(self) -> None:
        if self.proc is None and not self.config_path.parent.is_dir():
            return  # written by start()
        config = {
            "clients": [c.to_json() for c in self._clients.values()],
            "accounts": [a.to_json() for a in self._accounts],
        }
        fd, tmp = tempfile.mkstemp(prefix=".oidc-provider-", dir=self.workdir)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, self.config_path)

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        if self.proc is not None:
            return self
        ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found: run scripts/install-system-deps.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
        for attempt in range(5):
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [node, str(SERVER_SCRIPT), str(self.port), str(self.config_path)],
                    cwd=NODE_PROJECT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            # Ends the process group even if stop() is never called (finalized or at exit).
            self._finalizer = weakref.finalize(self, _end_process_group, self.proc)
            try:
                if self._wait_ready(timeout):
                    return self
            except BaseException:
                self.stop()
                raise
            address_in_use = "EADDRINUSE" in self.log_tail()
            self.stop()
            if not address_in_use or self._fixed_port or attempt == 4:
                break
            self.port = free_port()
        raise RuntimeError(f"oidc-provider did not start:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                response = httpx.get(self.discovery_url, timeout=1.0)
                if response.status_code == 200 and response.json().get("issuer") == self.issuer:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"oidc-provider did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """End the provider's process group: SIGTERM, then SIGKILL after 5 s."""
        if self._finalizer is not None:
            self._finalizer()  # runs _end_process_group once
            self._finalizer = None
        self.proc = None

    def close(self) -> None:
        """stop(), and remove the work directory if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- the browser's part ----------------------------------------------------------------

    def _is_provider_url(self, url: str) -> bool:
        target, own = urlsplit(url), urlsplit(self.issuer)
        return (target.scheme, target.hostname, target.port) == (own.scheme, own.hostname, own.port)

    def browse(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Response | str:
        """Request `url` as a browser would and follow redirects while they stay on the provider.

        Returns the first redirect target outside the provider (the relying party's, not
        requested), or the provider's first response that is not a redirect (a page).
        """
        for _ in range(MAX_REDIRECTS):
            response = client.request(method, url, data=data, follow_redirects=False)
            if not response.has_redirect_location:
                return response
            target = urljoin(str(response.url), response.headers["location"])
            if not self._is_provider_url(target):
                return target
            method, url, data = "GET", target, None
        raise OidcLoginError("too many redirects on the provider", response)

    def forget_session(self, client: httpx.Client) -> None:
        """Drop the provider's cookies from `client`: the next authorization needs a login."""
        host = urlsplit(self.issuer).hostname
        for cookie in list(client.cookies.jar):
            name = cookie.name.removesuffix(".sig")
            if name in PROVIDER_COOKIES and cookie.domain.lstrip(".") in (host, f"{host}.local"):
                client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)

    def login(
        self,
        client: httpx.Client,
        authorize_url: str,
        username: str,
        password: str,
        *,
        forget_session: bool = True,
    ) -> str:
        """Sign `username` in where the relying party sent the browser; return the way back.

        `client` is the browser (it keeps cookies; its redirect setting does not matter). This
        GETs `authorize_url`, follows the provider's redirects to its login form, posts `login`
        and `password`, follows on through the automatic consent, and returns the redirect to
        the client's redirect_uri without requesting it: `<redirect_uri>?code=..&state=..&iss=..`
        on success, or `?error=..` when the provider refused the authorization request itself
        (for example no PKCE code_challenge). Raises OidcLoginError when the credentials are
        rejected (`status_code` 401) or the provider shows an error page (400: a bad client_id
        or redirect_uri).

        With `forget_session=False` an existing provider session is reused as a browser would:
        then no form is shown and the session's user is signed in, whoever `username` is.
        """
        if forget_session:
            self.forget_session(client)
        result = self.browse(client, "GET", authorize_url)
        if isinstance(result, str):
            return result
        form = _parse(result).forms.get("login")
        if form is None:
            raise OidcLoginError(f"no login form: {_describe(result)}", result)
        fields = {**form.fields, "login": username, "password": password}
        result = self.browse(client, form.method, urljoin(str(result.url), form.action), fields)
        if isinstance(result, str):
            return result
        if result.status_code == 401:
            raise OidcLoginError(f"login rejected for {username!r}", result)
        raise OidcLoginError(f"login did not finish: {_describe(result)}", result)

    def deny(self, client: httpx.Client, authorize_url: str) -> str:
        """Like login(), but the user presses Cancel: returns `<redirect_uri>?error=access_denied`.

        Forgets the provider session first, like login().
        """
        self.forget_session(client)
        result = self.browse(client, "GET", authorize_url)
        if isinstance(result, str):
            return result
        abort = _parse(result).links.get("abort")
        if abort is None:
            raise OidcLoginError(f"no login form: {_describe(result)}", result)
        result = self.browse(client, "GET", urljoin(str(result.url), abort))
        if isinstance(result, str):
            return result
        raise OidcLoginError(f"cancel did not finish: {_describe(result)}", result)

    def logout(self, client: httpx.Client, end_session_url: str) -> str:
        """RP-initiated logout: confirm the provider's sign-out question.

        Returns the redirect to the post_logout_redirect_uri (not requested) if the request
        named one, else the URL of the provider's "signed out" page.
        """
        result = self.browse(client, "GET", end_session_url)
        if isinstance(result, str):
            return result
        form = _parse(result).forms.get("op.logoutForm")
        if form is None:
            raise OidcLoginError(f"no logout form: {_describe(result)}", result)
        fields = {**form.fields, "logout": "yes"}
        result = self.browse(client, form.method, urljoin(str(result.url), form.action), fields)
        if isinstance(result, str):
            return result
        if result.status_code != 200:
            raise OidcLoginError(f"logout did not finish: {_describe(result)}", result)
        return str(result.url)
