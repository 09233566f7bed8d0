"""Flow `promote`: run the promotion gate on a registered model version.

The logic lives in core.registry.promotion (the train and tune flows gate their candidates through it
too); this flow is the entry point for a version registered earlier.

Run: ``python -m pipelines.promote --version 3``
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from core.registry.promotion import gate_version
from core.registry.tracking import use_experiment
from core.settings import get_settings
from pipelines import events
from pipelines.entry import run_main


@flow(name="promote", log_prints=True)
def promote(version: int) -> dict[str, Any]:
    """Gate an already registered version against the current champion on the current holdout."""
    settings = get_settings()
    use_experiment(settings)
    # MLflow's client takes version numbers as strings.
    result = gate_version(str(version), settings)
    decision = result["decision"]
    print(f"{settings.model_name} v{result['version']}: {decision['decision']}: {decision['reason']}")
    events.gate_decided(settings.model_name, result["version"], decision)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the promotion gate on a registered model version.")
    parser.add_argument("--version", type=int, required=True)
    args = parser.parse_args()
    print(promote(version=args.version))


if __name__ == "__main__":
    run_main(main)
