"""Build real processed datasets for training tests: simulator -> warehouse -> collection -> splits.

The data layer's own functions, called without Prefect (the flows wrap exactly these), so a test
trains on what the training flow reads in production: ``core.data.datasets.latest_processed()``.
"""

from __future__ import annotations

from core.settings import get_settings


def build_processed_data() -> str:
    """Seed the simulator warehouse, collect it and build the splits; returns the processed version."""
    from core.data import collection
    from core.data.splits import build_splits
    from demo.simulator import seed_warehouse

    settings = get_settings()
    settings.state.mkdir(parents=True, exist_ok=True)
    seed_warehouse(settings)
    plan = collection.plan_window(settings, None)
    result = collection.pull_and_stage(settings, plan)
    collection.finish(settings, plan, result, None)
    return str(build_splits(settings)["version"])


# Small and fast: ~16k rows, 2% fraud, so a fit takes well under a second.
SMALL_DATA_ENV = {
    "MLOPS_SIMULATOR__DAYS": "16",
    "MLOPS_SIMULATOR__ROWS_PER_DAY": "1000",
    "MLOPS_SPLITS__REFERENCE_ROWS": "2000",
    "MLOPS_TRAINING__CV_FOLDS": "2",
    "MLOPS_TRAINING__DIAGNOSTICS_ROWS": "1000",
    "MLOPS_GATE__N_BOOTSTRAP": "200",
    "MLOPS_GATE__MIN_SLICE_ROWS": "300",
}
