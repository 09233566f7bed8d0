"""Prefect flow ``preprocess``: time-ordered train / validation / test / holdout splits + reference.

Run it as ``python -m pipelines.preprocess``, as a plain Python call (``preprocess()``) or as a
deployment. The logic lives in core.data.splits; readers use core.data.datasets.latest_processed().
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from core.data.splits import PreprocessError, build_splits
from core.settings import Settings, get_settings
from pipelines.entry import run_main

RETRY_DELAYS: list[float] = [1, 2, 5]


def _retry_io_only(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Too few rows or no snapshots fail the same way every time: no point retrying."""
    return not isinstance(state.data, PreprocessError)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_io_only, cache_policy=NO_CACHE)
def build_processed_datasets(settings: Settings) -> dict[str, Any]:
    return build_splits(settings)


@flow(name="preprocess", log_prints=True)
def preprocess() -> dict[str, Any]:
    """Build (or reuse) the processed datasets version for the current raw snapshots; returns its manifest."""
    manifest = build_processed_datasets(get_settings())
    for name, split in manifest["splits"].items():
        print(f"  {name:<10} {split['rows']:>10} rows  {split['time_min']} .. {split['time_max']}")
    return manifest


def main() -> None:
    settings = get_settings()
    manifest = preprocess()
    out = settings.data_dir / "processed" / manifest["version"]
    print(f"processed datasets: {out} (pointer: {settings.data_dir / 'processed' / 'latest.json'})")


if __name__ == "__main__":
    run_main(main)
