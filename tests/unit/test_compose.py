"""The production profile stays valid without a Docker engine: every service's command, config
file and build context exists in the project, and nothing binds beyond 127.0.0.1 on the host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards import dashboard_queries, declared_series, metric_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def test_has_the_production_services() -> None:
    expected = {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "api", "prometheus", "grafana"}
    assert expected <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounted_files_exist(name: str) -> None:
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the project"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_commands_point_at_project_code(name: str) -> None:
    svc = SERVICES[name]
    if svc.get("build"):
        assert (ROOT / svc["build"] / "Dockerfile").exists()
    cmd = svc.get("command") or []
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    for i, part in enumerate(cmd):
        if part == "-m":  # python -m package: the package must exist
            assert (ROOT / cmd[i + 1].replace(".", "/")).exists(), f"{name}: no module {cmd[i + 1]}"
        if re.fullmatch(r"[\w/.-]+\.(sh|py|yml|yaml)", part):
            assert (ROOT / part).exists(), f"{name}: runs {part}, which is not in the project"
    for entry in svc.get("entrypoint") or []:
        if entry.startswith("/deploy/"):
            assert (ROOT / entry.lstrip("/")).exists()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_ports_bind_loopback_only(name: str) -> None:
    for port in SERVICES[name].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_secrets_come_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{key}:?" in text, f"{key} must be required from the environment, not defaulted"
    for name, svc in SERVICES.items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|_KEY$", key):
                assert str(value).startswith("${"), f"{name}: {key} has a literal value in compose"


def test_prometheus_scrapes_the_api() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "api:8000" in targets


def test_prometheus_loads_the_alerting_rules_and_the_pushed_monitoring_decisions() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    mounted = {v.split(":")[1] for v in SERVICES["prometheus"]["volumes"]}
    for rules in prom["rule_files"]:
        assert f"/etc/prometheus/{rules}" in mounted, f"prometheus.yml loads {rules}, which compose does not mount"
    (push_job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert push_job["honor_labels"] is True  # keep the pushed job/model labels the rules match on
    (target,) = push_job["static_configs"][0]["targets"]
    assert COMPOSE["x-app"]["environment"]["MLOPS_MONITORING__PUSHGATEWAY_URL"] == f"http://{target}"
    assert target.split(":")[0] in SERVICES


def test_grafana_dashboard_queries_metrics_the_api_exports() -> None:
    """Every metric a panel queries is a series serving/metrics.py declares (parsed from the PromQL, any
    name, not only serving_*). tests/e2e/test_prod_local.py checks them against a live /metrics too."""
    declared = declared_series()
    queries = dashboard_queries()
    assert queries, "no Grafana dashboard found"
    for dash, exprs in queries.items():
        assert exprs, f"{dash} has no queries"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{dash}: no metric found in {expr!r}"
            unknown = names - declared.keys()
            assert not unknown, f"{dash} queries {sorted(unknown)}, which serving does not export ({expr!r})"


def test_promql_metric_names() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{endpoint="/predict", x=~"5.."}[5m])) / ignoring(le) group_left '
        "sum(rate(a_count[15m])) > 0.5 and on (job) up"
    )
    assert metric_names(expr) == {"a_bucket", "a_count", "up"}
