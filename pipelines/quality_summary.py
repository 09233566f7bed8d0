"""The newest registered version's holdout metrics against the champion's, as a Markdown table.

For CI (.github/workflows/ci.yml, the model-quality job) and for people: it reads only the registry, so it
works for any dataset contract and task (the metrics are whatever the training run logged as
``holdout_<metric>``). The candidate is the newest version (or ``--version``); it is compared with the
version it was gated against: the champion, or, when the candidate itself became champion, the
previous champion; with no champion at all, the version registered before it.

    python -m pipelines.quality_summary              # appends to $GITHUB_STEP_SUMMARY when set, else prints
    python -m pipelines.quality_summary --version 4 --out summary.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.modeling.catalogue import higher_is_better
from core.settings import Settings, SettingsError, get_settings
from pipelines.entry import run_main

PREFIX = "holdout_"


@dataclass
class Side:
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Comparison:
    model: str
    candidate: Side
    reference: Side | None
    reference_alias: str


def _side(client: Any, name: str, version: Any) -> Side:
    metrics: dict[str, float] = {}
    if version.run_id:
        run = client.get_run(version.run_id)
        metrics = {k[len(PREFIX) :]: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}
    return Side(version=str(version.version), metrics=metrics, tags=dict(version.tags or {}))


def compare(settings: Settings, version: str | None = None) -> Comparison:
    """Read the candidate and the version it is judged against from the registry."""
    from mlflow import MlflowClient

    from core.registry.aliases import CHAMPION, PREVIOUS, version_by_alias

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.model_name
    if version is None:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise LookupError(f"no registered version of {name} at {settings.mlflow_tracking_uri}")
        candidate_mv = max(versions, key=lambda v: int(v.version))
    else:
        candidate_mv = client.get_model_version(name, version)
    champion = version_by_alias(name, CHAMPION, client)
    alias, reference_mv = CHAMPION, champion
    if champion is not None and str(champion.version) == str(candidate_mv.version):
        alias, reference_mv = PREVIOUS, version_by_alias(name, PREVIOUS, client)
    if reference_mv is None and int(candidate_mv.version) > 1:
        # No champion at all (every version so far was rejected): the version registered before it,
        # in CI the base branch's model.
        alias, reference_mv = "previous version", client.get_model_version(name, str(int(candidate_mv.version) - 1))
    reference = _side(client, name, reference_mv) if reference_mv is not None else None
    return Comparison(name, _side(client, name, candidate_mv), reference, alias)


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4f}"


def markdown(c: Comparison) -> str:
    """The job summary: the gate's decision, then one row per holdout metric."""
    tags = c.candidate.tags
    primary = tags.get("primary_metric", "")
    lines = [f"### Model quality: {c.model} v{c.candidate.version}", ""]
    if tags.get("decision"):
        lines.append(f"Gate: **{tags['decision']}** against {tags.get('gate_against', '?')}: {tags.get('reason', '')}")
    if c.reference is None:
        lines.append("No champion to compare with: this is the first model of this registry.")
        against = "-"
    else:
        against = f"{c.reference_alias} v{c.reference.version}"
    header = f"| holdout metric | candidate v{c.candidate.version} | {against} | difference | |"
    lines += ["", header, "|---|---:|---:|---:|---|"]
    reference = c.reference.metrics if c.reference else {}
    for metric in sorted(set(c.candidate.metrics) | set(reference), key=lambda m: (m != primary, m)):
        ours, theirs = c.candidate.metrics.get(metric), reference.get(metric)
        delta = ours - theirs if ours is not None and theirs is not None else None
        verdict = ""
        if delta is not None and not math.isnan(delta) and delta != 0:
            better = (delta > 0) == _higher_is_better(metric)
            verdict = "better" if better else "worse"
        name = f"**{metric}** (primary)" if metric == primary else metric
        sign = f"{delta:+.4f}" if delta is not None and not math.isnan(delta) else "-"
        lines.append(f"| {name} | {_fmt(ours)} | {_fmt(theirs)} | {sign} | {verdict} |")
    if not c.candidate.metrics and not reference:
        lines.append("| (no holdout metrics logged) | | | | |")
    return "\n".join(lines) + "\n"


def _higher_is_better(metric: str) -> bool:
    try:
        return higher_is_better(metric)
    except Exception:  # a metric outside the catalogue (logged by a fork): assume a score
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", help="the candidate version (default: the newest)")
    parser.add_argument("--out", type=Path, help="append here (default: $GITHUB_STEP_SUMMARY, else stdout)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        text = markdown(compare(settings, args.version))
    except (SettingsError, LookupError) as exc:
        print(f"quality summary: {exc}", file=sys.stderr)
        return 1
    out = args.out or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if out is None:
        sys.stdout.write(text)
    else:
        with out.open("a", encoding="utf-8") as fh:
            fh.write(text)
        print(f"quality summary appended to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
