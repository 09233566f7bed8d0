"""Prefect flow ``score``: batch-score the raw snapshot's partitions with a registered version.

Thin: the work is core.inference.scoring (Prefect-free), which uses the API's predictor and the
contract's checker. Run it as ``mlops run score [-p version=3] [-p dates='["2026-02-01"]']``,
``python -m pipelines.score``, a plain call (``score()``) or the ``score/score`` deployment.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from core.inference import scoring
from core.settings import Settings, get_settings
from pipelines.entry import run_main


@task(cache_policy=NO_CACHE)
def score_partitions(
    settings: Settings,
    *,
    version: str | None,
    dates: list[str] | None,
    start: str | None,
    end: str | None,
    rescore: bool,
) -> dict[str, Any]:
    # No retries: a failed run leaves its finished partitions marked done, and the next run resumes there.
    return scoring.score(settings, version=version, dates=dates, start=start, end=end, rescore=rescore)


@flow(name="score", log_prints=True)
def score(
    version: int | None = None,
    dates: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    rescore: bool = False,
) -> dict[str, Any]:
    """Score raw partitions and return the run's manifest (read, scored, refused per partition).

    ``version``: a registered version (default: the ``scoring.model_alias`` version). ``dates`` (ISO
    dates) or ``start``/``end`` choose partitions; neither: ``scoring.partitions`` (``new``: those not
    scored yet). Done partitions are skipped unless ``rescore``.
    """
    settings = get_settings()
    manifest = score_partitions(
        settings, version=None if version is None else str(version), dates=dates, start=start, end=end, rescore=rescore
    )
    print(
        f"{manifest['model_name']} v{manifest['model_version']} ({manifest['runtime']}): "
        f"{manifest['read']} read = {manifest['scored']} scored + {manifest['refused']} refused, "
        f"{manifest['partitions_scored']} partitions scored, {manifest['partitions_skipped']} skipped; "
        f"output {manifest['output_dir']} ({manifest['executor']})"
    )
    explained = manifest.get("explain")
    if explained and explained["method"] == "unavailable":
        print(f"scoring.explain={explained['k']}: reason-code columns left null: {explained['reason']}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Batch-score the raw snapshot with a registered model.")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--dates", nargs="*", default=None)
    parser.add_argument("--start", default=None)
    parser.add_argument("--end", default=None)
    parser.add_argument("--rescore", action="store_true")
    args = parser.parse_args(argv)
    manifest = score(version=args.version, dates=args.dates, start=args.start, end=args.end, rescore=args.rescore)
    print(json.dumps({k: v for k, v in manifest.items() if k != "partitions"}, indent=2, default=str))


if __name__ == "__main__":
    run_main(main)
