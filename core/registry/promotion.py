"""Promotion: score a candidate and the champion on the frozen holdout, apply the gate, record the verdict.

The gate's rule lives in core.modeling.gate (pure and unit-tested); this module feeds it: holdout scores
of the candidate and of the current champion (or a trivial baseline when there is none), slice masks,
single-row latency, and then records the decision on the model version (tags, aliases, model card) and
sends the notification. The train, tune and promote flows all promote through :func:`gate_candidate` or
:func:`gate_version`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from core.modeling.gate import Decision, GateConfig, OnlineEvidence, OnlineRequirement, baseline_scores, decide
from core.modeling.metrics import compute_metrics, slice_masks, slice_metrics
from core.modeling.training import (
    TrainingData,
    encode_target,
    labelled_rows,
    load_training_data,
    model_classes,
    predict_scores,
    refit_pipeline,
    single_row_latency_ms,
    xy,
)
from core.notify import notify
from core.registry import aliases as registry
from core.registry.artefact import load_version
from core.registry.cards import model_card
from core.registry.report import ReportInputs, attach_report, render_report
from core.registry.tracking import LoggedCandidate, log_candidate_model, log_run_batch, provenance_tags
from core.settings import Settings

log = logging.getLogger(__name__)


def gate_config(settings: Settings) -> GateConfig:
    g = settings.gate
    return GateConfig(
        primary_metric=settings.training.primary_metric,
        min_improvement=g.min_improvement,
        confidence=g.confidence,
        n_bootstrap=g.n_bootstrap,
        slice_tolerance=g.slice_tolerance,
        min_slice_rows=g.min_slice_rows,
        min_slice_positives=g.min_slice_positives,
        latency_budget_ms=g.latency_budget_ms,
        seed=settings.seed,
        require_online=(
            None
            if g.require_online is None
            else OnlineRequirement(
                min_labelled_rows=g.require_online.min_labelled_rows,
                confidence=g.require_online.confidence,
                max_regression=g.require_online.max_regression,
            )
        ),
    )


def online_evidence(version: str, champion_version: str, settings: Settings) -> OnlineEvidence:
    """The online comparison of `version` (as the shadow challenger) with the champion, from the whole
    prediction log: only those two versions' rows are read."""
    from core.modeling.online import compare, read_online

    need = settings.gate.require_online
    confidence = need.confidence if need is not None else settings.gate.confidence
    rows, labels = read_online(settings.prediction_log_url, versions=(str(champion_version), str(version)))
    comparison = compare(
        rows,
        labels,
        settings.contract,
        settings.training.primary_metric,
        n_bootstrap=settings.gate.n_bootstrap,
        confidence=confidence,
        seed=settings.seed,
    )
    return comparison.evidence()


def _holdout_window(data: TrainingData) -> tuple[str, str]:
    info = data.info.get("holdout", {})
    return str(info.get("start", "")), str(info.get("end", ""))


@dataclass(frozen=True)
class Evaluation:
    """The gate's verdict and what it was made from (the report reads it all)."""

    decision: Decision
    holdout_metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    reference_metrics: dict[str, float]
    holdout: pd.DataFrame
    y: np.ndarray
    scores: np.ndarray
    classes: list[Any]


def evaluate_and_decide(
    model: Any,
    threshold: float,
    version: str,
    data: TrainingData,
    settings: Settings,
) -> Evaluation:
    """Score candidate and reference on the holdout and apply the gate."""
    contract = settings.contract
    holdout = labelled_rows(data["holdout"], contract)
    X, labels = xy(holdout, contract)
    masks = slice_masks(holdout, contract)
    classes = model_classes(model)
    y = encode_target(labels, contract, classes)
    candidate = predict_scores(model, X, contract)
    champion = registry.version_by_alias(settings.model_name, registry.CHAMPION)
    if champion is not None and str(champion.version) != str(version):
        champ_model, _ = load_version(f"models:/{settings.model_name}/{champion.version}")
        reference = predict_scores(champ_model, X, contract)
        if contract.task == "multiclass":  # the champion's columns in the candidate's class order
            order = [model_classes(champ_model).index(c) for c in classes]
            reference = reference[:, order]
        ref_threshold = float(champion.tags.get("threshold", 0.5))
        against = "champion"
    else:
        _, y_train = xy(data["train"], contract)
        reference = baseline_scores(
            contract.task, encode_target(y_train, contract, classes), len(y), max(len(classes), 2), seed=settings.seed
        )
        ref_threshold = 0.5
        against = "baseline"
    latency = single_row_latency_ms(model, X.head(1))
    online = None
    if settings.gate.require_online is not None and champion is not None and against == "champion":
        online = online_evidence(version, str(champion.version), settings)
    decision = decide(
        contract.task,
        y,
        candidate,
        reference,
        against=against,  # type: ignore[arg-type]
        latency_ms=latency,
        masks=masks,
        config=gate_config(settings),
        threshold_candidate=threshold,
        threshold_reference=ref_threshold,
        online=online,
    )
    holdout_metrics = compute_metrics(contract.task, y, candidate, threshold)
    slices = slice_metrics(
        contract.task, y, candidate, masks, threshold=threshold, min_rows=settings.gate.min_slice_rows
    )
    reference_metrics = compute_metrics(contract.task, y, reference, ref_threshold)
    return Evaluation(decision, holdout_metrics, slices, reference_metrics, holdout, y, candidate, classes)


