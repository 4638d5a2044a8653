"""The Helm chart in deploy/helm/cargohold, rendered by Helm itself.

Helm is helm-python-sdk (Helm v4 as a Go shared library): it renders and lints the chart
offline, in a child process (a Go panic cannot take pytest down). Every rendered object but
the ServiceMonitor (a CRD) is checked against the Kubernetes OpenAPI schemas with
kubernetes-validate, strictly (an unknown field is an error), for the oldest Kubernetes the
chart supports and the newest the package knows. The settings file and variables the chart
writes are loaded by cargohold's own settings model, and the commands its containers run are
parsed by cargohold's own command line.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import typer
import yaml

from cargohold.cli import app as cli_app
from cargohold.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cargohold"
RELEASE = "reg"
NAMESPACE = "registry"
FULLNAME = "reg-cargohold"
OLDEST_KUBERNETES = "1.25"  # Chart.yaml kubeVersion
MiB = 1024**2

_HELM = r"""
import json, sys
import helm_python as helm

req = json.load(sys.stdin)
out = {}
try:
    with helm.Chart.load(req["chart"]) as chart:
        out["manifests"] = chart.render(
            req["values"], name=req["release"], namespace=req["namespace"], is_install=True
        )
except helm.HelmError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
if req["lint"] and "error" not in out:
    out["lint"] = helm.lint(
        req["chart"], req["values"], strict=True, namespace=req["namespace"],
        kube_version="v" + req["kube_version"] + ".0",
    )
