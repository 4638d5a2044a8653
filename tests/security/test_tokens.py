"""Registry tokens under attack (SECURITY.md 1.4): a JWT negative suite against /v2 with
Bearer, key removal, RSA keys left by older versions, and the token endpoint's scope
parsing and account handling.

Each forged token differs from a token the server accepts (the control case, signed with
the server's own ES256 key) in one flaw only, so a 401 means the flaw was caught."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.security.helpers import raw_request
from tests.security.registry_support import (
    SERVICE,
    access_of,
    b64,
    bearer_client,
    claims_of,
    fernet_of,
    grant_user,
    new_app_token,
    new_user,
    query,
    signing_key,
    token_for,
    unsigned,
    user_id,
    valid_claims,
)
from tests.support.identity import Account, unique_name
from tests.support.oci import push_blob
from tests.support.server import RegistryProcess


@dataclass
class Target:
    server: RegistryProcess
    reader: Account  # has read on `repo`, nothing on `other`
    repo: str
    other: str
    digest: str  # a blob in both

    def blob_url(self, repo: str | None = None) -> str:
        return f"/v2/{repo or self.repo}/blobs/{self.digest}"

    def claims(self, repo: str | None = None, **changes: Any) -> Any:
        access = [{"type": "repository", "name": repo or self.repo, "actions": ["pull"]}]
        return valid_claims(
            self.reader.name, user_id(self.server, self.reader.name), access, **changes
        )

    def status(self, token: str, repo: str | None = None) -> int:
        with bearer_client(self.server, token) as c:
            return c.get(self.blob_url(repo)).status_code


@pytest.fixture(scope="module")
def target(registry: RegistryProcess) -> Target:
    org = unique_name("tok")
    repo, other = f"{org}/app", f"{org}/other"
    data = os.urandom(64)
    with registry.client() as admin:
        digest = push_blob(admin, repo, data)
        push_blob(admin, other, data)
    reader = new_user(registry, unique_name("tr"))
    grant_user(registry, repo, reader, "read")
    token_for(registry, reader.auth)  # makes sure a signing key exists
    return Target(registry, reader, repo, other, digest)


def _sign(target: Target, claims: Any, **header: Any) -> str:
    kid, pem, _ = signing_key(target.server)
    headers = {"kid": kid, **header}
    return jwt.encode(claims, pem, algorithm="ES256", headers=headers)


def _attacker_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _attacker_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ec(pem: bytes) -> ec.EllipticCurvePrivateKey:
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return private


def _sign_by_hand(
    header: dict[str, Any],
    claims: Any,
    private: ec.EllipticCurvePrivateKey,
    digest: hashes.HashAlgorithm,
) -> str:
    """A JWS signed with ECDSA (raw r || s) whatever its header says: PyJWT will not write
    a kid that is not text, nor ES384 with a P-256 key."""
    signing_input = unsigned(header, claims)
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(digest)))
    size = (private.curve.key_size + 7) // 8
    return signing_input + "." + b64(r.to_bytes(size, "big") + s.to_bytes(size, "big"))


def _assert_refused(target: Target, token: str) -> None:
    with bearer_client(target.server, token) as c:
        r = c.get(target.blob_url())
    assert r.status_code == 401, r.text
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert 'error="invalid_token"' in challenge


def test_control_a_token_signed_with_our_key_is_accepted(target: Target) -> None:
    assert target.status(_sign(target, target.claims())) == 200
    issued = token_for(target.server, target.reader.auth, _pull(target.repo))
    kid, pem, public_jwk = signing_key(target.server)
    assert jwt.get_unverified_header(issued) == {"alg": "ES256", "typ": "JWT", "kid": kid}
    assert public_jwk["kty"] == "EC" and public_jwk["crv"] == "P-256"
    assert public_jwk["alg"] == "ES256" and public_jwk["use"] == "sig"
    assert target.status(issued) == 200
    # Hand-made signatures (used below to vary one header field) are good ones.
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    assert target.status(_sign_by_hand(header, target.claims(), _ec(pem), hashes.SHA256())) == 200


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def test_alg_none(target: Target) -> None:
    kid, _, _ = signing_key(target.server)
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": "JWT", "kid": kid}
        _assert_refused(target, unsigned(header, target.claims()) + ".")


def test_hmac_signed_with_the_public_key(target: Target) -> None:
    """Algorithm confusion: HS256 keyed with our public key (as PEM and as the JWKS
    entry), which a verifier passing the key without pinning ES256 would accept."""
    kid, _, public_jwk = signing_key(target.server)
    public = ECAlgorithm.from_jwk(public_jwk)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(public_jwk).encode()):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            signing_input = unsigned({"alg": alg, "typ": "JWT", "kid": kid}, target.claims())
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            _assert_refused(target, signing_input + "." + b64(mac))


def test_another_algorithm_for_our_kid(target: Target) -> None:
    """The algorithm is the one our key record names (ES256), never the header's: RS256 or
    PS256 with an attacker's RSA key, ES384 and ES512 over our own key, our own ES256
    signature under another or no name."""
    kid, pem, _ = signing_key(target.server)
    claims = target.claims()
    attacker = _pem(_attacker_rsa_key())
    for alg in ("RS256", "RS512", "PS256"):
        _assert_refused(target, jwt.encode(claims, attacker, algorithm=alg, headers={"kid": kid}))
    ours = _ec(pem)
    for alg, digest in (("ES384", hashes.SHA384()), ("ES512", hashes.SHA512())):
        header = {"alg": alg, "typ": "JWT", "kid": kid}
        _assert_refused(target, _sign_by_hand(header, claims, ours, digest))
    for named in ({"alg": "RS256"}, {"alg": "es256"}, {"alg": "ES256K"}, {"alg": ""}, {}):
        header = {**named, "typ": "JWT", "kid": kid}
        _assert_refused(target, _sign_by_hand(header, claims, ours, hashes.SHA256()))


def test_embedded_keys_are_not_trusted(target: Target) -> None:
    """A header bringing the attacker's own key (CVE-2025-24976), with our kid or none."""
    kid, _, _ = signing_key(target.server)
    attacker = _attacker_key()
    public_jwk = json.loads(ECAlgorithm.to_jwk(attacker.public_key()))
    public_jwk["kid"] = kid
    der = attacker.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    embedded: list[dict[str, Any]] = [
        {"jwk": public_jwk},
        {"jku": "http://127.0.0.1:9/jwks.json"},
        {"x5c": [b64(der)]},
        {"x5u": "http://127.0.0.1:9/cert.pem"},
    ]
    for extra in embedded:
        for kid_header in ({"kid": kid}, {}):
            headers = {**extra, **kid_header}
            token = jwt.encode(target.claims(), _pem(attacker), algorithm="ES256", headers=headers)
            _assert_refused(target, token)
        # The same header on a token our key signed is refused as well: the header is
        # the flaw, whatever the signature.
        _assert_refused(target, _sign(target, target.claims(), **extra))


