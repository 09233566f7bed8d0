"""Security properties that can be checked without a running server (docs/security.md lists them all).

- servers bind 127.0.0.1 unless a deployment says otherwise;
- every /admin route requires the admin key, and no key configured means no admin at all;
- nothing in serving/ can load a model through pickle: no pickle-family import, skops only, and a
  model file holding a type nobody trusted is refused before any of its code runs;
- secrets have no defaults in code or in the settings file, and do not leak through repr.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import PROJECT_ROOT, Settings, get_settings

SERVING = PROJECT_ROOT / "serving"
# The model loader serving runs: the artefact module owns loading for every consumer.
LOADER = PROJECT_ROOT / "core" / "registry" / "artefact.py"


# ---- binding --------------------------------------------------------------------------------------
def test_serving_binds_loopback_by_default(state_dir: Path) -> None:
    assert get_settings().serving.host == "127.0.0.1"
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "settings.yaml").read_text())
    assert raw["serving"]["host"] == "127.0.0.1"
    # The serve command passes the setting to uvicorn rather than a literal of its own.
    main = (SERVING / "__main__.py").read_text()
    assert "host=settings.serving.host" in main and "0.0.0.0" not in main


def test_mlflow_and_prefect_servers_bind_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from core import servers

    commands: list[list[str]] = []

    class Fake:
        pid = 0

    def fake_spawn(name: str, cmd: list[str], *args: Any, **kwargs: Any) -> Fake:
        commands.append(list(cmd))
        return Fake()

    monkeypatch.setattr(servers, "spawn", fake_spawn)
    monkeypatch.setattr(servers, "wait_http", lambda *a, **k: None)
    servers.start_mlflow("sqlite:///x.db", tmp_path / "a", tmp_path / "m.log", port=1)
    servers.start_prefect(tmp_path / "home", tmp_path / "p.log", port=2)
    assert len(commands) == 2
    for cmd in commands:
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1", cmd


def test_servers_and_deployments_switch_vendor_usage_reporting_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Evidently's UI and MLflow send usage events to their vendors unless DO_NOT_TRACK /
    MLFLOW_DISABLE_TELEMETRY say not to: every process core.servers starts has them, a user's own value wins,
    and the Makefile, compose and Kubernetes environments set them as they set Prefect's analytics off."""
    from core.servers import NO_USAGE_REPORTING, spawn

    for key in NO_USAGE_REPORTING:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # the user's choice
    out = tmp_path / "env.log"
    spawn("env", ["env"], out).wait(timeout=30)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["DO_NOT_TRACK"] == "true" and env["MLFLOW_DISABLE_TELEMETRY"] == "false"

    makefile = (PROJECT_ROOT / "Makefile").read_text()
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    configmap = yaml.safe_load((PROJECT_ROOT / "deploy" / "k8s" / "base" / "configmap.yaml").read_text())
    app_env = next(
        s["environment"] for s in compose["services"].values() if "MLOPS_PROJECT_ROOT" in s.get("environment", {})
    )
    for key, value in NO_USAGE_REPORTING.items():
        assert f"export {key} := {value}" in makefile, key
        assert app_env[key] == value and configmap["data"][key] == value, key


