"""The model card: a version's description in the registry, in words a reviewer outside ML can follow.

Markdown, because the MLflow UI renders a version's description as Markdown: what the model is for,
what data it saw, how it did on cross-validation, test and the frozen holdout, per slice, and what
the promotion gate decided and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.contract import DatasetContract
from core.modeling.gate import Decision


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(
    *,
    contract: DatasetContract,
    model_name: str,
    family: str,
    params: Mapping[str, Any],
    threshold: float,
    data_version: str,
    window: tuple[str, str],
    holdout_window: tuple[str, str],
    cv_metrics: Mapping[str, float],
    test_metrics: Mapping[str, float],
    holdout_metrics: Mapping[str, float],
    slices: Mapping[str, Mapping[str, float]],
    decision: Decision,
    run_id: str,
) -> str:
    """Markdown for the version's description: what the model is for, what it saw, how it did, the verdict."""
    metric_names = list(test_metrics)
    lines = [
        f"# {model_name}: {family}",
        "",
        "## Intended use",
        f"{contract.description.strip() or contract.name} Task: {contract.task}; target `{contract.target.name}`"
        + (f", positive class {contract.target.positive_class!r}" if contract.task == "binary" else "")
        + ". Scores one row of the contract's input columns; the id column is ignored.",
        f"Decision threshold on P(positive): **{threshold:.4f}** (max F1 on validation)."
        if contract.task == "binary"
        else "",
        "Not for: data outside the contract's columns and ranges, or far outside the training window.",
        "",
        "## Data",
        f"- data version `{data_version}`; training/selection window {window[0]} .. {window[1]}",
        f"- frozen holdout window {holdout_window[0]} .. {holdout_window[1]}",
        "",
        "## Metrics",
        "| metric | CV (train, mean) | test | holdout |",
        "|---|---|---|---|",
        *(
            f"| {m} | {_fmt(cv_metrics.get(m, ''))} | {_fmt(test_metrics.get(m, ''))} | "
            f"{_fmt(holdout_metrics.get(m, ''))} |"
            for m in metric_names
        ),
        "",
        "## Slices (holdout)",
        "| slice | rows | " + " | ".join(metric_names) + " |",
        "|---|---|" + "---|" * len(metric_names),
        *(
            f"| {s} | {int(v.get('rows', 0))} | " + " | ".join(_fmt(v.get(m, "")) for m in metric_names) + " |"
            for s, v in slices.items()
        ),
        "",
        "## Decision",
        f"**{decision.decision}** against the {decision.against}: {decision.reason}",
        f"- {decision.primary_metric}: candidate {decision.candidate_score:.4f}, "
        f"{decision.against} {decision.reference_score:.4f}, improvement {decision.delta:+.4f} "
        f"(CI [{decision.ci_low:+.4f}, {decision.ci_high:+.4f}])",
        f"- single-row latency {decision.latency_ms:.2f} ms",
        "",
        "## Parameters",
        *(f"- `{k}` = {v}" for k, v in params.items()),
        "",
        f"Training run: `{run_id}`",
    ]
    return "\n".join(lines)