def test_unknown_or_odd_key_ids(target: Target) -> None:
    kid, pem, _ = signing_key(target.server)
    attacker = _pem(_attacker_key())
    claims = target.claims()
    _assert_refused(target, jwt.encode(claims, attacker, "ES256", headers={"kid": kid}))
    for odd in ("no-such-key", "", "../../run/secret-key", "' OR 1=1 --", kid + "x"):
        _assert_refused(target, jwt.encode(claims, pem, "ES256", headers={"kid": odd}))
    for not_text in (7, None, [kid], {"kid": kid}):  # PyJWT will not write these: by hand
        header = {"alg": "ES256", "typ": "JWT", "kid": not_text}
        _assert_refused(target, _sign_by_hand(header, claims, _ec(pem), hashes.SHA256()))
    no_kid = jwt.encode(claims, pem, "ES256")
    assert "kid" not in jwt.get_unverified_header(no_kid)
    _assert_refused(target, no_kid)


def test_time_and_audience_claims(target: Target) -> None:
    now = int(time.time())
    flawed = [
        target.claims(exp=now - 10, iat=now - 400, nbf=now - 400),  # expired
        target.claims(nbf=now + 600),  # not yet valid
        target.claims(aud="another-registry"),
        target.claims(aud=["another-registry"]),
        target.claims(iss="https://attacker.example"),
        target.claims(exp=None),
        target.claims(aud=None),
        target.claims(iss=None),
        target.claims(sub=None),
    ]
    for claims in flawed:
        _assert_refused(target, _sign(target, claims))


