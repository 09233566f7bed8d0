"""Online comparison of the champion and a challenger on live traffic, from the prediction log.

Shadow rows share their request id with the champion's answer, so each shadowed request is a pair: the two
models scored the same input. On the pairs: the agreement rate (same label; regression: within a relative
tolerance), and, once labels arrive through /feedback, the primary metric of each on the same labelled
requests with a paired bootstrap interval of the difference (challenger minus champion, sign flipped for
lower-is-better metrics, so positive always means the challenger is better). Per role: rows, the score
distribution's Jensen-Shannon distance to the champion's, latency p50/p99. Canary rows answer other
requests than the champion's: they get their own figures, but no pairs.

:func:`compare` is pure (frames in, a comparison out); :func:`read_online` reads the log. The gate reads
:meth:`OnlineComparison.evidence` (core.modeling.gate stays pure; core.registry.promotion does the I/O).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from core.contract import DatasetContract, label_text
from core.databases import engine_for
from core.modeling.catalogue import higher_is_better, spec
from core.modeling.gate import OnlineEvidence
from core.modeling.metrics import RankedScores, metric_value
from core.predictions import FEEDBACK, PREDICTIONS, LogSchema

_BINS = 20  # score histogram bins for the distance (quantiles of both roles' scores pooled)


@dataclass(frozen=True)
class RoleFigures:
    role: str
    version: str
    rows: int
    latency_p50_ms: float
    latency_p99_ms: float
    score_distance: float | None  # Jensen-Shannon distance (base 2, in [0, 1]) to the champion's scores
    labelled_rows: int = 0
    metric: float | None = None  # the primary metric on this role's own labelled rows


@dataclass(frozen=True)
class OnlineComparison:
    task: str
    metric: str
    champion_version: str | None
    challenger_version: str | None
    roles: dict[str, RoleFigures] = field(default_factory=dict)
    paired_rows: int = 0  # shadowed requests: both models scored them
    agreement: float | None = None  # share of pairs with the same label (regression: within tolerance)
    tolerance: float | None = None  # regression only
    labelled_pairs: int = 0
    champion_metric: float | None = None  # on the labelled pairs
    challenger_metric: float | None = None
    delta: float | None = None  # improvement, challenger over champion: positive = better (direction-aware)
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def evidence(self) -> OnlineEvidence:
        """What the promotion gate reads."""
        return OnlineEvidence(
            challenger_version=self.challenger_version,
            champion_version=self.champion_version,
            metric=self.metric,
            labelled_pairs=self.labelled_pairs,
            delta=_nan(self.delta),
            ci_low=_nan(self.ci_low),
            ci_high=_nan(self.ci_high),
            confidence=self.confidence,
        )

    def metrics(self) -> dict[str, float]:
        """Flat, finite numbers for MLflow."""
        out: dict[str, float] = {"paired_rows": float(self.paired_rows), "labelled_pairs": float(self.labelled_pairs)}
        for key in ("agreement", "champion_metric", "challenger_metric", "delta", "ci_low", "ci_high"):
            value = getattr(self, key)
            if value is not None and np.isfinite(value):
                out[key] = float(value)
        for role, fig in self.roles.items():
            out[f"{role}_rows"] = float(fig.rows)
            for key in ("latency_p50_ms", "latency_p99_ms", "score_distance", "metric"):
                value = getattr(fig, key)
                if value is not None and np.isfinite(value):
                    out[f"{role}_{key}"] = float(value)
        return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# ---- statistics ----------------------------------------------------------------------------------------
def jensen_shannon(reference: np.ndarray, current: np.ndarray, *, categorical: bool) -> float:
    """Jensen-Shannon distance (base 2: 0 same distribution, 1 disjoint) between two samples: over the
    categories when categorical, else over `_BINS` quantile bins of both samples pooled."""
    reference, current = np.asarray(reference), np.asarray(current)
    if categorical:
        values = np.union1d(np.unique(reference), np.unique(current))
        p = np.array([(reference == v).sum() for v in values], dtype=np.float64)
        q = np.array([(current == v).sum() for v in values], dtype=np.float64)
    else:
        pooled = np.concatenate([reference, current]).astype(np.float64)
        cuts = np.unique(np.quantile(pooled, np.linspace(0, 1, _BINS + 1)[1:-1]))
        p = np.bincount(np.searchsorted(cuts, reference, side="right"), minlength=len(cuts) + 1).astype(np.float64)
        q = np.bincount(np.searchsorted(cuts, current, side="right"), minlength=len(cuts) + 1).astype(np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        keep = a > 0
        return float(np.sum(a[keep] * np.log2(a[keep] / b[keep])))

    return float(np.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2)))


def agreement_rate(task: str, champion: np.ndarray, challenger: np.ndarray, tolerance: float = 0.05) -> float:
    """Share of paired requests where the two agree: the same label; regression: the challenger's value
    within `tolerance` (relative) of the champion's."""
    if len(champion) == 0:
        return float("nan")
    if task == "regression":
        a, b = np.asarray(champion, dtype=np.float64), np.asarray(challenger, dtype=np.float64)
        return float(np.mean(np.abs(b - a) <= tolerance * np.maximum(np.abs(a), 1e-12)))
    return float(np.mean(np.asarray(champion) == np.asarray(challenger)))


