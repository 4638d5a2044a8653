"""Helm v4 (PyPI helm-python-sdk) against the registry: `helm registry login`, package a
chart, push it over oci:// (plain HTTP), list its tags, resolve and pull it back byte for
byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import OCI_MANIFEST, RegistryHTTP, RegistryLike, file_digest

pytestmark = pytest.mark.e2e

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
DRIVER = Path(__file__).with_name("helm_driver.py")


def write_chart(root: Path, name: str, version: str) -> Path:
    chart = root / name
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\n"
        f"name: {name}\n"
        "description: A chart pushed by the cargohold e2e suite\n"
        "type: application\n"
        f"version: {version}\n"
        'appVersion: "1.35"\n'
    )
    (chart / "values.yaml").write_text("greeting: hello from cargohold\nreplicas: 1\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    return chart


def test_helm_chart_push_and_pull(
    registry: RegistryLike, registry_http: RegistryHTTP, tmp_path: Path
) -> None:
    host = registry.host
    name, version = "e2e-chart", "0.1.0"
    chart = write_chart(tmp_path / "src", name, version)
    home = tmp_path / "home"
    home.mkdir()
    request = {
        "chart_dir": str(chart),
        "chart_name": name,
        "version": version,
        "package_dir": str(tmp_path / "packaged"),
        "pull_dir": str(tmp_path / "pulled"),
        "remote": f"oci://{host}/e2e-charts",
        "host": host,
        "credentials_file": str(home / "registry.json"),
        "username": registry.admin_auth[0],
        "password": registry.admin_auth[1],
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HELM_") and "proxy" not in k.lower()
    }
    env.update(
        HOME=str(home),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        HELM_REGISTRY_CONFIG=str(home / "registry.json"),
        DOCKER_CONFIG=str(home / ".docker"),
    )
    (tmp_path / "packaged").mkdir()
    proc = subprocess.run(
        [sys.executable, str(DRIVER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        input=json.dumps(request),
    )
    assert proc.returncode == 0, (
        f"helm driver failed:\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # `helm registry login` stored the credentials in the file we gave it, nowhere else
    stored = json.loads((home / "registry.json").read_text())
    assert host in stored["auths"], stored
    assert not (home / ".docker").exists()

    packaged = Path(result["package"])
    assert packaged.name == f"{name}-{version}.tgz"
    pulled = tmp_path / "pulled" / packaged.name
    assert pulled.read_bytes() == packaged.read_bytes(), "pulled chart differs from the pushed one"
    assert result["tags"] == [version]
    assert f"name: {name}" in result["show"] and "greeting: hello from cargohold" in result["show"]

    # what Helm stored: an OCI manifest with the Helm config and one chart layer (the .tgz itself)
    repo = f"e2e-charts/{name}"
    digest = registry_http.manifest_digest(repo, version)
    assert result["resolve"]["digest"] == digest
    manifest = registry_http.get_manifest(repo, version)
    assert manifest.content_type == OCI_MANIFEST
    body = manifest.json()
    assert body["config"]["mediaType"] == HELM_CONFIG
    config = json.loads(registry_http.get_blob(repo, body["config"]["digest"]))
    assert config["name"] == name and config["version"] == version
    assert [layer["mediaType"] for layer in body["layers"]] == [HELM_CHART]
    assert body["layers"][0]["digest"] == file_digest(packaged)
    assert registry_http.get_blob(repo, body["layers"][0]["digest"]) == packaged.read_bytes()
    assert registry_http.tags(repo) == [version]