def test_edited_access_claim_fails_the_signature(target: Target) -> None:
    token = token_for(target.server, target.reader.auth, _pull(target.repo))
    assert target.status(token) == 200
    header, _payload, signature = token.split(".")
    claims = claims_of(token)
    claims["access"] = [{"type": "repository", "name": target.other, "actions": ["pull"]}]
    edited = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    assert claims_of(edited)["access"][0]["name"] == target.other
    _assert_refused(target, edited)
    with bearer_client(target.server, edited) as c:
        assert c.get(target.blob_url(target.other)).status_code == 401
    # Flipping the superuser flag of our own claims is caught the same way.
    claims = claims_of(token)
    claims["ch"]["su"] = True
    _assert_refused(target, f"{header}.{b64(json.dumps(claims).encode())}.{signature}")


def test_a_token_for_one_repository_does_not_open_another(target: Target) -> None:
    token = token_for(target.server, target.reader.auth, _pull(target.repo))
    with bearer_client(target.server, token) as c:
        r = c.get(target.blob_url(target.other))
        assert r.status_code == 401
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        assert f'scope="repository:{target.other}:pull"' in r.headers["WWW-Authenticate"]
        # Nor push on the repository it grants pull on.
        r = c.post(f"/v2/{target.repo}/blobs/uploads/")
        assert r.status_code == 401
    # Asking for more than the user may do grants only what they may do.
    token = token_for(
        target.server,
        target.reader.auth,
        f"repository:{target.repo}:pull,push,delete,*",
        _pull(target.other),
    )
    access = access_of(token)
    assert access[f"repository:{target.repo}"] == {"pull"}
    assert access[f"repository:{target.other}"] == set()
    assert target.status(token, target.other) == 401


def test_malformed_bearer_values(target: Target) -> None:
    app = new_app_token(target.server, target.reader)
    for value in ("", "a", "a.b", "a.b.c", "..", "x" * 5000, app, "eyJ." * 3):
        header = f"Bearer {value}".strip()
        with target.server.client(auth=None, headers={"Authorization": header}) as c:
            r = c.get(target.blob_url())
        assert r.status_code == 401, (value[:20], r.text)


# -- the token endpoint ----------------------------------------------------------------


def test_scope_parsing_edge_cases(target: Target) -> None:
    server, auth = target.server, target.reader.auth
    malformed = [
        "repository",
        "repository:",
        "repository:" + target.repo,
        "repository::pull",
        ":::",
        "foo:bar:pull",
        "repository:" + target.repo + "pull",
        "registry:catalog",
    ]
    traversal = [
        "../etc/passwd",
        f"{target.repo}/..",
        f"{target.repo.split('/')[0]}/../{target.repo}",
        f"{target.repo.split('/')[0]}/%2e%2e/x",
        f"{target.repo.split('/')[0]}%2Fapp",
        "/" + target.repo,
        target.repo + "/",
        target.repo.replace("/", "//"),
        target.repo.upper(),
        target.repo + "\x00",
        target.repo + ":443",
    ]
    scopes = malformed + [f"repository:{name}:pull" for name in traversal]
    token = token_for(server, auth, *scopes)
    assert access_of(token) == {}
    # Good scopes around bad ones still work; repeated ones are merged.
    token = token_for(server, auth, _pull(target.repo), "repository::", _pull(target.repo))
    assert access_of(token) == {f"repository:{target.repo}": {"pull"}}
    assert len(claims_of(token)["access"]) == 1
    token = token_for(server, auth, "registry:catalog:*", "registry:other:*")
    assert access_of(token) == {"registry:catalog": {"*"}, "registry:other": set()}


