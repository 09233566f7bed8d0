"""The promotion gate: pure decision logic, no MLflow and no Prefect, so every rule is unit-testable.

Rule. On the same frozen holdout, the candidate is compared with a reference: the current champion,
or, when there is none, a trivial baseline (the training prevalence for classification, the
training mean for regression). The candidate is promoted only when all of these hold:

1. the lower bound of a paired bootstrap confidence interval of the primary metric's improvement
   (candidate minus reference, sign flipped for lower-is-better metrics) is above ``min_improvement``;
2. no slice (value of a contract slice column) with enough rows falls more than ``slice_tolerance``
   below the reference on the primary metric;
3. the median single-row latency is within the budget;
4. with ``require_online`` set and a champion to compare with: the online comparison (shadow traffic, the
   same labelled requests scored by both, core.modeling.online) has at least ``min_labelled_rows`` labelled
   pairs, and the lower end of its paired bootstrap interval of (challenger - champion), direction-aware, at
   ``confidence`` is at least ``-max_regression`` (not worse). The caller passes that evidence in.

Otherwise it becomes a challenger (there is a champion) or is rejected (it does not even beat the
trivial baseline). Paired means each bootstrap replicate resamples the same rows for both models,
so the interval reflects the difference, not two independent noises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import sklearn

from core.contract import Task
from core.modeling.catalogue import higher_is_better
from core.modeling.metrics import RankedScores, compute_metrics, weighted_metric

DecisionKind = Literal["promoted", "challenger", "rejected"]


@dataclass(frozen=True)
class OnlineRequirement:
    min_labelled_rows: int = 200
    confidence: float = 0.95
    max_regression: float = 0.0  # how far below the champion the interval's lower end may reach, metric units


@dataclass(frozen=True)
class OnlineEvidence:
    """The online comparison of this candidate (as the shadow challenger) with the champion."""

    challenger_version: str | None
    champion_version: str | None
    metric: str
    labelled_pairs: int
    delta: float  # improvement of the challenger: positive = better
    ci_low: float
    ci_high: float
    confidence: float


@dataclass(frozen=True)
class GateConfig:
    primary_metric: str = "pr_auc"
    min_improvement: float = 0.0
    confidence: float = 0.95
    n_bootstrap: int = 500
    slice_tolerance: float = 0.05
    min_slice_rows: int = 200
    min_slice_positives: int = 5
    latency_budget_ms: float = 50.0
    seed: int = 42
    require_online: OnlineRequirement | None = None


@dataclass(frozen=True)
class SliceCheck:
    name: str
    rows: int
    candidate: float
    reference: float
    delta: float  # improvement: positive means the candidate is better
    regressed: bool


@dataclass(frozen=True)
class Decision:
    decision: DecisionKind
    reason: str
    against: Literal["champion", "baseline"]
    primary_metric: str
    candidate_score: float
    reference_score: float
    delta: float
    ci_low: float
    ci_high: float
    latency_ms: float
    slices: list[SliceCheck] = field(default_factory=list)
    online: OnlineEvidence | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_scores(task: Task, y_train: Any, n_rows: int, n_classes: int = 2, seed: int = 0) -> np.ndarray:
    """A model that knows nothing but the training target's distribution.

    Binary: the training prevalence with a negligible random jitter, i.e. a random ranking. A constant
    score ties every row, and its PR AUC (exactly the prevalence) sits below what any random ranking
    gets on a finite sample (about +0.013 at 400 positives): pure noise would "beat" it.
    """
    y_train = np.asarray(y_train)
    if task == "regression":
        return np.full(n_rows, float(np.mean(y_train)))
    if task == "multiclass":
        prior = np.bincount(y_train.astype(int), minlength=n_classes) / len(y_train)
        return np.tile(prior, (n_rows, 1))
    jitter = np.random.default_rng(seed).uniform(-1e-9, 1e-9, n_rows)
    return np.full(n_rows, float(np.mean(y_train))) + jitter


def _improvement(metric: str, candidate: float, reference: float) -> float:
    return candidate - reference if higher_is_better(metric) else reference - candidate


def paired_bootstrap(
    task: Task,
    metric: str,
    y: Any,
    candidate: Any,
    reference: Any,
    *,
    threshold_candidate: float = 0.5,
    threshold_reference: float = 0.5,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 42,
) -> tuple[float, float, float]:
    """Point estimate and percentile CI of the improvement, resampling the same rows for both models."""
    y = np.asarray(y)
    candidate = np.asarray(candidate)
    reference = np.asarray(reference)
    n = len(y)
    point = _improvement(
        metric,
        compute_metrics(task, y, candidate, threshold_candidate)[metric],
        compute_metrics(task, y, reference, threshold_reference)[metric],
    )
    rng = np.random.default_rng(seed)
    fast = task == "binary" and metric in ("pr_auc", "roc_auc")
    if fast:
        ranked_c, ranked_r = RankedScores(y, candidate), RankedScores(y, reference)
    diffs = np.empty(n_bootstrap)
    # The point estimate above checked the inputs (finite, well-formed): the resamples are subsets of them,
    # so scikit-learn's per-call checks are skipped (half a regression bootstrap's time; same values).
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for b in range(n_bootstrap):
            # Row counts of a resample with replacement: O(n), and the same counts for both models.
            w = np.bincount(rng.integers(0, n, n), minlength=n)
            if fast:
                fn = "average_precision" if metric == "pr_auc" else "roc_auc"
                c, r = getattr(ranked_c, fn)(w), getattr(ranked_r, fn)(w)
            else:
                c = weighted_metric(task, metric, y, candidate, w, threshold=threshold_candidate)
                r = weighted_metric(task, metric, y, reference, w, threshold=threshold_reference)
            diffs[b] = _improvement(metric, c, r)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha]) if len(diffs) else (float("nan"), float("nan"))
    return float(point), float(low), float(high)


def check_slices(
    task: Task,
    metric: str,
    y: Any,
    candidate: Any,
    reference: Any,
    *,
    masks: dict[str, np.ndarray],
    config: GateConfig,
    threshold_candidate: float = 0.5,
    threshold_reference: float = 0.5,
) -> list[SliceCheck]:
    y = np.asarray(y)
    candidate = np.asarray(candidate)
    reference = np.asarray(reference)
    checks: list[SliceCheck] = []
    for name, mask in masks.items():
        rows = int(mask.sum())
        if rows < config.min_slice_rows:
            continue
        if task == "binary" and int(y[mask].sum()) < config.min_slice_positives:
            continue  # a ranking metric on a handful of positives is noise, not a regression
        c = compute_metrics(task, y[mask], candidate[mask], threshold_candidate)[metric]
        r = compute_metrics(task, y[mask], reference[mask], threshold_reference)[metric]
        if not (np.isfinite(c) and np.isfinite(r)):
            continue
        delta = _improvement(metric, c, r)
        checks.append(SliceCheck(name, rows, c, r, delta, regressed=delta < -config.slice_tolerance))
    return checks


def decide(
    task: Task,
    y: Any,
    candidate: Any,
    reference: Any,
    *,
    against: Literal["champion", "baseline"],
    latency_ms: float,
    masks: dict[str, np.ndarray],
    config: GateConfig,
    threshold_candidate: float = 0.5,
    threshold_reference: float = 0.5,
    online: OnlineEvidence | None = None,
) -> Decision:
    """Apply the gate's rule; the reason names every condition that failed. `online` is the candidate's
    online comparison with the champion, read only when ``config.require_online`` is set."""
    metric = config.primary_metric
    point, low, high = paired_bootstrap(
        task,
        metric,
        y,
        candidate,
        reference,
        threshold_candidate=threshold_candidate,
        threshold_reference=threshold_reference,
        n_bootstrap=config.n_bootstrap,
        confidence=config.confidence,
        seed=config.seed,
    )
    cand_score = compute_metrics(task, y, candidate, threshold_candidate)[metric]
    ref_score = compute_metrics(task, y, reference, threshold_reference)[metric]
    slices = check_slices(
        task,
        metric,
        y,
        candidate,
        reference,
        masks=masks,
        config=config,
        threshold_candidate=threshold_candidate,
        threshold_reference=threshold_reference,
    )
    failures: list[str] = []
    level = f"{config.confidence:.0%}"
    # Strictly above: a candidate identical to the champion (CI [0, 0]) must not replace it.
    if not low > config.min_improvement:
        failures.append(
            f"{metric} improvement over the {against} {point:+.4f} ({level} CI [{low:+.4f}, {high:+.4f}]) "
            f"does not clear the minimum {config.min_improvement:+.4f}"
        )
    regressed = [s for s in slices if s.regressed]
    if regressed:
        worst = ", ".join(f"{s.name} {s.delta:+.4f}" for s in regressed)
        failures.append(f"slices regress beyond tolerance {config.slice_tolerance}: {worst}")
    if not latency_ms <= config.latency_budget_ms:
        failures.append(f"single-row latency {latency_ms:.1f} ms exceeds the budget {config.latency_budget_ms} ms")
    online_note = ""
    if config.require_online is not None and against == "champion":
        failure, online_note = check_online(online, config.require_online, metric)
        if failure:
            failures.append(failure)

    if not failures:
        kind: DecisionKind = "promoted"
        reason = (
            f"beats the {against} on {metric} by {point:+.4f} ({level} CI [{low:+.4f}, {high:+.4f}] "
            f"above {config.min_improvement:+.4f}); no slice regresses beyond {config.slice_tolerance}; "
            f"latency {latency_ms:.1f} ms <= {config.latency_budget_ms} ms{online_note}"
        )
    else:
        kind = "challenger" if against == "champion" else "rejected"
        reason = "; ".join(failures)
    return Decision(
        decision=kind,
        reason=reason,
        against=against,
        primary_metric=metric,
        candidate_score=float(cand_score),
        reference_score=float(ref_score),
        delta=point,
        ci_low=low,
        ci_high=high,
        latency_ms=float(latency_ms),
        slices=slices,
        online=online if config.require_online is not None else None,
    )


def check_online(online: OnlineEvidence | None, need: OnlineRequirement, metric: str) -> tuple[str, str]:
    """(failure, note): the failure names what the online evidence lacks ("" when it passes); the note says
    what it showed, for the reason of a promotion."""
    if online is None or online.labelled_pairs == 0:
        return (
            f"no online evidence: no labelled shadow requests scored by both this version and the champion "
            f"(gate.require_online needs {need.min_labelled_rows}; run it in shadow and send /feedback)",
            "",
        )
    if online.metric != metric:
        return f"online evidence is on {online.metric}, not the primary metric {metric}", ""
    if online.labelled_pairs < need.min_labelled_rows:
        return (
            f"too few labelled online requests: {online.labelled_pairs} < gate.require_online.min_labelled_rows "
            f"{need.min_labelled_rows}",
            "",
        )
    level = f"{online.confidence:.0%}"
    interval = f"{level} CI [{online.ci_low:+.4f}, {online.ci_high:+.4f}]"
    shown = (
        f"online {metric} {online.delta:+.4f} vs the champion ({interval}, {online.labelled_pairs} labelled requests)"
    )
    if not online.ci_low >= -need.max_regression:  # NaN fails too
        return f"{shown} may be worse than the champion's: the lower bound is below {-need.max_regression:+.4f}", ""
    return "", f"; {shown} not worse"
