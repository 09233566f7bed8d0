"""The stakeholder report: one self-contained HTML page per registered version, for readers outside ML.

The model card (core.registry.cards) is the version's Markdown description for reviewers in the MLflow UI;
this report is its companion for an analyst, an auditor or a product manager: what the model is for and
what data it saw, how it did on the frozen holdout against the model it was compared with and what the
promotion gate decided, which columns matter most and how they move the score, whether its probabilities
can be read as rates (calibration), and how it does per slice, with gaps beyond
``report.slice_gap_tolerance`` flagged.

Self-contained: inline CSS and inline SVG charts, no script and no link outside the page, so it opens
offline from the MLflow artifact store, a mail attachment or a ticket. Works for any contract (binary,
multiclass, regression) from the contract and the holdout alone. :func:`attach_report` logs it on the
version's run and tags the version with where it is (``report``), which GET /model links.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from core.contract import DatasetContract, label_text
from core.modeling.catalogue import higher_is_better
from core.modeling.explain import ModelExplainer, global_importance
from core.modeling.features import to_model_input
from core.modeling.gate import Decision
from core.modeling.metrics import compute_metrics, hard_labels

REPORT_TAG = "report"  # version tag: the report's artifact path in the version's run
REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report reads: the model, the holdout it was judged on, and the gate's verdict."""

    contract: DatasetContract
    model_name: str
    version: str
    family: str
    pipeline: Any
    threshold: float | None
    holdout: pd.DataFrame  # labelled holdout rows, the contract's columns
    y: np.ndarray  # the holdout's labels, encoded as the metrics read them (core.modeling.training.encode_target)
    scores: np.ndarray  # the candidate's holdout scores (core.modeling.training.predict_scores)
    classes: list[Any]  # the model's classes in score order (multiclass); [] otherwise
    holdout_metrics: Mapping[str, float]
    reference_metrics: Mapping[str, float]  # the champion's (or the baseline's) holdout metrics
    decision: Decision
    data_version: str
    splits: Mapping[str, Mapping[str, Any]]  # per split: rows, start, end
    train_labels: Any  # the training split's target values (class balance)
    slice_columns: Sequence[str]
    slice_gap_tolerance: float
    min_slice_rows: int
    confidence: float = 0.95  # the gate's confidence level for its interval
    max_rows: int = 2_000  # holdout rows used for importance and partial dependence
    top_features: int = 4
    seed: int = 0


# ---- what the report computes ---------------------------------------------------------------------------
def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n, random_state=seed)


def _score_of(inputs: ReportInputs, frame: pd.DataFrame) -> np.ndarray:
    """Mean-able scores: P(positive) (binary), class probabilities (multiclass), the value (regression)."""
    X = to_model_input(frame, inputs.contract)
    if inputs.contract.task == "regression":
        return np.asarray(inputs.pipeline.predict(X), dtype=np.float64)
    proba = np.asarray(inputs.pipeline.predict_proba(X), dtype=np.float64)
    if inputs.contract.task == "binary":
        texts = [label_text(c) for c in inputs.pipeline.classes_]
        return proba[:, texts.index(label_text(inputs.contract.target.positive_class))]
    return proba


def importance(inputs: ReportInputs, frame: pd.DataFrame) -> tuple[dict[str, float], str]:
    """(column -> importance, how it was measured): mean |exact contribution| where the family has an exact
    method, else the drop in the primary metric when the column is shuffled (permutation importance)."""
    explainer = ModelExplainer(inputs.pipeline, inputs.contract)
    if explainer.available:
        explained = None
        if inputs.contract.task == "multiclass":
            explained = list(inputs.pipeline.predict(to_model_input(frame, inputs.contract)))
        exp = explainer.explain_frame(frame, explained)
        unit = {"log_odds": "log-odds", "logit": "logit", "probability": "probability", "value": "target units"}
        how = (
            f"mean absolute contribution to the model's output ({unit[exp.output or 'value']}), "
            f"{'coefficients' if exp.method == 'linear' else 'TreeSHAP'}, exact, on {len(frame)} holdout rows"
        )
        return global_importance(exp), how
    metric = inputs.decision.primary_metric
    task = inputs.contract.task
    sub = frame
    y = inputs.y[inputs.holdout.index.get_indexer(frame.index)]
    threshold = inputs.threshold if inputs.threshold is not None else 0.5
    base = compute_metrics(task, y, _score_of(inputs, sub), threshold)[metric]
    rng = np.random.default_rng(inputs.seed)
    out: dict[str, float] = {}
    for column in explainer.columns or inputs.contract.feature_columns:
        shuffled = sub.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        value = compute_metrics(task, y, _score_of(inputs, shuffled), threshold)[metric]
        drop = (base - value) if higher_is_better(metric) else (value - base)
        out[column] = float(drop)
    how = (
        f"drop in {metric} when the column is shuffled (permutation importance, {len(sub)} holdout rows): "
        f"{explainer.reason}"
    )
    return dict(sorted(out.items(), key=lambda kv: -kv[1])), how