print(json.dumps(out))
"""

# Secret values of the production case: none may appear in a pod spec or in cargohold.yml.
SECRETS = {
    "databaseUrl": "postgresql://cargohold:pg-Secret-1@db.example.org:5432/cargohold",
    "secretKey": "sk-Secret-2-" + "k" * 36,
    "initialAdminPassword": "admin-Secret-3",
    "s3AccessKey": "AKIAEXAMPLESECRET4",
    "s3SecretKey": "s3-Secret-5",
    "redisUrl": "redis://:redis-Secret-6@redis.example.org:6379/0",
    "metricsToken": "metrics-Secret-7",
    "extraEnv": {"CARGOHOLD_AUTH__LDAP__BIND_PASSWORD": "ldap-Secret-8"},
}

# Production: PostgreSQL, S3 (an S3-compatible endpoint with keys), 3 to 12 web pods behind
# an Ingress with TLS, Redis, metrics scraped by prometheus-operator.
PRODUCTION: dict[str, Any] = {
    "image": {"repository": "registry.example.org/platform/cargohold", "tag": "0.1.0"},
    "externalURL": "https://registry.example.org",
    "secrets": SECRETS,
    "config": {
        "database": {"pool_size": 3},
        "storage": {
            "driver": "s3",
            "s3": {
                "endpoint_url": "https://s3.example.org",
                "region": "eu-west-1",
                "bucket": "registry",
                "prefix": "cargohold",
                "addressing": "path",
                "redirect": True,
            },
        },
        "gc": {"grace_seconds": 7200},
    },
    "web": {
        "workers": 3,
        "autoscaling": {"minReplicas": 3, "maxReplicas": 12, "targetCPUUtilizationPercentage": 65},
        "resources": {
            "requests": {"cpu": "1500m", "memory": "640Mi"},
            "limits": {"cpu": "3", "memory": "1Gi"},
        },
    },
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "registry.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "registry-tls", "hosts": ["registry.example.org"]}],
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}


@dataclass
class Rendered:
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str
    lint: dict[str, Any] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found in {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    def secret(self, name: str) -> dict[str, str]:
        data = self.get("Secret", name)["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def workloads(self) -> list[dict[str, Any]]:
        return self.all("Deployment") + self.all("Job")


def _helm(values: dict[str, Any], *, lint: bool = False) -> dict[str, Any]:
    request = {
        "chart": str(CHART),
        "values": values,
        "release": RELEASE,
        "namespace": NAMESPACE,
        "lint": lint,
        "kube_version": OLDEST_KUBERNETES,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    proc = subprocess.run(
        [sys.executable, "-c", _HELM],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def render(values: dict[str, Any], *, lint: bool = False) -> Rendered:
    result = _helm(values, lint=lint)
    assert "error" not in result, result["error"]
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(result["manifests"].items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(values, objects, notes, result.get("lint", {}))


def render_error(values: dict[str, Any]) -> str:
    result = _helm(values)
    assert "error" in result, "the chart rendered; an error was expected"
    error: str = result["error"]
    return error


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        _merge(out, copy.deepcopy(layer))
    return out


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render({}, lint=True)


@pytest.fixture(scope="module")
def production() -> Rendered:
    return render(PRODUCTION, lint=True)


@pytest.fixture(params=["default", "production"])
def chart(request: pytest.FixtureRequest) -> Rendered:
    rendered: Rendered = request.getfixturevalue(request.param)
    return rendered


# -- what is there ---------------------------------------------------------------------------


def test_default_values_render_every_part(default: Rendered) -> None:
    assert default.names() == sorted(
        [
            "Deployment/reg-cargohold-web",
            "Deployment/reg-cargohold-worker",
            "HorizontalPodAutoscaler/reg-cargohold-web",
            "Job/reg-cargohold-migrate",
            "PodDisruptionBudget/reg-cargohold-web",
            "Secret/reg-cargohold",
            "Secret/reg-cargohold-config",
            "Secret/reg-cargohold-migrate",
            "Service/reg-cargohold",
            "ServiceAccount/reg-cargohold",
        ]
    )
    assert "port-forward svc/reg-cargohold" in default.notes
    assert "still the chart's placeholder" in default.notes


def test_production_values_add_ingress_and_service_monitor(production: Rendered) -> None:
    assert set(production.kinds()) == {
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    assert "https://registry.example.org" in production.notes
    assert "placeholder" not in production.notes


def test_helm_lint_is_clean(chart: Rendered) -> None:
    problems = [m for m in chart.lint["messages"] if m["severity"] >= 2]  # warnings, errors
    assert chart.lint["errors"] == []
    assert problems == []


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_objects_match_the_kubernetes_schemas(chart: Rendered, version: str) -> None:
    for obj in chart.objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD; checked by test_service_monitor_scrapes_metrics_with_the_token
        kubernetes_validate.validate(obj, version, strict=True)


# -- the web Deployment and its autoscaler ---------------------------------------------------


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_web_runs_serve_on_port_5000(chart: Rendered) -> None:
    web = _container(chart.get("Deployment", f"{FULLNAME}-web"))
    workers = str(chart.values.get("web", {}).get("workers", 2))
    assert web["command"] == [
        "cargohold",
        "serve",
        "--config",
        "/etc/cargohold/cargohold.yml",
        "--host",
        "0.0.0.0",
        "--port",
        "5000",
        "--workers",
        workers,
    ]
    assert web["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    service = chart.get("Service", FULLNAME)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = chart.get("Deployment", f"{FULLNAME}-web")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pod_labels["labels"].items()


def test_image_is_a_value(default: Rendered, production: Rendered) -> None:
    assert _container(default.get("Deployment", f"{FULLNAME}-web"))["image"] == "cargohold:0.1.0"
    for workload in production.workloads():
        assert _container(workload)["image"] == "registry.example.org/platform/cargohold:0.1.0"
    digest = "sha256:" + "ab" * 32
    pinned = render({"image": {"repository": "example.org/cargohold", "digest": digest}})
    for workload in pinned.workloads():
        assert _container(workload)["image"] == f"example.org/cargohold@{digest}"


def test_every_container_runs_a_real_cargohold_command(chart: Rendered) -> None:
    commands = typer.main.get_command(cli_app).commands
    seen = {}
    for workload in chart.workloads():
        argv = _container(workload)["command"]
        assert argv[0] == "cargohold"
        # Parsed as the command line would (an unknown option or a bad value raises).
        seen[argv[1]] = commands[argv[1]].make_context(argv[1], list(argv[2:])).params
    assert seen.keys() == {"serve", "worker", "migrate"}
    assert (seen["serve"]["host"], seen["serve"]["port"]) == ("0.0.0.0", 5000)
    for params in seen.values():
        assert str(params["config"]) == "/etc/cargohold/cargohold.yml"


def test_probes(chart: Rendered) -> None:
    web = _container(chart.get("Deployment", f"{FULLNAME}-web"))
    assert web["livenessProbe"]["httpGet"] == {"path": "/health/instance", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/health/instance", "port": "http"}
    assert web["startupProbe"]["httpGet"] == {"path": "/health/endtoend", "port": "http"}


@pytest.mark.parametrize(
    ("end_to_end", "startup", "readiness"),
    [
        ("readiness", "/health/instance", "/health/endtoend"),
        ("none", "/health/instance", "/health/instance"),
    ],
)
def test_end_to_end_probe_choice_never_touches_liveness(
    end_to_end: str, startup: str, readiness: str
) -> None:
    web = _container(
        render({"web": {"probes": {"endToEnd": end_to_end}}}).get("Deployment", f"{FULLNAME}-web")
    )
    assert web["startupProbe"]["httpGet"]["path"] == startup
    assert web["readinessProbe"]["httpGet"]["path"] == readiness
    assert web["livenessProbe"]["httpGet"]["path"] == "/health/instance"
    assert "endToEnd" in render_error({"web": {"probes": {"endToEnd": "liveness"}}})


def test_autoscaler_targets_the_web_deployment_on_cpu(
    default: Rendered, production: Rendered
) -> None:
    for rendered, low, high, cpu in ((default, 2, 6, 70), (production, 3, 12, 65)):
        hpa = rendered.get("HorizontalPodAutoscaler", f"{FULLNAME}-web")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{FULLNAME}-web",
        }
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (low, high)
        assert hpa["metrics"] == [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu},
                },
            }
        ]
        # The HPA owns the replica count: an upgrade must not reset it.
        assert "replicas" not in rendered.get("Deployment", f"{FULLNAME}-web")["spec"]


def test_fixed_replicas_without_autoscaler() -> None:
    fixed = render(merged(PRODUCTION, {"web": {"replicas": 3, "autoscaling": {"enabled": False}}}))
    assert fixed.all("HorizontalPodAutoscaler") == []
    assert fixed.get("Deployment", f"{FULLNAME}-web")["spec"]["replicas"] == 3


def test_pod_disruption_budget_covers_the_web_pods(chart: Rendered) -> None:
    pdb = chart.get("PodDisruptionBudget", f"{FULLNAME}-web")["spec"]
    assert pdb["maxUnavailable"] == 1
    pod_labels = chart.get("Deployment", f"{FULLNAME}-web")["spec"]["template"]["metadata"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels["labels"].items()


# -- worker and migrations -------------------------------------------------------------------


def test_worker_runs_the_background_jobs(chart: Rendered) -> None:
    worker = chart.get("Deployment", f"{FULLNAME}-worker")
    assert worker["spec"]["replicas"] == 1
    assert _container(worker)["command"][:2] == ["cargohold", "worker"]
    # The collector and the other background work run in the worker, so the web pods
    # leave them alone.
    assert _settings(chart).gc.enabled is False
    assert _settings(chart).jobs.run_in_web is False
    without = render({"worker": {"enabled": False}})
    assert [d["metadata"]["name"] for d in without.all("Deployment")] == [f"{FULLNAME}-web"]
    assert _settings(without).gc.enabled is True
    assert _settings(without).jobs.run_in_web is True


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(chart: Rendered) -> None:
    job = chart.get("Job", f"{FULLNAME}-migrate")
    hook_secret = chart.get("Secret", f"{FULLNAME}-migrate")
    for obj in (job, hook_secret):
        notes = obj["metadata"]["annotations"]
        assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # The Secret the Job reads is itself a hook, created before it (the release's own
    # objects do not exist yet before an install).
    weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
    migrate = _container(job)
    assert migrate["command"] == [
        "cargohold",
        "migrate",
        "--config",
        "/etc/cargohold/cargohold.yml",
    ]
    assert migrate["env"] == [
        {
            "name": "CARGOHOLD_DATABASE__URL",
            "valueFrom": {
                "secretKeyRef": {"name": f"{FULLNAME}-migrate", "key": "CARGOHOLD_DATABASE__URL"}
            },
        }
    ]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "serviceAccountName" not in pod  # the chart's account does not exist yet
    [config] = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config["secret"]["secretName"] == f"{FULLNAME}-migrate"
    hook_data = chart.secret(f"{FULLNAME}-migrate")
    assert set(hook_data) == {"cargohold.yml", "CARGOHOLD_DATABASE__URL"}
    assert hook_data["cargohold.yml"] == chart.secret(f"{FULLNAME}-config")["cargohold.yml"]
    assert hook_data["CARGOHOLD_DATABASE__URL"] == chart.secret(FULLNAME)["CARGOHOLD_DATABASE__URL"]
    # Every regular object is not a hook.
    for obj in chart.objects:
        if obj is not job and obj is not hook_secret:
            assert "helm.sh/hook" not in obj["metadata"].get("annotations", {})


# -- configuration and secrets ---------------------------------------------------------------


def _env_secret(chart: Rendered) -> dict[str, str]:
    return chart.secret(FULLNAME)


def _settings(chart: Rendered, env: dict[str, str] | None = None) -> Settings:
    """cargohold's own settings, from the rendered cargohold.yml and the variables."""
    text = chart.secret(f"{FULLNAME}-config")["cargohold.yml"]
    saved = {k: v for k, v in os.environ.items() if k.startswith("CARGOHOLD_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write(text)
            f.flush()
            return load_settings(f.name)
    finally:
        for key in env or {}:
            os.environ.pop(key, None)
        os.environ.update(saved)


def _known_setting(variable: str) -> bool | None:
    """Whether CARGOHOLD_A__B names a setting; None when section `a` does not exist yet."""
    parts = variable.removeprefix("CARGOHOLD_").lower().split("__")
    model: type[pydantic.BaseModel] = Settings
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            return None if depth == 0 else False
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            model = annotation
        else:
            return depth == len(parts) - 1
    return False


def test_settings_load_in_cargohold(default: Rendered, production: Rendered) -> None:
    settings = _settings(default, _env_secret(default))
    assert settings.data_dir == "/var/lib/cargohold"
    assert settings.database.url.startswith("postgresql://")
    assert settings.database.pool_size == 4
    assert settings.storage.driver == "s3"
    assert settings.storage.s3.bucket == "cargohold"
    assert len(settings.auth.secret_key.get_secret_value()) == 48  # generated
    assert len(settings.auth.initial_admin_password.get_secret_value()) == 24
    assert settings.auth.realm == ""

    settings = _settings(production, _env_secret(production))
    s3 = settings.storage.s3
    assert (s3.endpoint_url, s3.bucket, s3.prefix, s3.addressing) == (
        "https://s3.example.org",
        "registry",
        "cargohold",
        "path",
    )
    assert s3.redirect is True
    assert s3.access_key == SECRETS["s3AccessKey"]
    assert s3.secret_key.get_secret_value() == SECRETS["s3SecretKey"]
    assert settings.database.url == SECRETS["databaseUrl"]
    assert settings.database.pool_size == 3
    assert settings.gc.grace_seconds == 7200
    assert settings.auth.secret_key.get_secret_value() == SECRETS["secretKey"]
    assert settings.auth.initial_admin_password.get_secret_value() == "admin-Secret-3"
    assert settings.auth.ldap.bind_password.get_secret_value() == "ldap-Secret-8"
    assert settings.metrics.token.get_secret_value() == SECRETS["metricsToken"]
    # TLS ends at the Ingress: the token endpoint is announced with the public URL.
    assert settings.auth.realm == "https://registry.example.org/v2/auth"
    assert settings.redis.url == SECRETS["redisUrl"]


def test_every_variable_names_a_setting(production: Rendered) -> None:
    env = _env_secret(production)
    assert set(env) == {
        "CARGOHOLD_DATABASE__URL",
        "CARGOHOLD_AUTH__SECRET_KEY",
        "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD",
        "CARGOHOLD_STORAGE__S3__ACCESS_KEY",
        "CARGOHOLD_STORAGE__S3__SECRET_KEY",
        "CARGOHOLD_REDIS__URL",
        "CARGOHOLD_METRICS__TOKEN",
        "CARGOHOLD_AUTH__LDAP__BIND_PASSWORD",
    }
    for variable in env:
        assert _known_setting(variable), f"{variable} is no cargohold setting"


def test_pods_take_secrets_from_the_secret_only(production: Rendered) -> None:
    values = [SECRETS[k] for k in SECRETS if k != "extraEnv"] + ["ldap-Secret-8", "pg-Secret-1"]
    config_file = production.secret(f"{FULLNAME}-config")["cargohold.yml"]
    for workload in production.workloads():
        text = json.dumps(workload)
        for value in values:
            assert value not in text, f"{workload['metadata']['name']} shows a secret"
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                assert "value" not in variable, variable
        pod = workload["spec"]["template"]["spec"]
        assert pod["enableServiceLinks"] is False  # no CARGOHOLD_PORT from a Service
        assert pod["automountServiceAccountToken"] is False
    for value in values:
        assert value not in config_file
    for name in ("web", "worker"):
        web = _container(production.get("Deployment", f"{FULLNAME}-{name}"))
        assert web["envFrom"] == [{"secretRef": {"name": FULLNAME}}]
    # The generated secrets survive uninstall: the key decrypts what the database keeps.
    secret = production.get("Secret", FULLNAME)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_secret_replaces_the_charts() -> None:
    external = render(merged(PRODUCTION, {"existingSecret": "cargohold-credentials"}))
    assert FULLNAME not in [s["metadata"]["name"] for s in external.all("Secret")]
    for name in ("web", "worker"):
        container = _container(external.get("Deployment", f"{FULLNAME}-{name}"))
        assert container["envFrom"] == [{"secretRef": {"name": "cargohold-credentials"}}]
    migrate = _container(external.get("Job", f"{FULLNAME}-migrate"))
    ref = migrate["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cargohold-credentials", "key": "CARGOHOLD_DATABASE__URL"}
    assert set(external.secret(f"{FULLNAME}-migrate")) == {"cargohold.yml"}
    endpoint = external.get("ServiceMonitor", FULLNAME)["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"]["name"] == "cargohold-credentials"
    for obj in external.objects:
        text = json.dumps(obj)
        assert "pg-Secret-1" not in text and "s3-Secret-5" not in text


def test_config_changes_roll_the_pods(default: Rendered) -> None:
    changed = render({"config": {"gc": {"grace_seconds": 60}}})
    for name in ("web", "worker"):
        before = default.get("Deployment", f"{FULLNAME}-{name}")["spec"]["template"]
        after = changed.get("Deployment", f"{FULLNAME}-{name}")["spec"]["template"]
        key = "checksum/config"
        assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"storage": {"driver": "memory"}}}, "memory keeps blobs inside one process"),
        ({"config": {"storage": {"driver": "filesystem"}}}, "needs persistence.existingClaim"),
        ({"config": {"storage": {"s3": {"bucket": ""}}}}, "needs config.storage.s3.bucket"),
        ({"secrets": {"databaseUrl": "sqlite:///var/lib/c.db"}}, "the chart needs PostgreSQL"),
        ({"secrets": {"databaseUrl": ""}}, "secrets.databaseUrl is required"),
        ({"secrets": {"extraEnv": {"AWS_REGION": "x"}}}, "AWS_REGION"),
        ({"webb": {"workers": 4}}, "additional properties 'webb' not allowed"),
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "needs secrets.metricsToken"),
    ],
)
def test_configurations_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)


