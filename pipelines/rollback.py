"""Flow `rollback`: point `champion` back at an earlier model version and record why.

The replaced champion keeps `previous-champion`; both versions get tags saying when and why, and
the restored version's model card gets a rollback note. Serving picks the change up through the
alias (``models:/<name>@champion``).

Run: ``python -m pipelines.rollback --version 2 --reason "v3 doubles false alarms in FR"``
"""

from __future__ import annotations

import argparse

from prefect import flow

from core.registry import aliases as registry
from core.settings import get_settings
from pipelines import events
from pipelines.entry import run_main


@flow(name="rollback", log_prints=True)
def rollback(version: int, reason: str) -> dict[str, str]:
    """Make registered `version` the champion again; `reason` is recorded on both versions."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    from core.registry.tracking import use_experiment

    settings = get_settings()
    use_experiment(settings)
    result = registry.rollback(settings.model_name, str(version), reason)
    print(f"{settings.model_name}: champion -> v{result['champion']} (was v{result['previous_champion']}): {reason}")
    events.emit(events.ROLLBACK_DONE, settings.model_name, {**result, "reason": reason})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Make an earlier model version the champion again.")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--reason", required=True)
    args = parser.parse_args()
    rollback(version=args.version, reason=args.reason)


if __name__ == "__main__":
    run_main(main)