def partial_dependence(inputs: ReportInputs, frame: pd.DataFrame, column: str) -> tuple[list[Any], np.ndarray]:
    """(grid, mean score at each grid value): every sampled row with `column` set to the value."""
    col = inputs.contract.column(column)
    if col.type == "category":
        grid: list[Any] = list(col.categories or ())
    elif col.type == "bool":
        grid = [False, True]
    else:
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        grid = sorted({float(v) for v in np.quantile(values, np.linspace(0.05, 0.95, 10))}) if len(values) else []
    rows = _sample(frame, 300, inputs.seed)
    means = [_score_of(inputs, rows.assign(**{column: value})).mean(axis=0) for value in grid]
    return grid, np.asarray(means)


def calibration(inputs: ReportInputs, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, rows) per bin of predicted probability (quantile bins). Binary: P(positive)
    against the positive rate; multiclass: the top class's probability against how often it is right."""
    if inputs.contract.task == "binary":
        predicted, observed = inputs.scores, inputs.y.astype(np.float64)
    else:
        predicted = inputs.scores.max(axis=1)
        observed = (inputs.scores.argmax(axis=1) == inputs.y).astype(np.float64)
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in np.unique(which):
        mask = which == b
        out.append((float(predicted[mask].mean()), float(observed[mask].mean()), int(mask.sum())))
    return out


@dataclass(frozen=True)
class SliceRow:
    column: str
    value: str
    rows: int
    rates: dict[str, float]  # the rates compared across slices
    flagged: list[str]  # which rates are further than the tolerance from the whole holdout's
    small: bool  # fewer rows than min_slice_rows: shown, not judged