# ---- the admin key --------------------------------------------------------------------------------
def _routes(routes: list[Any]) -> list[Any]:
    """Flattened: FastAPI 0.150 keeps included routers as one entry holding the original router."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        out += _routes(inner.routes) if inner is not None else [r]
    return out


def _admin_routes(app: Any) -> list[Any]:
    routes = [r for r in _routes(app.routes) if getattr(r, "path", "").startswith("/admin")]
    # Cross-check with what the API publishes: a route the flattening missed would escape the checks.
    published = {p for p in app.openapi()["paths"] if p.startswith("/admin")}
    assert published and published == {r.path for r in routes}, (published, [r.path for r in routes])
    return routes


def test_every_admin_route_depends_on_the_admin_key(state_dir: Path) -> None:
    from serving.app import create_app
    from serving.deps import require_admin_key

    routes = _admin_routes(create_app())
    assert routes, "no /admin routes found: the check below would pass vacuously"

    def calls(dependant: Any) -> set[Any]:
        found = {dependant.call}
        for sub in dependant.dependencies:
            found |= calls(sub)
        return found

    for route in routes:
        assert require_admin_key in calls(route.dependant), f"{route.path} does not require the admin key"


@pytest.mark.parametrize(
    ("configured", "sent", "status"),
    [
        (None, None, 403),  # no key configured: admin is off, whatever is sent
        (None, "anything", 403),
        ("s3cret-admin", None, 401),
        ("s3cret-admin", "wrong", 401),
        ("s3cret-admin", "s3cret-admin ", 401),  # compared exactly, not stripped
    ],
)
def test_admin_refuses_without_the_right_key(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, configured: str | None, sent: str | None, status: int
) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    if configured:
        monkeypatch.setenv("MLOPS_ADMIN_API_KEY", configured)
    # No `with`: the lifespan (registry, prediction log) does not run; the key check comes first.
    client = TestClient(create_app(), raise_server_exceptions=True)
    headers = {"X-API-Key": sent} if sent is not None else {}
    for route in _admin_routes(client.app):
        for method in route.methods:
            r = client.request(method, route.path, headers=headers)
            assert r.status_code == status, (route.path, r.text)
            assert configured is None or configured not in r.text


# ---- no pickle on the model path --------------------------------------------------------------------
PICKLE_FAMILY = {"pickle", "cloudpickle", "dill", "joblib", "_pickle", "shelve", "marshal"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [*sorted(SERVING.rglob("*.py")), LOADER], ids=lambda p: p.name)
def test_serving_imports_no_pickle_family_module(path: Path) -> None:
    assert not (_imports(path) & PICKLE_FAMILY), f"{path.name} imports {_imports(path) & PICKLE_FAMILY}"


def test_serving_loads_models_only_with_skops_and_an_explicit_trust_list() -> None:
    """Every skops load in serving/ and its loader passes `trusted=` a list (never True), and no mlflow
    loader is used: `mlflow.sklearn.load_model` / `mlflow.pyfunc.load_model` would unpickle a cloudpickle
    flavor."""
    loads = []
    for path in [*SERVING.rglob("*.py"), LOADER]:
        text = path.read_text()
        assert not re.search(r"\b(mlflow|sklearn|pyfunc)\.load_model\(", text), f"{path.name} calls an mlflow loader"
        for node in ast.walk(ast.parse(text)):
            func = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and ast.unparse(func.value) in ("sio", "skops.io")
            ):
                loads.append((path.name, node))
    assert loads, "no skops load found: the model loader moved; update this test"
    for name, node in loads:
        trusted = [k for k in node.keywords if k.arg == "trusted"]
        assert trusted, f"{name}: skops load without trusted="
        value = trusted[0].value
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{name}: trusted=True trusts anything"


def _model_dir(tmp_path: Path, obj: Any, flavor: dict[str, Any]) -> Path:
    import skops.io as sio

    d = tmp_path / "model"
    d.mkdir()
    sio.dump(obj, d / "model.skops")
    (d / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {"pickled_model": "model.skops", **flavor}}}))
    return d


def test_a_model_file_with_an_untrusted_type_is_refused(tmp_path: Path) -> None:
    """A Pipeline whose step would call os.system: its MLmodel trusts only scikit-learn types,
    so loading stops at the type check and the function is never resolved, let alone called."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from skops.io.exceptions import UntrustedTypesFoundException

    from core.registry.artefact import load_pipeline

    marker = tmp_path / "pwned"
    hostile = Pipeline([("step", FunctionTransformer(os.system, kw_args={"command": f"touch {marker}"}))])
    d = _model_dir(tmp_path, hostile, {"serialization_format": "skops", "skops_trusted_types": ["numpy.dtype"]})
    with pytest.raises(UntrustedTypesFoundException, match="system"):
        load_pipeline(d)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle", None])
def test_a_pickle_flavor_is_refused_before_reading_the_file(tmp_path: Path, fmt: str | None) -> None:
    from sklearn.linear_model import LogisticRegression

    from core.registry.artefact import ModelFormatError, load_pipeline

    d = _model_dir(tmp_path, LogisticRegression(), {"serialization_format": fmt} if fmt else {})
    # The file is not even opened: replace it with bytes that would fail any loader.
    (d / "model.skops").write_bytes(b"\x80\x04not a model")
    with pytest.raises(ModelFormatError, match="only skops"):
        load_pipeline(d)


# ---- secrets ------------------------------------------------------------------------------------------
def _secret_fields(model: type[Any], prefix: str = "") -> list[tuple[str, Any]]:
    from pydantic import BaseModel, SecretStr

    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _secret_fields(ann, f"{prefix}{name}.")
        elif SecretStr in getattr(ann, "__args__", ()) or ann is SecretStr:
            out.append((prefix + name, field.default))
    return out


def test_secrets_have_no_default_and_are_not_in_the_settings_file() -> None:
    secrets = _secret_fields(Settings)
    assert {n for n, _ in secrets} >= {"admin_api_key", "serving.api_key"}
    assert all(default is None for _, default in secrets), secrets

    def keys(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            return [k for key, v in node.items() for k in [prefix + str(key), *keys(v, f"{prefix}{key}.")]]
        return []

    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "settings.yaml").read_text())
    secret_like = [k for k in keys(raw) if any(w in k.lower() for w in ("key", "password", "secret", "token"))]
    assert secret_like == [], f"secret-looking settings in configs/settings.yaml: {secret_like}"


def test_production_needs_the_admin_key_and_secrets_do_not_leak_through_repr(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="MLOPS_ADMIN_API_KEY"):
        get_settings()
    monkeypatch.setenv("MLOPS_ADMIN_API_KEY", "very-secret-admin")
    monkeypatch.setenv("MLOPS_SERVING__API_KEY", "very-secret-client")
    settings = get_settings()
    text = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "very-secret" not in text


def test_no_env_file_or_key_material_is_tracked_by_git() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    leaked = [
        p for p in tracked if Path(p).name == ".env" or p.endswith((".pem", ".key", ".p12")) or "id_rsa" in Path(p).name
    ]
    assert leaked == []
    example = (PROJECT_ROOT / ".env.example").read_text()
    for line in example.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert value.strip() == "", f".env.example ships a value for {key}"
