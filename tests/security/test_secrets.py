"""Secrets never logged or returned after creation (SECURITY.md 1.9).

One test uses every kind of secret a user has (password, app tokens, the encrypted CLI
password, a robot token, registry tokens, a session cookie) and a wrong password, on the
registry and on the API, then looks for each of them in the server's log, in every audit
row, in every later answer and in the database files."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid

import httpx

from tests.security.registry_support import (
    SERVICE,
    audit_rows,
    last_audit_id,
    query,
    wait_for_audit,
)
from tests.support.identity import app_token, bearer, create_user, unique_name
from tests.support.server import RegistryProcess

API_SCOPES = ("user:admin", "user:read", "repo:create")


def _basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def _forms(secret: str) -> set[str]:
    """A secret and the encodings a careless log line could hold it in."""
    return {secret, json.dumps(secret)[1:-1], base64.b64encode(secret.encode()).decode()}


def test_secrets_are_never_logged_or_returned(registry: RegistryProcess) -> None:
    server = registry
    start = last_audit_id(server)
    marker = uuid.uuid4().hex
    password = f"Pw-{marker}-{secrets.token_hex(8)}"
    wrong = f"Wrong-{marker}-{secrets.token_hex(8)}"
    user = create_user(server, unique_name("sec"), password)
    repo = f"{user.name}/app"
    cli_token = app_token(server, user.name, scopes=API_SCOPES, name="secrets test")
    shown: dict[str, str] = {"password": password, "wrong": wrong, "cli app token": cli_token}
    answers: list[httpx.Response] = []  # everything answered after the secrets existed

    with server.client(auth=None, headers=bearer(cli_token)) as api:
        r = api.post("/api/v1/user/apptoken", json={"title": "api token", "scopes": []})
        assert r.status_code == 201, r.text
        shown["api app token"] = r.json()["token"]["token_code"]
        token_id = r.json()["token"]["uuid"]
        r = api.post("/api/v1/user/clientkey", json={"password": password})
        assert r.status_code == 200, r.text
        shown["cli password"] = r.json()["key"]
        shortname = "bot" + secrets.token_hex(4)
        r = api.put(f"/api/v1/user/robots/{shortname}", json={"description": "secrets"})
        assert r.status_code == 201, r.text
        robot, robot_token = r.json()["name"], r.json()["token"]
        shown["robot token"] = robot_token
        r = api.post("/api/v1/user/clientkey", json={"password": wrong})
        assert r.status_code == 403
        answers.append(r)

    logins = [
        (user.name, password),
        ("$app", shown["cli app token"]),
        (user.name, shown["api app token"]),
        (user.name, shown["cli password"]),
        (robot, robot_token),
    ]
    with server.client(auth=None) as c:
        for name, secret in logins:
            answers.append(r := c.get("/v2/", headers={"Authorization": _basic(name, secret)}))
            assert r.status_code == 200, (name, r.text)
            scope = f"repository:{repo}:pull,push"
            r = c.get(
                "/v2/auth",
                params={"service": SERVICE, "scope": scope},
                headers={"Authorization": _basic(name, secret)},
            )
            assert r.status_code == 200, (name, r.text)
            shown[f"registry token of {name}"] = jwt_token = r.json()["token"]
            r = c.get("/v2/", headers={"Authorization": f"Bearer {jwt_token}"})
            assert r.status_code == 200
            answers.append(r)
            r = c.post(
                "/v2/auth",
                data={
                    "grant_type": "password",
                    "username": name,
                    "password": secret,
                    "service": SERVICE,
                    "scope": scope,
                },
            )
            assert r.status_code == 200, (name, r.text)
            shown[f"oauth2 registry token of {name}"] = r.json()["token"]
        for name in (user.name, "$app", robot, "nobody-" + marker):
            answers.append(r := c.get("/v2/", headers={"Authorization": _basic(name, wrong)}))
            assert r.status_code == 401
            answers.append(r := c.get("/v2/auth", auth=(name, wrong)))
            assert r.status_code == 401
        answers.append(
            r := c.post("/api/v1/signin", json={"username": user.name, "password": wrong})
        )
        assert r.status_code == 401
        r = c.post("/api/v1/signin", json={"username": user.name, "password": password})
        assert r.status_code == 200, r.text
        shown["session cookie"] = r.cookies["cargohold_session"]
        shown["csrf token"] = r.json()["csrf_token"]

    # After creation, the API shows metadata only.
    with server.client(auth=None, headers=bearer(cli_token)) as api:
        for path in (
            "/api/v1/user/",
            "/api/v1/user/apptoken",
            f"/api/v1/user/apptoken/{token_id}",
            "/api/v1/user/robots",
            f"/api/v1/user/robots/{shortname}",
        ):
            r = api.get(path)
            assert r.status_code == 200, (path, r.text)
            answers.append(r)
    with server.client(auth=None) as c:
        r = c.get("/.well-known/jwks.json")
        answers.append(r)
        for key in r.json()["keys"]:
            assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private key published"

    # Logins and issued tokens reach the audit log through a queue: wait for the last.
    wait_for_audit(
        server,
        start,
        lambda rows: any(
            r["kind"] == "login_failure" and r["details"].get("username") == "nobody-" + marker
            for r in rows
        ),
    )
    time.sleep(1.0)  # and one more flush for anything queued after it
    audit_text = json.dumps(audit_rows(server, start))
    assert user.name in audit_text  # the rows are there; now the secrets must not be
    log_text = server.log_path.read_text(errors="replace")
    answer_text = "\n".join(
        f"{r.status_code} {json.dumps(dict(r.headers))} {r.text}" for r in answers
    )
    database = b"".join(
        path.read_bytes()
        for path in server.data_dir.iterdir()
        if path.name.startswith("cargohold.db")
    )
    leaks = []
    for what, secret in shown.items():
        if what == "csrf token":
            continue  # stored in the session row by design; it is not a credential
        for form in _forms(secret):
            for where, text in (("audit log", audit_text), ("server log", log_text)):
                if form in text:
                    leaks.append(f"{what} in the {where}")
            if form in answer_text:
                leaks.append(f"{what} in an answer after its creation")
            if form.encode() in database:
                leaks.append(f"{what} stored in the database")
    assert leaks == []
    # What is stored instead: an argon2id hash and SHA-256 digests; encrypted signing keys.
    stored = query(server, "SELECT password_hash FROM user_account WHERE username = ?", user.name)
    assert str(stored[0][0]).startswith("$argon2id$")
    for (private_key,) in query(server, "SELECT private_key FROM signing_key"):
        assert b"PRIVATE KEY" not in bytes(private_key)