def slice_rates(inputs: ReportInputs, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The rates a slice is compared on: binary false-positive and false-negative rates at the threshold;
    multiclass the error rate; regression the mean absolute error (compared relative to the whole's)."""
    task = inputs.contract.task
    if task == "regression":
        return {"mean_absolute_error": float(np.mean(np.abs(scores - y))) if len(y) else math.nan}
    predicted = hard_labels(task, scores, inputs.threshold if inputs.threshold is not None else 0.5)
    if task == "multiclass":
        return {"error_rate": float(np.mean(predicted != y)) if len(y) else math.nan}
    negatives, positives = y == 0, y == 1
    fpr = float(np.mean(predicted[negatives] == 1)) if negatives.any() else math.nan
    fnr = float(np.mean(predicted[positives] == 0)) if positives.any() else math.nan
    return {"false_positive_rate": fpr, "false_negative_rate": fnr}


def slices(inputs: ReportInputs) -> tuple[dict[str, float], list[SliceRow]]:
    """The whole holdout's rates, and each slice's with its flagged gaps."""
    overall = slice_rates(inputs, inputs.y, inputs.scores)
    relative = inputs.contract.task == "regression"
    out = []
    for column in inputs.slice_columns:
        values = inputs.holdout[column].astype("object").where(inputs.holdout[column].notna(), "(missing)")
        for value in sorted(values.unique(), key=str):
            mask = (values == value).to_numpy()
            rates = slice_rates(inputs, inputs.y[mask], inputs.scores[mask])
            small = int(mask.sum()) < inputs.min_slice_rows
            flagged = []
            for name, rate in rates.items():
                whole = overall[name]
                if small or math.isnan(rate) or math.isnan(whole):
                    continue
                gap = abs(rate - whole) / (abs(whole) or 1.0) if relative else abs(rate - whole)
                if gap > inputs.slice_gap_tolerance:
                    flagged.append(name)
            out.append(SliceRow(column, label_text(value), int(mask.sum()), rates, flagged, small))
    return overall, out


# ---- charts: inline SVG -----------------------------------------------------------------------------------
_INK, _ACCENT, _MUTED = "#1f2933", "#2f6fde", "#9aa5b1"
_PALETTE = (
    "#2f6fde",
    "#e4572e",
    "#29a36a",
    "#f2a900",
    "#8e44ad",
    "#17a2b8",
    "#7f8c8d",
    "#d35400",
    "#2c3e50",
    "#c0392b",
)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def bar_chart(values: Mapping[str, float], *, width: int = 640) -> str:
    """Horizontal bars, largest first (values >= 0 drawn from the left; negatives shown as 0)."""
    items = list(values.items())
    if not items:
        return "<p class='muted'>Nothing to show.</p>"
    label_w, row_h = 200, 26
    top = max(*(v for _, v in items), 1e-12)
    height = row_h * len(items) + 10
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for i, (name, v) in enumerate(items):
        y = 5 + i * row_h
        w = max(0.0, v) / top * (width - label_w - 70)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13" fill="{_INK}">{_e(name)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{_ACCENT}" rx="2"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" font-size="12" fill="{_INK}">{_num(v)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    x: Sequence[Any],
    series: Mapping[str, Any],
    *,
    x_label: str,
    y_label: str,
    width: int = 420,
    height: int = 260,
    diagonal: bool = False,
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
) -> str:
    """Lines over a numeric x, or points over categories (then x is evenly spaced and labelled)."""
    if not len(x):
        return "<p class='muted'>Nothing to show.</p>"
    per_row = max(1, (width - 64) // 110)  # legend entries per line
    legend_rows = math.ceil(len(series) / per_row) if len(series) > 1 else 0
    left, right, top, bottom = 56, 14, 12 + 16 * legend_rows, 48
    categorical = not all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in x)
    xs = np.arange(len(x), dtype=float) if categorical else np.asarray(x, dtype=float)
    ys_all = np.concatenate([np.asarray(s, dtype=float) for s in series.values()])
    lo, hi = y_range if y_range is not None else (float(np.nanmin(ys_all)), float(np.nanmax(ys_all)))
    if diagonal:
        lo, hi = min(lo, float(xs.min())), max(hi, float(xs.max()))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if len(xs) > 1 else (float(xs[0]) - 1, float(xs[0]) + 1)
    if categorical:
        x_lo, x_hi = -0.5, len(x) - 0.5
    elif x_range is not None:
        x_lo, x_hi = x_range

    def px(v: float) -> float:
        return left + (v - x_lo) / ((x_hi - x_lo) or 1.0) * (width - left - right)

    def py(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    parts.append(
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="{_MUTED}"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="{_MUTED}"/>'
    )
    for t in np.linspace(lo, hi, 5):
        parts.append(
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="11" fill="{_INK}">{_num(t)}</text>'
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" stroke="#eef1f4"/>'
        )
    ticks = list(range(len(x))) if categorical else list(np.linspace(x_lo, x_hi, 5))
    for t in ticks:
        text = str(x[int(t)])[:12] if categorical else _num(float(t))
        parts.append(
            f'<text x="{px(float(t)):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" '
            f'fill="{_INK}">{_e(text)}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" font-size="12" '
        f'fill="{_INK}">{_e(x_label)}</text>'
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" font-size="12" fill="{_INK}" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{_e(y_label)}</text>'
    )
    if diagonal:
        parts.append(
            f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" '
            f'stroke="{_MUTED}" stroke-dasharray="4 4"/>'
        )
    for i, ys in enumerate(series.values()):
        color = _PALETTE[i % len(_PALETTE)]
        points = [(px(float(a)), py(float(b))) for a, b in zip(xs, ys, strict=True) if not math.isnan(float(b))]
        if not categorical and len(points) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{color}"/>' for a, b in points)
    if len(series) > 1:
        for i, name in enumerate(series):
            lx, ly = left + 8 + 110 * (i % per_row), 4 + 16 * (i // per_row)
            parts.append(
                f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{_PALETTE[i % len(_PALETTE)]}"/>'
                f'<text x="{lx + 14}" y="{ly + 9}" font-size="11" fill="{_INK}">{_e(str(name)[:14])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


# ---- the page ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2933;max-width:980px;
margin:2rem auto;padding:0 1.2rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e4e7eb;
padding-bottom:.3rem}.muted{color:#616e7c}.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;
font-weight:600;font-size:.9rem}.promoted{background:#e3f9e5;color:#05400a}.rejected{background:#ffe3e3;
color:#610404}table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border:1px solid #e4e7eb;
padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f5f7fa}
tr.flag td{background:#fff3c4}.grid{display:flex;flex-wrap:wrap;gap:1rem}.card{border:1px solid #e4e7eb;
border-radius:6px;padding:.6rem .8rem}.card b{display:block;margin-bottom:.3rem}.chart{display:block;max-width:100%;
height:auto}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], flags: Sequence[bool] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="flag"' if flags and flags[i] else ""
        cells = "".join(f"<td>{_e(_num(c) if isinstance(c, float) else c)}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _balance(inputs: ReportInputs) -> str:
    contract = inputs.contract
    train = pd.Series(np.asarray(inputs.train_labels))
    holdout = inputs.holdout[contract.target.name]
    if contract.task == "regression":
        rows = [
            [name, float(s.mean()), float(s.std()), float(s.min()), float(s.median()), float(s.max())]
            for name, s in (("training", pd.to_numeric(train)), ("holdout", pd.to_numeric(holdout)))
        ]
        return _table(["split", "mean", "std", "min", "median", "max"], rows)
    labels = [label_text(c) for c in contract.classes]
    shares = []
    for name, s in (("training", train), ("holdout", holdout)):
        counts = s.map(label_text).value_counts()
        shares.append([name, len(s), *(f"{100 * counts.get(c, 0) / max(len(s), 1):.1f}%" for c in labels)])
    return _table(["split", "rows", *labels], shares)


def _decision_words(d: Decision, confidence: float) -> str:
    verb = "was promoted: it now serves" if d.promoted else "was not promoted: the model it was compared with stays"
    change = f"better by {_num(d.delta)}" if d.delta > 0 else f"not better (improvement {_num(d.delta)})"
    return (
        f"The candidate {verb}. On the frozen holdout its {d.primary_metric} is {_num(d.candidate_score)} against "
        f"{_num(d.reference_score)} for the {d.against}: {change} (with {confidence:.0%} confidence the "
        f"improvement lies between {_num(d.ci_low)} and {_num(d.ci_high)}; a positive improvement means better). "
        f"The gate's reason: {d.reason}."
    )


def render_report(inputs: ReportInputs) -> str:
    """The whole page as one HTML string."""
    contract, d = inputs.contract, inputs.decision
    frame = _sample(inputs.holdout, inputs.max_rows, inputs.seed)
    imp, how = importance(inputs, frame)
    top = [c for c in imp if contract.column(c).type != "datetime"][: inputs.top_features]
    task_words = {
        "binary": f"decide whether a row is <b>{_e(contract.target.positive_class)}</b> "
        f"(target <code>{_e(contract.target.name)}</code>): it gives a probability, and a threshold of "
        f"{_num(inputs.threshold or 0.5)} turns it into a decision",
        "multiclass": f"assign each row one of {len(contract.classes)} classes of "
        f"<code>{_e(contract.target.name)}</code> ({', '.join(_e(label_text(c)) for c in contract.classes)})",
        "regression": f"estimate <code>{_e(contract.target.name)}</code> for each row",
    }[contract.task]
    split_rows = [
        [name, int(info.get("rows") or 0), str(info.get("start") or "—"), str(info.get("end") or "—")]
        for name, info in inputs.splits.items()
    ]
    metric_rows = [
        [m, float(v), float(inputs.reference_metrics.get(m, math.nan)), "higher" if higher_is_better(m) else "lower"]
        for m, v in inputs.holdout_metrics.items()
    ]
    sections = [
        f"<h1>{_e(inputs.model_name)} — version {_e(inputs.version)}</h1>",
        f"<p class='muted'>{_e(inputs.family)} model · data version {_e(inputs.data_version)} · report generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
        f"<p><span class='badge {'promoted' if d.promoted else 'rejected'}'>{_e(d.decision)}</span></p>",
        "<h2>What the model is for</h2>",
        f"<p>{_e(contract.description.strip() or contract.name)}</p><p>The model is trained to {task_words}. "
        "It reads one row of the dataset's columns at a time; an id column is never used.</p>",
        "<h2>What data it saw</h2>",
        _table(["split", "rows", "from", "to"], split_rows),
        "<p>The <b>holdout</b> is frozen: no model was trained or tuned on it; the promotion decision is made "
        "on it.</p>",
        "<h3>Class balance</h3>" if contract.is_classification else "<h3>Target distribution</h3>",
        _balance(inputs),
        "<h2>How well it does, and the decision</h2>",
        f"<p>{_e(_decision_words(d, inputs.confidence))}</p>",
        _table(["holdout metric", "this model", f"{d.against}", "better is"], metric_rows),
        "<h2>Which columns matter most</h2>",
        f"<p class='muted'>Measured as the {_e(how)}.</p>",
        bar_chart(dict(list(imp.items())[:12])),
        "<h2>How the top columns move the score</h2>",
        "<p class='muted'>Partial dependence: the average score of sampled holdout rows when the column is set to "
        "each value, every other column left as it was.</p>",
        _pd_section(inputs, frame, top),
    ]
    if contract.is_classification:
        sections += _calibration_section(inputs)
    sections += _slice_section(inputs)
    body = "\n".join(sections)
    title = f"{inputs.model_name} v{inputs.version}: model report"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def _pd_section(inputs: ReportInputs, frame: pd.DataFrame, top: list[str]) -> str:
    contract = inputs.contract
    y_label = {
        "binary": f"P({label_text(contract.target.positive_class)})",
        "multiclass": "probability",
        "regression": f"predicted {contract.target.name}",
    }[contract.task]
    cards = []
    for column in top:
        grid, means = partial_dependence(inputs, frame, column)
        if contract.task == "multiclass":
            series = {label_text(c): means[:, k] for k, c in enumerate(inputs.pipeline.classes_)}
        else:
            series = {y_label: means}
        chart = line_chart(grid, series, x_label=column, y_label=y_label)
        cards.append(f"<div class='card'><b>{_e(column)}</b>{chart}</div>")
    return f"<div class='grid'>{''.join(cards)}</div>" if cards else "<p class='muted'>No column to show.</p>"


def _calibration_section(inputs: ReportInputs) -> list[str]:
    points = calibration(inputs)
    binary = inputs.contract.task == "binary"
    what = (
        "mean predicted probability against the share that really was positive"
        if binary
        else "the top class's mean probability against how often the top class was right"
    )
    chart = line_chart(
        [p[0] for p in points],
        {"observed": [p[1] for p in points]},
        x_label="predicted probability",
        y_label="observed rate",
        diagonal=True,
        y_range=(0.0, 1.0),
        x_range=(0.0, 1.0),
    )
    table = _table(["mean predicted", "observed", "rows"], [[p[0], p[1], p[2]] for p in points])
    return [
        "<h2>Can the probabilities be read as rates? (calibration)</h2>",
        f"<p class='muted'>Holdout rows in bins of predicted probability: {what}. On the dashed line, a "
        "probability of 0.2 means 'right about 20% of the time'.</p>",
        f"<div class='grid'><div class='card'>{chart}</div><div class='card'>{table}</div></div>",
    ]


def _slice_section(inputs: ReportInputs) -> list[str]:
    if not inputs.slice_columns:
        return ["<h2>Results per slice</h2><p class='muted'>No slice columns (report.slice_columns).</p>"]
    overall, rows = slices(inputs)
    names = list(overall)
    regression = inputs.contract.task == "regression"
    tol = inputs.slice_gap_tolerance
    rule = (
        f"more than {tol:.0%} above or below the whole holdout's (relative)"
        if regression
        else f"more than {tol:.2f} ({tol:.0%} points) away from the whole holdout's"
    )
    table_rows: list[list[Any]] = [["(whole holdout)", "", len(inputs.y), *(overall[n] for n in names), ""]]
    flags = [False]
    for r in rows:
        note = "too few rows to judge" if r.small else ("gap: " + ", ".join(r.flagged) if r.flagged else "")
        table_rows.append([r.column, r.value, r.rows, *(r.rates[n] for n in names), note])
        flags.append(bool(r.flagged))
    flagged = [r for r in rows if r.flagged]
    summary = (
        f"<p><b>{len(flagged)} slice(s) flagged</b>: "
        + "; ".join(f"{_e(r.column)} = {_e(r.value)} ({_e(', '.join(r.flagged))})" for r in flagged)
        + ".</p>"
        if flagged
        else "<p>No slice is flagged.</p>"
    )
    return [
        "<h2>Results per slice</h2>",
        f"<p class='muted'>A slice is flagged (highlighted) when a rate is {rule} (settings "
        f"<code>report.slice_gap_tolerance</code>); slices under {inputs.min_slice_rows} rows are shown but not "
        "judged.</p>",
        summary,
        _table(["column", "value", "rows", *(n.replace("_", " ") for n in names), "note"], table_rows, flags),
    ]


# ---- where it goes -----------------------------------------------------------------------------------------
def report_path(version: str) -> str:
    """The report's artifact path in its version's run."""
    return f"{REPORT_DIR}/model_report_v{version}.html"


def attach_report(page: str, *, model_name: str, version: str, run_id: str) -> str:
    """Log the page on the version's run and tag the version with its artifact path; returns the path."""
    import tempfile
    from pathlib import Path

    import mlflow

    client = mlflow.MlflowClient()
    path = report_path(version)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        local = Path(tmp) / Path(path).name
        local.write_text(page, encoding="utf-8")
        client.log_artifact(run_id, str(local), REPORT_DIR)
    client.set_model_version_tag(model_name, version, REPORT_TAG, path)
    return path
