"""Prefect flow ``collect``: pull new rows from the configured source, validate, snapshot.

Thin on purpose: each task calls one function of core.data.collection (which holds the logic and is
Prefect-free). Run it as ``python -m pipelines.collect [--as-of ISO] [--max-bad-share X]``, as a
plain Python call (``collect()``) or as a deployment under a Prefect server.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from core.data import collection
from core.data.collection import CollectionError, CollectionPlan, PullResult
from core.data.validation import SchemaMismatchError
from core.settings import Settings, get_settings
from pipelines.entry import run_main

RETRY_DELAYS: list[float] = [1, 2, 5]


def _retry_unless_refused(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry I/O faults; a refused batch or a wrong schema fails the same way every time."""
    return not isinstance(state.data, CollectionError | SchemaMismatchError)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_unless_refused, cache_policy=NO_CACHE)
def seed_empty_warehouse(settings: Settings) -> str | None:
    if settings.source.kind != "simulator":
        return None
    try:
        from demo.simulator import seed_warehouse
    except ImportError:
        raise CollectionError(
            "source.kind is 'simulator' but the demo package is not installed: point source at your data"
        ) from None
    written = seed_warehouse(settings)
    if written is not None:
        print(
            f"seeded the empty warehouse with {written.rows_written} simulated rows ({written.start} .. {written.end})"
        )
    return settings.warehouse_url


@task(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_unless_refused, cache_policy=NO_CACHE)
def plan_window(settings: Settings, as_of: str | None) -> CollectionPlan:
    return collection.plan_window(settings, as_of)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_unless_refused, cache_policy=NO_CACHE)
def pull_and_stage(settings: Settings, plan: CollectionPlan) -> PullResult:
    return collection.pull_and_stage(settings, plan)


@task(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_unless_refused, cache_policy=NO_CACHE)
def publish_or_refuse(
    settings: Settings, plan: CollectionPlan, result: PullResult, max_bad_share: float | None
) -> dict[str, Any]:
    return collection.finish(settings, plan, result, max_bad_share)


@flow(name="collect", log_prints=True)
def collect(as_of: str | None = None, max_bad_share: float | None = None, seed_if_empty: bool = True) -> dict[str, Any]:
    """One incremental collection run; returns its manifest (raises CollectionError on a refused batch).

    ``as_of`` (ISO timestamp) defaults to the source's newest timestamp; ``max_bad_share`` overrides
    ``collection.max_bad_share``; ``seed_if_empty`` fills an empty simulator warehouse first.
    """
    settings = get_settings()
    if seed_if_empty:
        seed_empty_warehouse(settings)
    plan = plan_window(settings, as_of)
    result = pull_and_stage(settings, plan)
    manifest = publish_or_refuse(settings, plan, result, max_bad_share)
    print(f"manifest: {settings.data_dir / 'manifests' / ('collect-' + manifest['run_id'] + '.json')}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Collect new rows into immutable Parquet snapshots.")
    parser.add_argument("--as-of", default=None, help="ISO timestamp; default: the source's newest row")
    parser.add_argument("--max-bad-share", type=float, default=None)
    args = parser.parse_args(argv)
    settings = get_settings()
    collect(as_of=args.as_of, max_bad_share=args.max_bad_share)
    print(f"raw snapshots: {settings.data_dir / 'raw'}")
    print(f"quarantine:    {settings.data_dir / 'quarantine'}")
    print(f"watermark:     {settings.data_dir / 'state' / 'watermark.json'}")


if __name__ == "__main__":
    run_main(main)