def paired_improvement(  # noqa: PLR0917 - the two models' scores and labels, side by side
    task: Any,
    metric: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    challenger_labels: np.ndarray | None = None,
    champion_labels: np.ndarray | None = None,
    *,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 42,
) -> tuple[float, float, float]:
    """(point, low, high) of the challenger's improvement over the champion on the same rows: each bootstrap
    replicate resamples the same requests for both. Positive means better whichever way the metric points.
    Label metrics read the labels each model answered with (`*_labels`), not a threshold of ours."""
    y = np.asarray(y)
    sign = 1.0 if higher_is_better(metric) else -1.0

    def value(score: np.ndarray, labels: np.ndarray | None, w: np.ndarray | None) -> float:
        return metric_value(task, metric, y, score, weights=w, predicted=labels)

    point = sign * (value(challenger, challenger_labels, None) - value(champion, champion_labels, None))
    n = len(y)
    rng = np.random.default_rng(seed)
    fast = task == "binary" and metric in ("roc_auc", "pr_auc")
    if fast:
        rc, rr = RankedScores(y, challenger), RankedScores(y, champion)
        fn = "average_precision" if metric == "pr_auc" else "roc_auc"
    diffs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        if fast:
            c, r = getattr(rc, fn)(w), getattr(rr, fn)(w)
        else:
            c, r = value(challenger, challenger_labels, w), value(champion, champion_labels, w)
        diffs[b] = sign * (c - r)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs) or not np.isfinite(point):
        return float(point), float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return float(point), float(low), float(high)


# ---- from log rows to the comparison -------------------------------------------------------------------
def _encode(values: pd.Series, contract: DatasetContract) -> np.ndarray:
    """Labels as the metrics read them (1 = positive for binary, class indices for multiclass); -1 for a
    label the contract does not know."""
    if contract.task == "regression":
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if contract.task == "binary":
        positive = label_text(contract.target.positive_class)
        return np.array([1 if label_text(v) == positive else 0 for v in values.tolist()], dtype=np.int64)
    order = {label_text(c): i for i, c in enumerate(contract.classes)}
    return np.array([order.get(label_text(v), -1) for v in values.tolist()], dtype=np.int64)


def _distance_input(frame: pd.DataFrame, contract: DatasetContract, schema: LogSchema) -> np.ndarray | None:
    """The primary score whose distribution is compared: P(positive) (binary), the value (regression), the
    predicted class (multiclass)."""
    if contract.task == "multiclass":
        return _encode(frame["prediction"], contract)
    scores = schema.scores(frame)
    if scores is None:
        return None
    return scores[np.isfinite(scores)]