def test_many_scopes_are_bounded(target: Target) -> None:
    server, auth = target.server, target.reader.auth
    ns = target.repo.split("/")[0]
    many = [f"repository:{ns}/r{i}:pull" for i in range(100)]
    token = token_for(server, auth, *many)
    assert 0 < len(claims_of(token)["access"]) <= 64
    # Many scopes in one parameter, separated by spaces (POST, the OAuth2 form).
    one = " ".join(f"repository:{ns}/s{i}:pull" for i in range(2000))
    with server.client(auth=None) as c:
        r = c.post(
            "/v2/auth",
            data={
                "grant_type": "password",
                "username": auth[0],
                "password": auth[1],
                "service": SERVICE,
                "scope": one,
            },
        )
    assert r.status_code == 200, r.text
    assert 0 < len(claims_of(r.json()["token"])["access"]) <= 64


def test_unknown_service_is_refused(target: Target) -> None:
    with target.server.client(auth=target.reader.auth) as c:
        r = c.get("/v2/auth", params={"service": "another-registry", "scope": _pull(target.repo)})
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
        r = c.post(
            "/v2/auth",
            data={
                "grant_type": "password",
                "username": target.reader.name,
                "password": target.reader.password,
                "service": "another-registry",
            },
        )
        assert r.status_code == 400


def test_account_parameter_cannot_change_who_the_token_is_for(target: Target) -> None:
    """The token is for the user of the Basic credentials, whatever `account` says."""
    token = token_for(
        target.server,
        target.reader.auth,
        _pull(target.other),
        _pull(target.repo),
        account="admin",
    )
    claims = claims_of(token)
    assert claims["sub"] == target.reader.name
    assert claims["ch"]["id"] == user_id(target.server, target.reader.name)
    assert claims["ch"]["su"] is False
    assert access_of(token)[f"repository:{target.other}"] == set()
    assert target.status(token, target.other) == 401
    # Anonymous: `account` does not make a token someone's either.
    anonymous = token_for(target.server, None, _pull(target.repo), account=target.reader.name)
    assert claims_of(anonymous)["sub"] == ""
    assert access_of(anonymous)[f"repository:{target.repo}"] == set()


# -- signing keys removed from the database --------------------------------------------


