"""The Evidently dashboard shows a value in every panel, read back through a real `evidently ui` server.

For each task (generated, non-fraud data): two monitoring results are added to the workspace the way the
monitor flow adds them, the first without drift (a share of 0, which Evidently 0.7.23's counter panel would
show as "no value"), the second with two columns shifted. Then, through the UI's own HTTP API, as its
pages do: every chart panel's every line has at least one point, and the headline names the last run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from core.contract import DatasetContract
from core.servers import Server, start_evidently_ui
from core.settings import Settings, load_settings
from monitoring.drift import compute_drift
from monitoring.reports import add_to_workspace, workspace_dir
from tests.dashboards import empty_lines, evidently_panels
from tests.generated import TASKS, contract_dict, frame_for

pytestmark = pytest.mark.slow


def settings_for(task: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    path = root / f"{task}.yaml"
    path.write_text(yaml.safe_dump(contract_dict(task), allow_unicode=True))
    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml")
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(path))
    monkeypatch.setenv("MLOPS_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("MLOPS_MODEL_NAME", f"dashboard-{task}")
    return load_settings()


def served_rows(contract: DatasetContract, n: int, seed: int, shift: float) -> pd.DataFrame:
    """Rows as the prediction log holds them: features, the prediction (right 80% of the time), the
    positive-class probability for binary, and the label fed back."""
    frame, y = frame_for(contract, n, seed, shift=shift)
    rng = np.random.default_rng(seed + 100)
    right = rng.random(n) < 0.8
    if contract.task == "regression":
        frame["prediction"] = np.where(right, y, y + rng.normal(0, 20, n))
    else:
        classes = np.asarray(TASKS[contract.task]["classes"], dtype=object)
        frame["prediction"] = np.where(right, y, rng.choice(classes, n))
        if contract.task == "binary":
            positive = frame["prediction"] == "churned"
            frame["probability"] = np.where(positive, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    frame["label"] = y
    return frame


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, dict[str, Any]]]]:
    """A workspace holding two runs per task, and `evidently ui` serving it. Yields the last run's
    figures per project name."""
    root = tmp_path_factory.mktemp("dashboards")
    last: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for task in TASKS:
            settings = settings_for(task, root, mp)
            contract = settings.contract
            reference = served_rows(contract, 1_500, seed=1, shift=0.0)
            for run, shift in enumerate((0.0, 1.0)):
                window = served_rows(contract, 800, seed=10 + run, shift=shift)
                result = compute_drift(reference, window, contract)
                if run == 0:
                    assert result.drift_share == 0.0, result.drifted_columns  # the case a counter hides
                add_to_workspace(result, settings, name=f"monitor run {run + 1}")
            assert result.drifted_columns, "the shifted window must drift"
            last[f"{settings.model_name} monitoring"] = {"result": result}
        workspace = workspace_dir(settings)
    server = start_evidently_ui(workspace, root / "evidently.log")
    try:
        yield server, last
    finally:
        server.stop()


def test_every_panel_of_every_project_shows_a_value(ui: tuple[Server, dict[str, dict[str, Any]]]) -> None:
    server, last = ui
    dashboards = evidently_panels(server.url)
    assert set(dashboards) == set(last), list(dashboards)
    for name, panels in dashboards.items():
        result = last[name]["result"]
        [headline] = [p for p in panels if p["kind"] == "text"]
        assert f"{len(result.drifted_columns)} of {len(result.columns)} columns drifted" in headline["title"]
        assert all(c in headline["subtitle"] for c in result.drifted_columns), headline
        assert all(p["lines"] for p in panels if p["kind"] != "text"), "a chart without a line"
        assert not empty_lines(panels), f"{name}: panels with a line and no point: {empty_lines(panels)}"
