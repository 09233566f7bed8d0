"""deploy/k8s rendered (deploy/k8s/render.py, kustomize's semantics for the fields it uses) and checked:
every object valid against the Kubernetes schemas, and the API's probes, port, workers, resources and
environment the same as the app's settings and docker-compose.yml."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import ServingSettings
from serving.routes import operations

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
_spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
assert _spec is not None and _spec.loader is not None
render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_module)
render, validate, merge = render_module.render, render_module.validate, render_module.merge

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APP_ENV: dict[str, str] = COMPOSE["x-app"]["environment"]
BASE = render(K8S / "base")
PRODUCTION = render(K8S / "overlays/production")
EXTERNAL_HOSTS = {"postgres", "minio"}  # managed PostgreSQL and object storage: configmap.yaml says so


def get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (c,) = get(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return c


def env_names(c: dict[str, Any]) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


@pytest.mark.parametrize(("name", "objects"), [("base", BASE), ("production", PRODUCTION)])
def test_every_object_is_valid_for_kubernetes(name: str, objects: list[dict[str, Any]]) -> None:
    assert validate(objects) == [], name
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    expected = {("Deployment", "api"), ("Service", "api"), ("PodDisruptionBudget", "api"),
                ("HorizontalPodAutoscaler", "api"), ("Deployment", "prefect-worker"), ("Deployment", "mlflow"),
                ("Service", "mlflow"), ("ConfigMap", "mlops-loop-config")}  # fmt: skip
    assert expected <= kinds


def test_the_schemas_refuse_a_mistake() -> None:
    bad = json.loads(json.dumps(get(BASE, "Deployment", "api")))
    bad["spec"]["replica"] = 2  # a typo: strict validation names it
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    problems = validate([bad])
    assert problems and all(p.startswith("Deployment/api") for p in problems)


def test_the_production_overlay_namespaces_tags_and_scales() -> None:
    assert {o["metadata"]["namespace"] for o in PRODUCTION} == {"mlops"}
    api = get(PRODUCTION, "Deployment", "api")
    assert api["spec"]["replicas"] == 3
    assert container(PRODUCTION, "api")["image"] == "registry.example.com/mlops-loop:0.1.0"
    init = get(PRODUCTION, "Deployment", "prefect-worker")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == "registry.example.com/mlops-loop:0.1.0"
    # The patches changed only what they name: the API's probes survive the overlay.
    assert container(PRODUCTION, "api")["readinessProbe"] == container(BASE, "api")["readinessProbe"]
    hpa, pdb = get(PRODUCTION, "HorizontalPodAutoscaler", "api"), get(PRODUCTION, "PodDisruptionBudget", "api")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
    assert hpa["spec"]["metrics"] == get(BASE, "HorizontalPodAutoscaler", "api")["spec"]["metrics"]
    # A drain may take a pod only while the others still serve.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mlops-loop" for o in PRODUCTION)


@pytest.mark.parametrize("objects", [BASE, PRODUCTION])
def test_the_api_pods_probe_and_serve_what_the_app_answers(objects: list[dict[str, Any]]) -> None:
    api = container(objects, "api")
    env = {e["name"]: e.get("value") for e in api["env"]}
    routes = {r.path for r in operations.router.routes}  # type: ignore[attr-defined]
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready" and "/ready" in routes
    assert api["livenessProbe"]["httpGet"]["path"] == "/health" and "/health" in routes
    (port,) = api["ports"]
    assert port["containerPort"] == int(env["MLOPS_SERVING__PORT"]) == ServingSettings().port
    assert env["MLOPS_SERVING__HOST"] == "0.0.0.0"
    assert api["command"] == COMPOSE["services"]["api"]["command"]
    assert env["MLOPS_SERVING__WORKERS"] == COMPOSE["services"]["api"]["environment"]["MLOPS_SERVING__WORKERS"]
    service = get(objects, "Service", "api")
    pod_labels = get(objects, "Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert get(objects, "PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert get(objects, "HorizontalPodAutoscaler", "api")["spec"]["scaleTargetRef"]["name"] == "api"
    assert api["resources"]["requests"]["cpu"]  # the HPA's utilisation is relative to the request


def test_the_api_memory_request_covers_the_measured_rss_of_its_workers() -> None:
    rss_mb = json.loads((ROOT / "benchmarks/results/serving.json").read_text())["rss_mb"]
    api = container(BASE, "api")
    workers = int({e["name"]: e.get("value") for e in api["env"]}["MLOPS_SERVING__WORKERS"])
    request_mi = int(api["resources"]["requests"]["memory"].removesuffix("Mi"))
    limit_mi = int(api["resources"]["limits"]["memory"].removesuffix("Mi"))
    needed_mi = rss_mb * 1e6 / 2**20 * workers
    assert needed_mi <= request_mi <= 1.5 * needed_mi, (needed_mi, request_mi)
    assert limit_mi > request_mi


def test_the_environment_is_compose_s_same_names_and_values() -> None:
    config = get(BASE, "ConfigMap", "mlops-loop-config")["data"]
    for key, value in APP_ENV.items():
        if "${" in str(value):  # built with the password: each app container builds it from the Secret
            for name in ("api", "prefect-worker"):
                assert key in env_names(container(BASE, name)), f"{name} lacks {key}"
        else:
            assert config.get(key) == value, f"configmap {key}={config.get(key)!r}, compose has {value!r}"
    # Service-specific settings of compose are on the matching Deployment.
    for service, deployment in (("mlflow", "mlflow"), ("prefect-server", "prefect-server")):
        for key in COMPOSE["services"][service].get("environment", {}):
            if key not in APP_ENV:
                assert key in env_names(container(BASE, deployment)) | set(config), f"{deployment} lacks {key}"
    for name in ("prefect-server", "prefect-worker"):
        assert container(BASE, name)["command"] == COMPOSE["services"][name]["command"]
    mlflow_cmd = container(BASE, "mlflow")["command"]
    compose_cmd = COMPOSE["services"]["mlflow"]["command"]
    assert [a for a in mlflow_cmd if "postgresql" not in a] == [a for a in compose_cmd if "postgresql" not in a]


def test_every_host_the_config_names_is_a_service_or_documented_as_external() -> None:
    config = get(BASE, "ConfigMap", "mlops-loop-config")["data"]
    services = {(s["metadata"]["name"], p["port"]) for s in BASE if s["kind"] == "Service" for p in s["spec"]["ports"]}
    hosts = {(h, int(p)) for v in config.values() for h, p in re.findall(r"https?://([\w.-]+):(\d+)", v)}
    assert hosts
    for host, port in hosts:
        assert (host, port) in services or host in EXTERNAL_HOSTS, f"{host}:{port} is neither a Service nor external"
    assert config["POSTGRES_HOST"] in EXTERNAL_HOSTS


def test_secrets_come_from_the_same_env_file_as_compose() -> None:
    documented = {
        line.split("=")[0].lstrip("# ") for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line
    }
    for obj in BASE:
        if obj["kind"] != "Deployment":
            continue
        spec = obj["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "mlops-loop-secrets" and ref["key"] in documented
                elif re.search(r"PASSWORD|SECRET|_KEY$", e["name"]):
                    pytest.fail(f"{obj['metadata']['name']}: {e['name']} has a literal value")
    assert not [o for o in BASE if o["kind"] == "Secret"], "no secret values in the manifests"


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: [{name: x, literals: [A=1]}]\n")
    with pytest.raises(render_module.RenderError, match="configMapGenerator"):
        render(tmp_path)


def test_strategic_merge_merges_named_lists_and_replaces_others() -> None:
    base = {"containers": [{"name": "a", "image": "x", "args": ["1", "2"]}, {"name": "b"}]}
    patch = {"containers": [{"name": "a", "args": ["3"]}, {"name": "c"}]}
    assert merge(base, patch) == {
        "containers": [{"name": "a", "image": "x", "args": ["3"]}, {"name": "b"}, {"name": "c"}]
    }