@pytest.fixture(scope="module")
def refreshing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A server of its own (this test deletes signing keys) that re-reads its keys
    every second."""
    data_dir: Path = tmp_path_factory.mktemp("registry-key-refresh")
    server = RegistryProcess(data_dir, env={"CARGOHOLD_AUTH__KEY_REFRESH_SECONDS": "1"}).start()
    yield server
    server.stop()


def test_a_token_of_a_deleted_key_stops_working(refreshing: RegistryProcess) -> None:
    server = refreshing
    repo = f"keys{uuid.uuid4().hex[:8]}/app"
    with server.client() as admin:
        digest = push_blob(admin, repo, b"key rotation")
    url = f"/v2/{repo}/blobs/{digest}"
    token = token_for(server, server.admin_auth, _pull(repo))
    kid = jwt.get_unverified_header(token)["kid"]
    with bearer_client(server, token) as c:
        assert c.get(url).status_code == 200  # verified, and cached as verified
        query(server, "DELETE FROM signing_key WHERE kid = ?", kid)
        deadline = time.monotonic() + 30
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = c.get(url).status_code
        assert status == 401
        assert 'error="invalid_token"' in c.get(url).headers["WWW-Authenticate"]
    # A new key signs new tokens, and only it is published.
    fresh = token_for(server, server.admin_auth, _pull(repo))
    assert jwt.get_unverified_header(fresh)["kid"] != kid
    with bearer_client(server, fresh) as c:
        assert c.get(url).status_code == 200
    with server.client(auth=None) as c:
        published = {k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]}
    assert kid not in published
    assert jwt.get_unverified_header(fresh)["kid"] in published


# -- an RSA key left by an older version -----------------------------------------------


@pytest.fixture
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A server of its own that has issued no token yet (the RSA keys this test adds
    must be in the database before its key ring first reads it)."""
    server = RegistryProcess(tmp_path_factory.mktemp("registry-upgraded")).start()
    yield server
    server.stop()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _add_rsa_key(server: RegistryProcess, alg: str | None) -> tuple[str, rsa.RSAPrivateKey]:
    """A signing key row as versions before ES256 wrote it: RSA 2048, the JWK naming
    RS256 (`alg` None: naming nothing), still within its signing period."""
    private = _attacker_rsa_key()
    kid = secrets.token_hex(8)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig")
    if alg is not None:
        jwk["alg"] = alg
    now = datetime.now(UTC)
    query(
        server,
        "INSERT INTO signing_key (kid, private_key, public_jwk, created_at, retire_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        kid,
        fernet_of(server).encrypt(_pem(private)),
        json.dumps(jwk),
        _stamp(now - timedelta(days=1)),
        _stamp(now + timedelta(days=29)),
        _stamp(now + timedelta(days=29, minutes=10)),
    )
    return kid, private


def test_an_rsa_key_of_an_older_version_verifies_but_no_longer_signs(
    upgraded: RegistryProcess,
) -> None:
    server = upgraded
    legacy = [_add_rsa_key(server, "RS256"), _add_rsa_key(server, None)]
    legacy_kids = {kid for kid, _ in legacy}
    repo = f"legacy{uuid.uuid4().hex[:8]}/app"
    with server.client() as admin:
        digest = push_blob(admin, repo, b"older keys")
    reader = new_user(server)
    grant_user(server, repo, reader, "read")
    access = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    claims = valid_claims(reader.name, user_id(server, reader.name), access)
    url = f"/v2/{repo}/blobs/{digest}"

    def status(token: str) -> int:
        with bearer_client(server, token) as c:
            return c.get(url).status_code

    # New tokens are ES256, with a new key, though the RSA keys could still sign by date.
    issued = token_for(server, reader.auth, _pull(repo))
    header = jwt.get_unverified_header(issued)
    assert header["alg"] == "ES256" and header["kid"] not in legacy_kids
    assert status(issued) == 200
    again = token_for(server, reader.auth, _pull(repo))
    assert jwt.get_unverified_header(again) == header
    # Tokens the older version signed still verify, with RS256 only.
    for kid, private in legacy:
        assert status(jwt.encode(claims, _pem(private), "RS256", headers={"kid": kid})) == 200
    # JWKS publishes all three.
    with server.client(auth=None) as c:
        published = {k["kid"]: k for k in c.get("/.well-known/jwks.json").json()["keys"]}
    assert legacy_kids | {header["kid"]} <= set(published)
    assert published[header["kid"]]["alg"] == "ES256"
    assert all(published[kid]["kty"] == "RSA" for kid in legacy_kids)
    # Each key verifies with its own algorithm only: no mixing our keys and algorithms.
    es_kid, es_pem, _ = signing_key(server)
    assert es_kid == header["kid"]
    for kid, private in legacy:
        rsa_pem = _pem(private)
        refused = [
            jwt.encode(claims, rsa_pem, "RS512", headers={"kid": kid}),
            jwt.encode(claims, rsa_pem, "PS256", headers={"kid": kid}),
            jwt.encode(claims, rsa_pem, "RS256", headers={"kid": es_kid}),
            jwt.encode(claims, es_pem, "ES256", headers={"kid": kid}),
        ]
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": kid}, claims)
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        refused.append(signing_input + "." + b64(mac))
        refused.append(unsigned({"alg": "none", "typ": "JWT", "kid": kid}, claims) + ".")
        for token in refused:
            assert status(token) == 401, jwt.get_unverified_header(token)