def test_filesystem_storage_on_a_shared_volume() -> None:
    shared = render(
        {"config": {"storage": {"driver": "filesystem"}}, "persistence": {"existingClaim": "rwx"}}
    )
    settings = _settings(shared, _env_secret(shared))
    assert settings.storage.driver == "filesystem"
    assert settings.storage.filesystem.root == "/var/lib/cargohold/storage"
    for name in ("web", "worker"):
        deployment = shared.get("Deployment", f"{FULLNAME}-{name}")
        [volume] = [
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "storage"
        ]
        assert volume["persistentVolumeClaim"] == {"claimName": "rwx"}
        mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        assert mounts["storage"] == "/var/lib/cargohold/storage"


# -- resources and security ------------------------------------------------------------------


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def test_every_container_has_requests_and_limits(chart: Rendered) -> None:
    for workload in chart.workloads():
        resources = _container(workload)["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources[kind].keys(), workload["metadata"]["name"]
    # A worker process peaks near 150 MiB; the serve parent takes about 120 MiB more.
    web = chart.get("Deployment", f"{FULLNAME}-web")
    workers = int(_container(web)["command"][-1])
    limit = _bytes(_container(web)["resources"]["limits"]["memory"])
    assert limit >= workers * 150 * MiB + 120 * MiB
    worker = _container(chart.get("Deployment", f"{FULLNAME}-worker"))
    assert _bytes(worker["resources"]["limits"]["memory"]) >= 150 * MiB


def test_pods_run_as_non_root_on_a_read_only_root(chart: Rendered) -> None:
    for workload in chart.workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        container = _container(workload)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for name in ("web", "worker"):
        deployment = chart.get("Deployment", f"{FULLNAME}-{name}")
        pod = deployment["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        # The only folder written: <data_dir>/run (cache generations, the collector's lock).
        assert mounts["run"] == "/var/lib/cargohold/run"
        assert "emptyDir" in volumes["run"]
        assert "emptyDir" in volumes["tmp"]


# -- exposure ------------------------------------------------------------------------------


def test_ingress_sends_big_uploads_through(production: Rendered) -> None:
    ingress = production.get("Ingress", FULLNAME)
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "registry-tls", "hosts": ["registry.example.org"]}]
    [rule] = spec["rules"]
    assert rule["host"] == "registry.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_service_monitor_scrapes_metrics_with_the_token(production: Rendered) -> None:
    monitor = production.get("ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    service = production.get("Service", FULLNAME)
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials["name"] == FULLNAME
    assert _env_secret(production)[credentials["key"]] == SECRETS["metricsToken"]


# -- the guide -------------------------------------------------------------------------------


def _guide_yaml_blocks() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = []
    for chunk in text.split("```yaml")[1:]:
        body = chunk.split("```", 1)[0]
        lines = body.splitlines()
        indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
        blocks.append(yaml.safe_load("\n".join(x[indent:] for x in lines)))
    return blocks


def test_the_guide_s_values_and_all_at_once_upgrade_render() -> None:
    values, all_at_once = _guide_yaml_blocks()
    guide = render(values, lint=True)
    assert guide.lint["errors"] == []
    settings = _settings(guide, _env_secret(guide))
    assert settings.storage.s3.bucket == "registry"
    assert settings.auth.realm == "https://registry.example.org/v2/auth"
    upgrade = render(merged(values, all_at_once))
    web = upgrade.get("Deployment", f"{FULLNAME}-web")
    assert web["spec"]["strategy"] == {"type": "Recreate"}
    for obj in upgrade.objects:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, OLDEST_KUBERNETES, strict=True)
