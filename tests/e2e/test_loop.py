"""The whole loop with real servers, as `make demo` runs it, on small simulated data.

One stack for the module (MLflow server, Prefect server, process worker, deployments, uvicorn):
every deployment in prefect.yaml is run with `prefect deployment run`, the API serves the
champion, traffic without drift must not trigger retraining, traffic with concept drift must, the
retraining deployment runs on the worker, the gate decides, and the API answers with whatever the
gate decided. `make stop` (stack.down) must leave no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.servers import VENV_BIN
from core.settings import PROJECT_ROOT, Settings
from tests.dashboards import empty_lines, workspace_panels
from tests.e2e.stacks import deployment_run, loop_env
from tests.webhook import Receiver, webhook_receiver

pytestmark = pytest.mark.slow


class Live:
    def __init__(self, settings: Settings, stack: object, env: dict[str, str], webhook: Receiver) -> None:
        from demo.stack import Stack

        assert isinstance(stack, Stack)
        self.settings = settings
        self.stack = stack
        self.env = env
        self.webhook = webhook

    @property
    def api(self) -> str:
        assert self.stack.api_url
        return self.stack.api_url

    def deployment_run(self, name: str, *params: str, timeout: float = 600) -> str:
        return deployment_run(self.env, name, *params, timeout=timeout)

    def champion(self) -> str | None:
        from demo.loop import _champion_version

        return _champion_version(self.settings)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from demo import stack

    state = tmp_path_factory.mktemp("e2e-state")
    with webhook_receiver() as receiver:
        env = {**loop_env(), "MLOPS_NOTIFICATIONS__WEBHOOK_URL": receiver.url}
        with stack.temporary(state, env) as (settings, s):
            pids = [c.pid for c in s.components.values()]
            live = Live(settings, s, dict(os.environ), receiver)
            yield live
            pids += [c.pid for c in stack.load(settings).components.values()]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"process {pid} survived make stop"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_deployments_are_registered(live: Live) -> None:
    out = subprocess.run(
        [str(VENV_BIN / "prefect"), "deployment", "ls"], env=live.env, capture_output=True, text=True, check=True
    ).stdout
    for name in ("collect", "preprocess", "train", "tune", "monitor", "retrain", "rollback", "score"):
        assert f"{name}/{name}" in out, f"deployment {name}/{name} missing:\n{out}"


def test_collect_preprocess_train_deployments(live: Live) -> None:
    live.deployment_run("collect/collect")
    manifest = json.loads(max((live.settings.data_dir / "manifests").glob("collect-*.json")).read_text())
    assert manifest["rows_loaded"] > 0
    live.deployment_run("preprocess/preprocess")
    assert (live.settings.data_dir / "processed" / "latest.json").exists()
    live.deployment_run("train/train")
    assert live.champion() == "1", "the first model must beat the trivial baseline and become champion"


def test_api_serves_the_champion(live: Live) -> None:
    from demo import stack

    live.stack = stack.up_api(live.settings, live.stack)
    body = httpx.get(f"{live.api}/model", timeout=10).json()
    assert body["version"] == "1"
    assert body["card"], "the model card travels with the served model"


def test_traffic_without_drift_does_not_retrain(live: Live) -> None:
    from demo.loop import turn

    t = turn(live.settings, live.api, live.stack.prefect_api_url, scenario="none", days=5, seed=101)
    assert t.traffic.failures == 0
    assert t.traffic.rows > 0
    assert t.monitor["status"] == "ok", t.monitor
    assert not t.monitor["retrain"], f"control run triggered retraining: {t.monitor.get('reasons')}"
    assert t.version_after == "1"


def test_concept_drift_retrains_and_the_gate_decides(live: Live) -> None:
    from demo.loop import turn

    t = turn(live.settings, live.api, live.stack.prefect_api_url, scenario="concept_drift", days=21, seed=202)
    assert t.traffic.failures == 0
    assert t.monitor["retrain"] and t.monitor["triggered"], t.monitor
    assert t.retrain_state == "COMPLETED"
    from core.registry import aliases as registry

    latest = max(int(v.version) for v in registry.client().search_model_versions(f"name='{live.settings.model_name}'"))
    mv = registry.client().get_model_version(live.settings.model_name, str(latest))
    assert mv.tags["decision"] in ("promoted", "challenger"), mv.tags
    assert mv.tags["reason"]
    events = live.webhook.events()
    assert "drift_detected" in events and "retraining_finished" in events, events
    assert events.count("promotion_decision") >= 2, "the first model's decision and this one's"
    # Retraining gates its default-params model and its tuned best: the API follows whichever is champion.
    champion = live.champion()
    assert t.version_after == champion, "the API must serve the registry's champion by itself"
    if champion != "1":
        assert t.loop_seconds is not None


def test_tune_monitor_and_rollback_deployments(live: Live) -> None:
    live.deployment_run("tune/tune", "n_trials=3", 'families=["logistic"]', "register_best=false")
    live.deployment_run("monitor/monitor", "trigger=false")
    live.deployment_run("rollback/rollback", "version=1", "reason=e2e rollback check")
    assert live.champion() == "1"
    # Every worker follows the alias: the API is back on v1 within its poll interval.
    from demo.loop import wait_for_version

    record = json.loads((PROJECT_ROOT / "examples" / "record.json").read_text())
    wait_for_version(live.api, record, "1", timeout_s=30)


def test_every_evidently_panel_shows_a_value(live: Live, tmp_path: Path) -> None:
    """After the demo's monitoring runs, the Evidently UI has a value in every panel (read through its API)."""
    from monitoring.reports import workspace_dir

    dashboards = workspace_panels(workspace_dir(live.settings), tmp_path / "evidently.log")
    assert len(dashboards) == 1, list(dashboards)
    [panels] = dashboards.values()
    assert [p for p in panels if p["kind"] == "text" and "columns drifted" in p["title"]], panels
    assert not empty_lines(panels), f"Evidently panels with a line and no point: {empty_lines(panels)}"
