"""Settings: defaults, YAML, environment overrides, unknown keys refused, `config check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cargohold.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ["CARGOHOLD_DATA_DIR", "CARGOHOLD_DATABASE__URL"]:
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.server.host == "127.0.0.1" and s.server.port == 5000
    assert s.database.url == "sqlite:///var/cargohold.db"
    assert s.storage.driver == "filesystem" and s.storage.filesystem.root == "var/storage"
    assert s.registry.max_manifest_bytes == 4 * 1024 * 1024


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("server:\n  port: 6000\nregistry:\n  max_page_size: 50\n")
    monkeypatch.setenv("CARGOHOLD_SERVER__PORT", "7000")
    s = load_settings(cfg)
    assert s.server.port == 7000  # the environment wins over the file
    assert s.registry.max_page_size == 50


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("srever:\n  port: 1\n", "srever: unknown key"),
        ("server:\n  prot: 1\n", "server.prot: unknown key"),
        ("server:\n  port: 99999\n", "server.port"),
        ("storage:\n  driver: nfs\n", "storage.driver"),
        ("database:\n  url: mysql://x\n", "database.url"),
        ("- a list\n", "mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configuration_is_explained(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_unknown_environment_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_SERVER__PROT", "1")
    with pytest.raises(SettingsError, match="unknown key"):
        load_settings()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args], capture_output=True, text=True, timeout=60
    )


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "database:\n  url: postgresql://reg:pw-in-url@127.0.0.1/reg\n"
        "auth:\n  secret_key: key-in-file\n  ldap:\n    bind_password: ldap-pw-in-file\n"
        "  oidc:\n    client_secret: oidc-secret-in-file\n"
        "  initial_admin_password: admin-pw-in-file\n"
    )
    out = _cli("config", "check", str(good))
    assert out.returncode == 0, out.stderr
    assert "reg:***@127.0.0.1/reg" in out.stdout
    for secret in (
        "pw-in-url",
        "key-in-file",
        "ldap-pw-in-file",
        "oidc-secret-in-file",
        "admin-pw-in-file",
    ):
        assert secret not in out.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("registry:\n  max_manifest_bytes: 1\n  colour: blue\n")
    out = _cli("config", "check", str(bad))
    assert out.returncode == 2
    assert "registry.colour: unknown key" in out.stderr
    assert "registry.max_manifest_bytes" in out.stderr
    assert "Traceback" not in out.stderr


def test_migrate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_DATA_DIR", str(tmp_path))
    out = _cli("migrate")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cargohold.db").exists()