def write_report(
    evaluation: Evaluation,
    model: Any,
    version: str,
    *,
    family: str,
    threshold: float | None,
    run_id: str,
    data: TrainingData,
    settings: Settings,
) -> str | None:
    """The version's stakeholder report (core.registry.report), logged on its run; None without a run.

    A report that fails does not stop the gate: the failure is logged and tagged on the version
    (``report_error``), so it is seen rather than lost.
    """
    if not run_id:
        return None
    contract = settings.contract
    train_labels = data["train"][contract.target.name].dropna().to_numpy()
    try:
        return _render_and_attach(evaluation, model, version, family, threshold, run_id, data, settings, train_labels)
    except Exception as exc:
        log.exception("the model report of %s v%s failed", settings.model_name, version)
        registry.client().set_model_version_tag(settings.model_name, version, "report_error", str(exc)[:500])
        return None


def _render_and_attach(  # noqa: PLR0917 - the private half of write_report
    evaluation: Evaluation,
    model: Any,
    version: str,
    family: str,
    threshold: float | None,
    run_id: str,
    data: TrainingData,
    settings: Settings,
    train_labels: np.ndarray,
) -> str:
    contract = settings.contract
    page = render_report(
        ReportInputs(
            contract=contract,
            model_name=settings.model_name,
            version=version,
            family=family,
            pipeline=model,
            threshold=threshold if contract.task == "binary" else None,
            holdout=evaluation.holdout.reset_index(drop=True),
            y=evaluation.y,
            scores=evaluation.scores,
            classes=evaluation.classes,
            holdout_metrics=evaluation.holdout_metrics,
            reference_metrics=evaluation.reference_metrics,
            decision=evaluation.decision,
            data_version=data.version,
            splits=data.info,
            train_labels=train_labels,
            slice_columns=settings.report.slice_columns_for(contract),
            slice_gap_tolerance=settings.report.slice_gap_tolerance,
            min_slice_rows=settings.report.min_slice_rows,
            confidence=settings.gate.confidence,
            max_rows=settings.report.rows,
            top_features=settings.report.top_features,
            seed=settings.seed,
        )
    )
    return attach_report(page, model_name=settings.model_name, version=version, run_id=run_id)


def record_decision(
    version: str,
    decision: Decision,
    holdout_metrics: dict[str, float],
    slices: dict[str, dict[str, float]],
    *,
    family: str,
    params: dict[str, Any],
    threshold: float,
    cv_metrics: dict[str, float],
    test_metrics: dict[str, float],
    run_id: str,
    data: TrainingData,
    settings: Settings,
) -> None:
    card = model_card(
        contract=settings.contract,
        model_name=settings.model_name,
        family=family,
        params=params,
        threshold=threshold,
        data_version=data.version,
        window=data.window,
        holdout_window=_holdout_window(data),
        cv_metrics=cv_metrics,
        test_metrics=test_metrics,
        holdout_metrics=holdout_metrics,
        slices=slices,
        decision=decision,
        run_id=run_id,
    )
    registry.apply_decision(settings.model_name, version, decision, card)
    metrics = {f"holdout_{k}": v for k, v in holdout_metrics.items()}
    metrics |= {"gate_delta": decision.delta, "gate_ci_low": decision.ci_low, "gate_ci_high": decision.ci_high}
    log_run_batch(run_id, metrics=metrics, tags={"gate_decision": decision.decision, "registered_version": version})
    notify(
        "promotion_decision",
        f"{settings.model_name} v{version}: {decision.decision}",
        {
            "reason": decision.reason,
            decision.primary_metric: f"{decision.candidate_score:.4f} vs {decision.reference_score:.4f}",
            "difference (CI)": f"{decision.delta:+.4f} [{decision.ci_low:+.4f}, {decision.ci_high:+.4f}]",
            "against": decision.against,
            "family": family,
        },
        settings,
    )


