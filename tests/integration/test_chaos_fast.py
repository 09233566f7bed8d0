"""The fast chaos scenarios of `make chaos` (benchmarks/chaos.py), shortened, as tests.

Same code as the benchmark, smaller numbers: the registry killed and restarted under load, the
PostgreSQL prediction log cut off under load, corrupt and schema-broken batches at the source, and
three champion swaps under load. Each asserts the scenario's own verdict and shows its problems
and details when it fails. The Prefect scenarios (a retraining run killed half-way, a server
restart under a schedule) take minutes and run in `make chaos` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.chaos import Context, corrupt_batch, mlflow_down, prediction_store_down, swap_under_load
from benchmarks.chaos_support import ScenarioResult

pytestmark = pytest.mark.slow


def verdict(result: ScenarioResult) -> None:
    result.finish()
    report = json.dumps(result.to_dict(), indent=1, default=str)[:6000]
    assert result.passed, report
    assert result.failures == 0 and result.rows_lost == 0, report


@pytest.fixture
def ctx(mlflow_server: str, tmp_path: Path, state_dir: Path) -> Context:
    return Context(tmp_path / "chaos", mlflow_server)


def test_registry_down_keeps_serving_the_champion_and_recovers(ctx: Context) -> None:
    result = mlflow_down(ctx, down_s=4.0, concurrency=4, timeout_s=180)
    verdict(result)
    assert result.detail["requests_while_down"] > 0
    assert result.detail["ready_while_down"]["registry_reachable"] is False
    assert result.detail["load"]["versions"].keys() == {"1", "2"}  # the new champion after the return


@pytest.mark.postgres
def test_prediction_store_down_loses_no_row(ctx: Context) -> None:
    result = prediction_store_down(ctx, down_s=4.0, concurrency=4, timeout_s=180)
    verdict(result)
    assert result.detail["requests_while_down"] > 0 and result.detail["rows_spooled"] > 0
    assert result.detail["log"]["stored_rows"] == result.detail["log"]["expected_rows"] > 0


def test_corrupt_batches_are_quarantined_and_nothing_is_lost(ctx: Context) -> None:
    result = corrupt_batch(ctx, rows_per_day=200)
    verdict(result)
    assert result.detail["refused"]["rows"]["quarantined"] > 0
    assert "channel" in result.detail["schema_break"]


def test_three_swaps_under_load_never_fail_or_mix_versions(ctx: Context) -> None:
    result = swap_under_load(ctx, requests=3_000, concurrency=16, swaps=3, timeout_s=240)
    verdict(result)
    assert len(result.detail["load"]["versions"]) == 4
    assert result.detail["log"]["rows_with_another_version"] == 0