def _metric_input(frame: pd.DataFrame, contract: DatasetContract, schema: LogSchema) -> tuple[np.ndarray, np.ndarray]:
    """(score, labels) for the metric: logged probabilities where the metric reads them, else one-hot or 0/1
    of the answered labels; the answered labels encoded."""
    labels = _encode(frame["prediction"], contract)
    if contract.task == "regression":
        return labels, labels
    scores = schema.scores(frame)
    if scores is None or np.isnan(scores).any():
        scores = labels.astype(np.float64) if contract.task == "binary" else np.eye(len(contract.classes))[labels]
    return scores, labels


def compare(
    rows: pd.DataFrame,
    labels: pd.Series | None,
    contract: DatasetContract,
    metric: str,
    *,
    tolerance: float = 0.05,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 42,
) -> OnlineComparison:
    """Compare the champion's rows with the challenger's (role shadow or canary) in `rows` (the prediction
    log's columns, every role); `labels` maps request id -> label (the latest feedback)."""
    task = contract.task
    spec(task, metric)
    schema = LogSchema(contract)
    notes: list[str] = []
    if rows.empty or "prediction" not in rows:
        return OnlineComparison(task, metric, None, None, confidence=confidence, notes=["no predictions in the window"])
    rows = rows.copy()
    rows["model_version"] = rows["model_version"].astype(str)
    champ = rows[rows["role"] == "champion"]
    champion_version = _main_version(champ)
    if champion_version is not None:
        champ = champ[champ["model_version"] == champion_version]
    challenger_rows = rows[rows["role"].isin(["shadow", "canary"])]
    challenger_version = _main_version(challenger_rows)
    if challenger_version is None:
        notes.append("no shadow or canary rows in the window: nothing to compare the champion with")
    else:
        challenger_rows = challenger_rows[challenger_rows["model_version"] == challenger_version]
    label_of = labels if labels is not None else pd.Series(dtype=object)

    reference = _distance_input(champ, contract, schema) if len(champ) else None
    figures: dict[str, RoleFigures] = {}
    for role, frame in (("champion", champ), *challenger_rows.groupby("role", sort=True)):
        latency = pd.to_numeric(frame["latency_ms"], errors="coerce").dropna().to_numpy()
        scores = _distance_input(frame, contract, schema)
        distance = None
        if role != "champion" and reference is not None and scores is not None and len(reference) and len(scores):
            distance = jensen_shannon(reference, scores, categorical=task == "multiclass")
        labelled = frame[frame["request_id"].isin(label_of.index)]
        own_metric = None
        if len(labelled):
            y = _encode(labelled["request_id"].map(label_of), contract)
            keep = y >= 0 if task != "regression" else np.isfinite(y)
            score, answered = _metric_input(labelled[keep], contract, schema)
            own_metric = metric_value(task, metric, y[keep], score, predicted=answered)
        figures[str(role)] = RoleFigures(
            role=str(role),
            version=_main_version(frame) or "",
            rows=len(frame),
            latency_p50_ms=float(np.percentile(latency, 50)) if len(latency) else float("nan"),
            latency_p99_ms=float(np.percentile(latency, 99)) if len(latency) else float("nan"),
            score_distance=distance,
            labelled_rows=len(labelled),
            metric=own_metric,
        )

    shadow = challenger_rows[challenger_rows["role"] == "shadow"]
    pairs = champ.merge(shadow, on="request_id", suffixes=("_champion", "_challenger"))
    out: dict[str, Any] = {"paired_rows": len(pairs)}
    if len(pairs):
        a = _side(pairs, "_champion")
        b = _side(pairs, "_challenger")
        la, lb = _encode(a["prediction"], contract), _encode(b["prediction"], contract)
        out["agreement"] = agreement_rate(task, la, lb, tolerance)
        if task == "regression":
            out["tolerance"] = tolerance
        labelled = pairs["request_id"].isin(label_of.index).to_numpy()
        if labelled.any():
            y = _encode(pairs.loc[labelled, "request_id"].map(label_of), contract)
            keep = y >= 0 if task != "regression" else np.isfinite(y)
            if not keep.all():
                notes.append(f"{int((~keep).sum())} labels the contract does not know were left out")
            idx = np.flatnonzero(labelled)[keep]
            sa_, ya = _metric_input(a.iloc[idx], contract, schema)
            sb_, yb = _metric_input(b.iloc[idx], contract, schema)
            y = y[keep]
            point, low, high = paired_improvement(
                task, metric, y, sb_, sa_, yb, ya, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
            )
            out |= {
                "labelled_pairs": len(y),
                "champion_metric": metric_value(task, metric, y, sa_, predicted=ya),
                "challenger_metric": metric_value(task, metric, y, sb_, predicted=yb),
                "delta": point,
                "ci_low": low,
                "ci_high": high,
            }
        else:
            notes.append("no feedback labels for the shadowed requests yet: no metric comparison")
    elif challenger_version is not None:
        notes.append("no shadowed requests (canary rows answer other requests): no paired comparison")
    return OnlineComparison(
        task=task,
        metric=metric,
        champion_version=champion_version,
        challenger_version=challenger_version,
        roles=figures,
        confidence=confidence,
        notes=notes,
        **out,
    )


