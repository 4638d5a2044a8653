"""Tests of the benchmarks' authentication: credentials for the servers they start, the
htpasswd file for Distribution, the Docker token flow of servers.token, the Basic-up-front
wrapper of regbench, the --auth mode of compare.py and its report.

Run from the repository root:  .venv/bin/python -m pytest -q bench/test_auth.py
The last tests start real servers (cargohold, docker-registry) on free loopback ports.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import bcrypt
import compare
import pytest
import regbench_basic
import report
import servers
from test_bench import make_doc, make_info

REPO = compare.REPO
CARGOHOLD = REPO / ".venv" / "bin" / "cargohold"
REGBENCH = REPO.parent / "shared" / "bench" / "regbench.py"


# --------------------------------------------------------------------------------------
# Helpers without servers
# --------------------------------------------------------------------------------------


def test_credentials_in_urls_and_headers() -> None:
    creds = ("admin", "p@ss:w/rd")
    url = servers.url_with_credentials("http://127.0.0.1:5000", creds)
    assert url == "http://admin:p%40ss%3Aw%2Frd@127.0.0.1:5000"
    assert servers.url_with_credentials("http://127.0.0.1:5000", None) == "http://127.0.0.1:5000"
    header = servers.basic_authorization(creds)
    assert base64.b64decode(header.removeprefix("Basic ")) == b"admin:p@ss:w/rd"
    assert len(servers.new_password()) >= 24 and servers.new_password() != servers.new_password()


def test_parse_challenge() -> None:
    scheme, params = servers.parse_challenge(
        'Bearer realm="http://127.0.0.1:5000/v2/auth",service="cargohold",'
        'scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "http://127.0.0.1:5000/v2/auth",
        "service": "cargohold",
        "scope": "repository:a/b:pull,push",
    }
    assert servers.parse_challenge('Basic realm="regbench"') == ("basic", {"realm": "regbench"})


def test_htpasswd_is_bcrypt_of_htpasswd_cost(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    servers.write_htpasswd(path, ("bench", "s3cret"))
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "bench"
    assert hashed.startswith(f"$2b${servers.HTPASSWD_COST:02d}$")
    assert bcrypt.checkpw(b"s3cret", hashed.encode())
    assert not bcrypt.checkpw(b"wrong", hashed.encode())


def test_display_command_hides_passwords_in_urls_and_env() -> None:
    cmd = compare.display_command(
        [
            "regbench.py",
            "compare",
            "--a",
            "cargohold=http://admin:Zx_9-q@127.0.0.1:1",
            "--server-env",
            "CARGOHOLD_AUTH__SECRET_KEY=Zx_9-q",
        ],
        {
            "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD": "Zx_9-q",
            "CARGOHOLD_AUTH__TOKEN_TTL_SECONDS": "3600",
        },
    )
    assert "Zx_9-q" not in cmd
    assert "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD=***" in cmd
    assert "CARGOHOLD_AUTH__TOKEN_TTL_SECONDS=3600" in cmd
    assert "'cargohold=http://admin:***@127.0.0.1:1'" in cmd
    assert "--server-env 'CARGOHOLD_AUTH__SECRET_KEY=***'" in cmd


def test_scrub_replaces_every_secret(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"command": "--a x=http://admin:AAA@h:1 --b y=http://admin:BBB@h:2"}')
    compare.scrub(path, ["AAA", "BBB"])
    assert (
        path.read_text() == '{"command": "--a x=http://admin:***@h:1 --b y=http://admin:***@h:2"}'
    )
    compare.scrub(tmp_path / "missing.json", ["AAA"])  # no file: nothing to do


def test_auth_mode_outputs_and_passes() -> None:
    parse = compare.build_parser().parse_args
    assert compare.output_path(parse(["--auth"])) == compare.AUTH_OUT
    quick = compare.output_path(parse(["--auth", "--quick"]))
    assert quick == compare.SCRATCH_OUT / "quick-auth" / "benchmarks-auth.md"

    main = compare.plan(parse([]))
    assert [(p.candidate, p.baseline, p.htpasswd, p.basic) for p in main] == [
        ("cargohold", "distribution", False, False)
    ]
    auth = compare.plan(parse(["--auth"]))
    assert [(p.candidate, p.baseline, p.baseline_kind, p.htpasswd, p.basic) for p in auth] == [
        ("cargohold", "distribution", "distribution", True, False),
        ("cargohold", "cargohold-basic", "cargohold", False, True),
    ]
    assert len(compare.plan(parse(["--auth", "--no-basic-pass"]))) == 1
    standin = compare.plan(parse(["--auth", "--standin"]))
    assert [(p.candidate, p.htpasswd) for p in standin] == [("cargohold-standin", True)]


def test_auth_notes_say_how_each_side_authenticated() -> None:
    parse = compare.build_parser().parse_args
    main = " ".join(compare.auth_notes(parse([]), compare.DEFAULT_OUT))
    assert "Docker token flow" in main
    assert "Distribution ran without authentication" in main
    assert "[benchmarks-auth.md](benchmarks-auth.md)" in main
    auth = " ".join(compare.auth_notes(parse(["--auth"]), compare.AUTH_OUT))
    assert "`auth: htpasswd`" in auth and f"cost {servers.HTPASSWD_COST}" in auth
    assert "[benchmarks.md](benchmarks.md)" in auth


def _rename_targets(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    for w in doc["workloads"].values():
        w["targets"] = {names.get(k, k): v for k, v in w["targets"].items()}
    for t in doc["targets"]:
        t["name"] = names.get(t["name"], t["name"])
    return doc


def test_report_with_title_notes_and_the_cost_section() -> None:
    basic_doc = _rename_targets(make_doc(), {"distribution": "cargohold-basic"})
    cost = report.render_auth_cost(basic_doc, "cargohold", "cargohold-basic")
    assert cost.startswith("## What the token flow costs cargohold")
    assert "| manifest_get | rps | req/s | higher | **25000** (24000..26000) | **2500**" in cost
    assert "ratio token / Basic" in cost
    assert "`tag_list` on **cargohold**: `round 1: VerificationError: <bad>`" in cost
    md = report.render_markdown(
        make_doc(),
        make_info(
            title="Benchmarks with authentication: T",
            notes=["**Authentication on both sides.** N"],
            extra_sections=[cost],
            extra_raw=["[x.json](x.json): pass 2's JSON."],
        ),
    )
    assert md.startswith("# Benchmarks with authentication: T\n")
    assert "\n\n**Authentication on both sides.** N\n\n" in md
    assert md.index("## What the token flow costs") < md.index("## Machine")
    assert "* [x.json](x.json): pass 2's JSON." in md
    # without them the report is as before
    plain = report.render_markdown(make_doc(), make_info())
    assert plain.startswith("# Benchmarks: cargohold vs CNCF Distribution\n")


def test_basic_wrapper_starts_listed_targets_in_basic_mode() -> None:
    rb = regbench_basic.load_regbench(REGBENCH)
    regbench_basic.send_basic_to(rb, {"127.0.0.1:5001"})
    listed = rb.Registry("http://admin:pw@127.0.0.1:5001")
    other = rb.Registry("http://admin:pw@127.0.0.1:5002")
    scopes = ["repository:a/b:pull"]
    assert listed.auth_header(scopes) == servers.basic_authorization(("admin", "pw"))
    assert other.auth_header(scopes) is None  # learns from the first 401, as regbench does
    with pytest.raises(rb.BenchError, match="Basic up front needs credentials"):
        rb.Registry("http://127.0.0.1:5001")

    class Refused:
        url = "http://127.0.0.1:5001/v2/"

        def header(self, name: str) -> str:
            return 'Bearer realm="http://127.0.0.1:5001/v2/auth",service="cargohold"'

    with pytest.raises(rb.BenchError, match="refused the Basic credentials"):
        listed._on_unauthorized(Refused(), tuple(scopes))


# --------------------------------------------------------------------------------------
# Real servers
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_servers_start_with_credentials(tmp_path: Path) -> None:
    dist = servers.start_distribution(
        REGBENCH, tmp_path / "distribution", credentials=("bench", "s3cret")
    )
    try:
        assert servers.http_status(dist.port) == 401
        assert servers.http_status(dist.port, headers=dist.authorization) == 200
        wrong = {"Authorization": servers.basic_authorization(("bench", "nope"))}
        assert servers.http_status(dist.port, headers=wrong) == 401
        assert "--htpasswd" in dist.argv
    finally:
        dist.stop()

    cargo = servers.start_cargohold(CARGOHOLD, tmp_path / "cargohold", tmp_path / "c.log")
    try:
        assert cargo.credentials is not None and cargo.credentials[0] == "admin"
        assert cargo.env["CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD"] == cargo.credentials[1]
        assert cargo.env["CARGOHOLD_AUTH__TOKEN_TTL_SECONDS"] == "3600"
        assert servers.http_status(cargo.port) == 401
        assert servers.http_status(cargo.port, headers=cargo.authorization) == 200
        bearer = cargo.bearer(["registry:catalog:*"])
        assert bearer["Authorization"].startswith("Bearer ")
        assert servers.http_status(cargo.port, "/v2/_catalog", headers=bearer) == 200
        claims = json.loads(base64.urlsafe_b64decode(bearer["Authorization"].split(".")[1] + "=="))
        assert claims["sub"] == "admin"
        assert claims["access"] == [{"type": "registry", "name": "catalog", "actions": ["*"]}]
        assert claims["exp"] - claims["iat"] == 3600
    finally:
        cargo.stop()


@pytest.mark.slow
def test_quick_auth_run_end_to_end(tmp_path: Path) -> None:
    """compare.py --quick --auth against real servers: cargohold's token flow vs Distribution
    with htpasswd, then cargohold's token flow vs cargohold with Basic."""
    out = tmp_path / "docs" / "benchmarks-auth.md"
    password = "Known-Password-0123456789"  # both cargohold servers; Distribution's is random
    argv = [
        sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--auth",
        "--workloads", "manifest_get,cross_mount", "--regbench-args", "--mounts 6 --duration 1",
        "--server-env", f"CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD={password}",
        "--out", str(out), "--tmpdir", str(tmp_path),
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    md = out.read_text()
    assert md.startswith(
        "# Benchmarks with authentication: cargohold (token flow) vs CNCF Distribution (htpasswd)"
    )
    assert "| manifest_get | rps |" in md
    assert "## What the token flow costs cargohold" in md
    assert "| cross_mount | mounts | mounts/s | higher |" in md
    assert "--htpasswd" in md and "bench/regbench_basic.py" in md
    assert "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD=***" in md
    results = out.parent / "bench-results"
    first = json.loads((results / "benchmarks-auth.json").read_text())
    second = json.loads((results / "benchmarks-auth-basic.json").read_text())
    assert [t["name"] for t in first["targets"]] == ["cargohold", "distribution"]
    assert [t["name"] for t in second["targets"]] == ["cargohold", "cargohold-basic"]
    for doc in (first, second):
        assert "admin:***@127.0.0.1" in doc["command"]
        for w in doc["workloads"].values():
            assert all(t["error"] is None for t in w["targets"].values())
    ET.fromstring((out.parent / "benchmarks-auth-ratios.svg").read_text())
    # the password is nowhere in what the run wrote or printed
    for text in (res.stdout, res.stderr, *(p.read_text() for p in out.parent.rglob("*.*"))):
        assert password not in text
    # every server was stopped and its data deleted
    assert not list(tmp_path.glob("cargohold-bench-*"))