def test_a_key_encrypted_under_another_secret_key_is_skipped_not_fatal(
    upgraded: RegistryProcess,
) -> None:
    """A signing key row the server cannot decrypt (auth.secret_key changed, or a restored
    database of another installation) must not stop the token endpoint: it signs with a
    new key, and tokens of the unreadable key are refused."""
    server = upgraded
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    jwk = json.loads(ECAlgorithm.to_jwk(stranger.public_key()))
    jwk.update(kid=kid, use="sig", alg="ES256")
    pem = stranger.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    now = datetime.now(UTC)
    query(
        server,
        "INSERT INTO signing_key (kid, private_key, public_jwk, created_at, retire_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        kid,
        Fernet(Fernet.generate_key()).encrypt(pem),  # another installation's secret key
        json.dumps(jwk),
        _stamp(now - timedelta(days=1)),
        _stamp(now + timedelta(days=29)),
        _stamp(now + timedelta(days=29, minutes=10)),
    )
    repo = f"stranger{uuid.uuid4().hex[:8]}/app"
    with server.client() as admin:
        digest = push_blob(admin, repo, b"another secret key")
    reader = new_user(server)
    grant_user(server, repo, reader, "read")
    issued = token_for(server, reader.auth, _pull(repo))
    assert jwt.get_unverified_header(issued)["kid"] != kid
    url = f"/v2/{repo}/blobs/{digest}"
    with bearer_client(server, issued) as c:
        assert c.get(url).status_code == 200
    access = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    claims = valid_claims(reader.name, user_id(server, reader.name), access)
    forged = jwt.encode(claims, pem, "ES256", headers={"kid": kid})
    with bearer_client(server, forged) as c:
        assert c.get(url).status_code == 401


# -- the challenge ---------------------------------------------------------------------


def test_the_challenge_carries_nothing_the_client_made_up(target: Target) -> None:
    """The 401 challenge names the token endpoint and the scope to ask for; neither a
    crafted path (quotes, line breaks) nor a crafted Host header can add parameters such
    as another realm, or break the answer."""
    port = target.server.port
    crafted = [
        "/v2/a%22,realm=%22http://attacker.example/x/tags/list",
        "/v2/a%0d%0aX-Injected:%20yes/b/tags/list",
        "/v2/a%2Cscope%3D%22registry:catalog:*/b/manifests/latest",
    ]
    for path in crafted:
        for headers in ({}, {"Authorization": "Basic eDp5"}):
            r = raw_request(port, "GET", path, headers=headers)
            assert r.status in (400, 401), (path, r.status, r.body[:200])
            assert "x-injected" not in r.headers
            challenge = r.headers.get("www-authenticate", "")
            assert challenge.count("realm=") <= 1 and "attacker" not in challenge, challenge
            if challenge:
                assert "scope=" not in challenge
    for host in ('evil.example",realm="http://attacker.example', "a b", "x\tz"):
        r = raw_request(port, "GET", f"/v2/{target.repo}/tags/list", headers={"Host": host})
        assert r.status == 401
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="http://localhost/v2/auth",'), challenge
        assert challenge.count("realm=") == 1
    r = raw_request(port, "GET", f"/v2/{target.repo}/tags/list", headers={"Host": "reg:5000"})
    assert r.headers["www-authenticate"].startswith('Bearer realm="http://reg:5000/v2/auth",')
    assert f'scope="repository:{target.repo}:pull"' in r.headers["www-authenticate"]