def _main_version(frame: pd.DataFrame) -> str | None:
    """The version that answered most of these rows (the newest among equals)."""
    if frame.empty:
        return None
    counts = frame.groupby("model_version")["timestamp"].agg(["size", "max"])
    return str(counts.sort_values(["size", "max"]).index[-1])


def _side(pairs: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """One model's columns of the merged pairs, under the log's names."""
    cols = {c: c.removesuffix(suffix) for c in pairs.columns if c.endswith(suffix)}
    return pairs[list(cols)].rename(columns=cols).reset_index(drop=True)


# ---- the reader ----------------------------------------------------------------------------------------
def read_online(
    url: str,
    *,
    since: datetime | None = None,
    limit: int | None = None,
    versions: tuple[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """Every role's rows of the log (the newest `limit`, since `since`), and the latest label per request id
    of those rows. `versions` (champion, challenger) keeps only those two models' rows: the gate's reading."""
    engine = engine_for(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(PREDICTIONS):
            return pd.DataFrame(columns=["request_id", "model_version", "role", "timestamp"]), pd.Series(dtype=object)
        table = sa.Table(PREDICTIONS, sa.MetaData(), autoload_with=engine)
        query = sa.select(table).order_by(table.c.timestamp.desc())
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        if "role" not in table.c:  # a log from before roles: the champion's rows only, nothing to pair
            query = query.where(sa.false()) if versions is not None else query
        elif versions is not None:
            champion, challenger = versions
            query = query.where(
                sa.or_(
                    sa.and_(table.c.role == "champion", table.c.model_version == champion),
                    sa.and_(table.c.role != "champion", table.c.model_version == challenger),
                )
            )
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            rows = pd.read_sql(query, conn).iloc[::-1].reset_index(drop=True)
            labels = pd.Series(dtype=object)
            if len(rows) and inspector.has_table(FEEDBACK):
                fb = sa.Table(FEEDBACK, sa.MetaData(), autoload_with=engine)
                first = pd.to_datetime(rows["timestamp"]).min().to_pydatetime()
                feedback = pd.read_sql(
                    sa.select(fb.c.request_id, fb.c.label).where(fb.c.received_at >= first).order_by(fb.c.received_at),
                    conn,
                )
                if len(feedback):
                    labels = feedback.drop_duplicates("request_id", keep="last").set_index("request_id")["label"]
        if "role" not in rows:
            rows["role"] = "champion"
        return rows, labels
    finally:
        engine.dispose()
