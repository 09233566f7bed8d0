"""The retraining policy: evidence from one monitoring run in, a decision with its reasons out.

Pure: no I/O, no clock. The flow reads the last trigger time (monitoring/decisions.py) and the champion's
holdout metric, and passes them in, so every branch here is a plain unit test.

Rules, in order:
    1. fewer than ``min_window_rows`` window rows: no decision can be trusted, never retrain;
    2. weighted drift share of the feature columns >= ``drift_share_threshold`` fires;
    3. with at least ``min_labelled_rows`` labelled rows and a known champion value, a fall of
       ``performance_metric`` by more than ``max_performance_drop`` fires. The drop is relative to the
       champion's holdout value (0.05 = 5% worse), so one setting means the same for a metric near 1 and
       for an error of 50 units; its sign follows the metric's direction, so "drop" always means "worse";
    4. prediction drift fires only when ``prediction_drift_triggers`` is set (otherwise it is a reason noted);
    5. a rule that fires within ``cooldown_hours`` of the last trigger is held back, with that as the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.modeling.catalogue import higher_is_better
from core.settings import MonitoringSettings


@dataclass(frozen=True)
class RetrainPolicy:
    drift_share_threshold: float = 0.3
    column_weights: Mapping[str, float] = field(default_factory=dict)
    min_window_rows: int = 1_000
    performance_metric: str = "pr_auc"
    max_performance_drop: float = 0.05
    min_labelled_rows: int = 200
    prediction_drift_triggers: bool = False
    cooldown_hours: float = 24.0

    @classmethod
    def from_settings(cls, s: MonitoringSettings) -> RetrainPolicy:
        return cls(
            drift_share_threshold=s.drift_share_threshold,
            column_weights=dict(s.column_weights),
            min_window_rows=s.min_window_rows,
            performance_metric=s.performance_metric,
            max_performance_drop=s.max_performance_drop,
            min_labelled_rows=s.min_labelled_rows,
            prediction_drift_triggers=s.prediction_drift_triggers,
            cooldown_hours=s.cooldown_hours,
        )

    def weight(self, column: str) -> float:
        return float(self.column_weights.get(column, 1.0))


@dataclass(frozen=True)
class Evidence:
    """What one monitoring run measured, reduced to what the policy reads."""

    window_rows: int
    column_drift: Mapping[str, bool]  # feature column -> drifted
    prediction_drift: bool = False
    labelled_rows: int = 0
    performance: Mapping[str, float] = field(default_factory=dict)
    champion_performance: float | None = None  # the champion's holdout value of the policy's metric


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reasons: list[str]
    fired: list[str]  # the rules that asked for retraining: drift, performance, prediction_drift
    weighted_drift_share: float | None = None
    performance_drop: float | None = None
    held_by_cooldown: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def weighted_drift_share(column_drift: Mapping[str, bool], policy: RetrainPolicy) -> float:
    """Sum of the weights of drifted columns over the sum of all weights (0 when every weight is 0)."""
    total = sum(policy.weight(c) for c in column_drift)
    if total <= 0:
        return 0.0
    return sum(policy.weight(c) for c, drifted in column_drift.items() if drifted) / total


def decide(
    evidence: Evidence, policy: RetrainPolicy, *, now: datetime, last_trigger_at: datetime | None = None
) -> Decision:
    if evidence.window_rows < policy.min_window_rows:
        return Decision(
            retrain=False,
            reasons=[f"too little data: {evidence.window_rows} window rows < min_window_rows {policy.min_window_rows}"],
            fired=[],
        )
    reasons: list[str] = []
    fired: list[str] = []

    share = weighted_drift_share(evidence.column_drift, policy)
    drifted = sorted(c for c, d in evidence.column_drift.items() if d)
    if share >= policy.drift_share_threshold:
        fired.append("drift")
        reasons.append(
            f"weighted drift share {share:.3f} >= threshold {policy.drift_share_threshold} (drifted: {drifted})"
        )
    else:
        reasons.append(
            f"weighted drift share {share:.3f} < threshold {policy.drift_share_threshold}"
            + (f" (drifted: {drifted})" if drifted else "")
        )

    drop = _performance_drop(evidence, policy, reasons)
    if drop is not None and drop > policy.max_performance_drop:
        fired.append("performance")

    if evidence.prediction_drift:
        if policy.prediction_drift_triggers:
            fired.append("prediction_drift")
            reasons.append("prediction drift detected")
        else:
            reasons.append("prediction drift detected (not a trigger by itself: prediction_drift_triggers is off)")

    held = False
    if fired and last_trigger_at is not None and policy.cooldown_hours > 0:
        until = last_trigger_at + timedelta(hours=policy.cooldown_hours)
        if now < until:
            held = True
            reasons.append(
                f"cooldown: last retraining trigger at {last_trigger_at.isoformat()}, "
                f"no new one before {until.isoformat()}"
            )
    return Decision(
        retrain=bool(fired) and not held,
        reasons=reasons,
        fired=fired,
        weighted_drift_share=share,
        performance_drop=drop,
        held_by_cooldown=held,
    )


def _performance_drop(evidence: Evidence, policy: RetrainPolicy, reasons: list[str]) -> float | None:
    """How much worse than the champion's holdout value the window is (positive = worse), or None."""
    metric = policy.performance_metric
    if evidence.labelled_rows < policy.min_labelled_rows:
        reasons.append(
            f"performance not judged: {evidence.labelled_rows} labelled rows < min_labelled_rows "
            f"{policy.min_labelled_rows}"
        )
        return None
    current = evidence.performance.get(metric)
    if current is None:
        reasons.append(f"performance not judged: {metric} could not be computed on the labelled rows")
        return None
    if evidence.champion_performance is None:
        reasons.append(f"performance not judged: the champion has no recorded holdout {metric}")
        return None
    champion = evidence.champion_performance
    if champion == 0:
        reasons.append(f"performance not judged: the champion's holdout {metric} is 0, no relative drop exists")
        return None
    worse = champion - current if higher_is_better(metric) else current - champion
    drop = worse / abs(champion)
    verdict = ">" if drop > policy.max_performance_drop else "<="
    reasons.append(
        f"{metric} {current:.4f} vs champion {champion:.4f}: {drop:+.1%} worse "
        f"{verdict} max_performance_drop {policy.max_performance_drop:.1%}"
    )
    return drop