def refit_before_holdout(logged: LoggedCandidate, data: TrainingData, settings: Settings) -> LoggedCandidate:
    """Refit the chosen candidate on train + validation + test and log it as the run's model.

    Selection, the threshold and the test metrics come from the train-only fit; the model that is
    registered has also seen the newest labelled rows before the holdout. After drift those rows are
    the only ones with the new behaviour, so a retrained model that skipped them would learn little.
    The holdout stays untouched: the gate still judges on rows no fit has seen.
    """
    contract = settings.contract
    with threadpool_limits(limits=settings.training.n_threads):
        pipeline = refit_pipeline(logged.candidate.pipeline, data, contract)
    cand = replace(logged.candidate, pipeline=pipeline)
    # The tune flow gates inside its study's parent run: the candidate's run then resumes nested.
    with mlflow.start_run(run_id=logged.run_id, nested=mlflow.active_run() is not None):
        mlflow.set_tag("refit", "train+validation+test")
        uri = log_candidate_model(cand, data, settings)
    return LoggedCandidate(cand, logged.run_id, uri)


def gate_candidate(logged: LoggedCandidate, data: TrainingData, settings: Settings) -> dict[str, Any]:
    """Register a freshly trained candidate and gate it, using the in-memory pipeline (no reload)."""
    if settings.training.refit_before_holdout:
        logged = refit_before_holdout(logged, data, settings)
    cand = logged.candidate
    tags = {
        **provenance_tags(settings, data.version, data.window),
        "family": cand.family,
        "threshold": f"{cand.threshold:.6f}",
        "run_id": logged.run_id,
        "primary_metric": settings.training.primary_metric,
        "refit": "train+validation+test" if settings.training.refit_before_holdout else "train",
    }
    mv = registry.register(logged.model_uri, settings.model_name, tags)
    version = str(mv.version)
    with threadpool_limits(limits=settings.training.n_threads):
        evaluation = evaluate_and_decide(cand.pipeline, cand.threshold, version, data, settings)
        write_report(
            evaluation,
            cand.pipeline,
            version,
            family=cand.family,
            threshold=cand.threshold,
            run_id=logged.run_id,
            data=data,
            settings=settings,
        )
    decision, holdout_metrics = evaluation.decision, evaluation.holdout_metrics
    record_decision(
        version,
        decision,
        holdout_metrics,
        evaluation.slices,
        family=cand.family,
        params=cand.params,
        threshold=cand.threshold,
        cv_metrics=cand.cv_mean(),
        test_metrics=cand.test,
        run_id=logged.run_id,
        data=data,
        settings=settings,
    )
    return {"version": version, "decision": decision.as_dict(), "holdout": holdout_metrics}


def gate_version(version: str, settings: Settings) -> dict[str, Any]:
    """Gate an already registered version against the current champion on the current holdout."""
    client = registry.client()
    mv = client.get_model_version(settings.model_name, version)
    model, _ = load_version(f"models:/{settings.model_name}/{version}")
    threshold = float(mv.tags.get("threshold", 0.5))
    data = load_training_data(settings)
    run_id = mv.run_id or mv.tags.get("run_id", "")
    with threadpool_limits(limits=settings.training.n_threads):
        evaluation = evaluate_and_decide(model, threshold, version, data, settings)
        write_report(
            evaluation,
            model,
            version,
            family=mv.tags.get("family", "?"),
            threshold=threshold,
            run_id=run_id,
            data=data,
            settings=settings,
        )
    decision, holdout_metrics, slices = evaluation.decision, evaluation.holdout_metrics, evaluation.slices
    run = client.get_run(run_id) if run_id else None
    metrics = run.data.metrics if run else {}
    record_decision(
        version,
        decision,
        holdout_metrics,
        slices,
        family=mv.tags.get("family", "?"),
        params=dict(run.data.params) if run else {},
        threshold=threshold,
        cv_metrics={k.removeprefix("cv_"): value for k, value in metrics.items() if k.startswith("cv_")},
        test_metrics={k.removeprefix("test_"): value for k, value in metrics.items() if k.startswith("test_")},
        run_id=run_id,
        data=data,
        settings=settings,
    )
    return {"version": version, "decision": decision.as_dict(), "holdout": holdout_metrics}
