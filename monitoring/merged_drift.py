"""Drift verdicts over data too large for one frame: statistics per partition, merged, then tested.

`compute_drift` (monitoring/drift.py) runs Evidently on seeded samples of one in-memory frame each. Past
that, each partition of the reference and of the window is summarised on its own, possibly on a Dask
worker, and the summaries are added up; nothing but the summaries leaves a partition:

* every column: the count of non-null values and, while they are few (at most ``FEW_VALUES``), the count
  of each distinct value;
* a numerical column: also min, max, mean and the sum of squared deviations (merged exactly, Chan et al.),
  then, in a second pass over the merged [min, max] of both sides, a histogram of ``HISTOGRAM_BINS`` bins;
* a categorical column: the count of each value.

The tests are the ones plain Evidently picks for a reference of more than 1,000 rows (see
``_get_default_stattest`` in evidently.legacy.calculations.stattests.registry), with their default
thresholds (0.1):

* numerical with more than 5 distinct values (both sides together): the Wasserstein distance normalised
  by the reference's standard deviation, drift when >= 0.1, computed between the two histograms' bin
  centres, the approximation Evidently's own Spark engine makes (evidently.legacy.spark ... wasserstein,
  1,000 bins), except that both sides share one range and so one set of bins;
* categorical, and numerical with at most 5 distinct values: the Jensen-Shannon distance between the
  value frequencies (exact: counts add up), drift when >= 0.1.

A column with 1,000 non-null reference rows or fewer is not tested here (reported as skipped): Evidently
tests those with p-values (K-S, chi-square), and `compute_drift` on whole frames is the right tool.
``make bench-drift`` measures the agreement of these verdicts with plain Evidently on the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.cluster import map_tasks
from core.contract import DatasetContract
from monitoring.drift import (
    PREDICTION_COLUMNS,
    ColumnDrift,
    DataQuality,
    DriftError,
    DriftResult,
    column_mapping,
    data_quality,
    drift_frame,
    drift_result,
    merge_quality,
    report_verdicts,
    rows_with_labels,
    sample_rows,
)

if TYPE_CHECKING:
    from distributed import Client

FEW_VALUES = 5  # Evidently: a numerical column with at most this many distinct values is tested as categorical
HISTOGRAM_BINS = 1000  # evidently.legacy.spark.calculations.stattests.wasserstein.APPROX_WASSERSTEIN_BINS
MIN_ROWS = 1000  # Evidently uses these distances only above this many reference rows

Partition = Callable[[], pd.DataFrame]  # reads one partition's rows (on whichever process runs it)
WindowExtra = Callable[[pd.DataFrame, int, int], Any]  # (a window partition's rows, its index, window rows)


@dataclass
class ColumnStats:
    """One column of one partition (or of several, merged)."""

    n: int = 0
    values: Counter[Any] | None = field(default_factory=Counter)  # None: numerical, more than FEW_VALUES
    lo: float = np.inf
    hi: float = -np.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    def merge(self, other: ColumnStats, numerical: bool) -> ColumnStats:
        values: Counter[Any] | None = None
        if self.values is not None and other.values is not None:
            values = self.values + other.values
            if numerical and len(values) > FEW_VALUES:
                values = None
        n = self.n + other.n
        if n == 0:
            return ColumnStats(values=values)
        delta = other.mean - self.mean
        return ColumnStats(
            n=n,
            values=values,
            lo=min(self.lo, other.lo),
            hi=max(self.hi, other.hi),
            mean=self.mean + delta * other.n / n,
            m2=self.m2 + other.m2 + delta * delta * self.n * other.n / n,
        )


Stats = dict[str, ColumnStats]


def _columns(frame: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, set[str]]:
    """The drift columns as Evidently sees them (drift_frame's dtypes); the set of numerical ones."""
    frame = drift_frame(frame, contract)
    numerical = set(column_mapping(contract, list(frame.columns))["numerical"])
    return frame, numerical


def _values(series: pd.Series, numerical: bool) -> pd.Series:
    """Non-null values (Evidently drops NaN, and infinities in a number, before it tests)."""
    if numerical:
        series = pd.to_numeric(series, errors="coerce").astype("float64")
        return series[np.isfinite(series.to_numpy())]
    return series.dropna()


def partition_stats(frame: pd.DataFrame, contract: DatasetContract) -> Stats:
    """Pass one over one partition: counts, distinct values while few, min/max/mean/M2 of numbers."""
    frame, numerical = _columns(frame, contract)
    out: Stats = {}
    for name in frame.columns:
        values = _values(frame[name], name in numerical)
        stats = ColumnStats(n=len(values))
        counts = values.value_counts(sort=False)
        stats.values = None if name in numerical and len(counts) > FEW_VALUES else Counter(counts.to_dict())
        if name in numerical and len(values):
            array = values.to_numpy()
            stats.lo, stats.hi, stats.mean = float(array.min()), float(array.max()), float(array.mean())
            stats.m2 = float(((array - stats.mean) ** 2).sum())
        out[name] = stats
    return out


def partition_histograms(
    frame: pd.DataFrame, contract: DatasetContract, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Pass two over one partition: a HISTOGRAM_BINS histogram of each column in `ranges` over its range."""
    frame, _ = _columns(frame, contract)
    return {
        name: np.histogram(_values(frame[name], True).to_numpy(), bins=HISTOGRAM_BINS, range=(lo, hi))[0]
        for name, (lo, hi) in ranges.items()
    }


def merge_all(parts: Iterable[Stats], numerical: set[str]) -> Stats:
    """Partition statistics added up, in the order given (the same order gives the same floats)."""
    merged: Stats = {}
    for part in parts:
        for name, stats in part.items():
            merged[name] = merged[name].merge(stats, name in numerical) if name in merged else stats
    return merged


@dataclass
class MergedDrift:
    """Verdicts per column, and what they were computed from."""

    columns: dict[str, ColumnDrift]
    reference_rows: int
    window_rows: int
    partitions: tuple[int, int]  # (reference, window)
    skipped: dict[str, str]  # column -> why it was not tested here
    extras: list[Any] = field(default_factory=list)  # window_extra's result per window partition, in order


def merged_drift(
    reference: Sequence[Partition],
    window: Sequence[Partition],
    contract: DatasetContract,
    *,
    client: Client | None = None,
    window_extra: WindowExtra | None = None,
) -> MergedDrift:
    """Drift of `window` against `reference`, each a list of partition readers, over every row.

    With a Dask `client`, each partition is read and summarised by a task on the cluster (two passes);
    without, one after the other here. Both give the same verdicts: the summaries are merged here, in
    partition order. `window_extra(frame, index, window_rows)` runs in the second pass on each window
    partition, where it is read (so without another read); its results are the result's `extras`.
    """
    if not reference or not window:
        raise DriftError("merged drift needs at least one reference and one window partition")
    ref_parts = _run(client, partial_stats, reference, contract=contract)
    cur_parts = _run(client, partial_stats, window, contract=contract)
    numerical = _numerical(contract, [s for _, s in ref_parts + cur_parts])
    ref, cur = merge_all((s for _, s in ref_parts), numerical), merge_all((s for _, s in cur_parts), numerical)
    skipped: dict[str, str] = {}
    wasserstein: list[str] = []
    for name in ref:
        if name not in cur or cur[name].n == 0:
            skipped[name] = "no values in the window"
        elif ref[name].n <= MIN_ROWS:
            skipped[name] = f"{ref[name].n} non-null reference rows (<= {MIN_ROWS}: Evidently tests p-values)"
        elif name in numerical and not _few_values(ref[name], cur[name]):
            wasserstein.append(name)
    # One range for both sides, so both histograms share their bins: with a range of its own each side's
    # bin centres sit at other offsets from the values, which reads as a distance where there is none
    # (Evidently's Spark engine does that; on integer counts it added ~0.005 of spurious distance).
    ranges = {c: (min(ref[c].lo, cur[c].lo), max(ref[c].hi, cur[c].hi)) for c in wasserstein}
    ref_hist, _ = _histograms(client, reference, contract, ranges)
    rows = (sum(n for n, _ in ref_parts), sum(n for n, _ in cur_parts))
    cur_hist, extras = _histograms(client, window, contract, ranges, extra=window_extra, rows=rows[1])
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test

    columns: dict[str, ColumnDrift] = {}
    for name in ref:
        if name in skipped:
            continue
        if name in wasserstein:
            score = _wasserstein(ref[name], ranges[name], ref_hist[name], cur_hist[name])
            test = wasserstein_stat_test
        else:
            score = _jensenshannon(_counts(ref[name]), _counts(cur[name]))
            test = jensenshannon_stat_test
        threshold = float(test.default_threshold)
        columns[name] = ColumnDrift(
            column=name,
            kind="numerical" if name in numerical else "categorical",
            test=test.display_name,  # Evidently's names, as a report's verdicts carry them
            threshold=threshold,
            score=score,
            drifted=score >= threshold,
        )
    return MergedDrift(columns, rows[0], rows[1], (len(reference), len(window)), skipped, extras)


# ---- the passes, here or on the cluster ----------------------------------------------------------------
def partial_stats(read: Partition, contract: DatasetContract) -> tuple[int, Stats]:
    """(rows, statistics) of one partition, read where this runs."""
    frame = read()
    absent = [c for c in contract.feature_columns if c not in frame]
    if absent:  # as compute_drift refuses a frame without them: no column silently tested as empty
        raise DriftError(f"the partition {read!r} lacks the contract's feature columns {absent}")
    return len(frame), partition_stats(frame, contract)


def partial_histograms(
    item: tuple[int, Partition],
    contract: DatasetContract,
    ranges: Mapping[str, tuple[float, float]],
    extra: WindowExtra | None = None,
    rows: int = 0,
) -> tuple[dict[str, np.ndarray], Any]:
    """(histograms, `extra(frame, index, rows)` or None) of one partition, read where this runs."""
    index, read = item
    frame = read()
    return partition_histograms(frame, contract, ranges), None if extra is None else extra(frame, index, rows)


def _run(client: Client | None, fn: Callable[..., Any], parts: Sequence[Any], **kwargs: Any) -> list[Any]:
    """`fn(part, **kwargs)` for every part, in order: here, or one task per part on the cluster."""
    if client is None:
        return [fn(part, **kwargs) for part in parts]
    return map_tasks(client, fn, parts, **kwargs)


def _histograms(
    client: Client | None,
    parts: Sequence[Partition],
    contract: DatasetContract,
    ranges: dict[str, tuple[float, float]],
    *,
    extra: WindowExtra | None = None,
    rows: int = 0,
) -> tuple[dict[str, np.ndarray], list[Any]]:
    """The histograms over `ranges` summed over `parts`, and `extra`'s result per part (a pass that has
    neither to compute reads nothing)."""
    if not ranges and extra is None:
        return {}, []
    total = {name: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for name in ranges}
    extras = []
    found = _run(
        client, partial_histograms, list(enumerate(parts)), contract=contract, ranges=ranges, extra=extra, rows=rows
    )
    for hist, result in found:
        for name, counts in hist.items():
            total[name] += counts
        extras.append(result)
    return total, extras


# ---- the tests --------------------------------------------------------------------------------------------
def _numerical(contract: DatasetContract, parts: list[Stats]) -> set[str]:
    present = sorted({name for part in parts for name in part})
    return set(column_mapping(contract, present)["numerical"])


def _few_values(ref: ColumnStats, cur: ColumnStats) -> bool:
    """Whether both sides together hold at most FEW_VALUES distinct values (Evidently then tests the
    frequencies, not the distance between distributions)."""
    return ref.values is not None and cur.values is not None and len(set(ref.values) | set(cur.values)) <= FEW_VALUES


def _counts(stats: ColumnStats) -> Counter[Any]:
    assert stats.values is not None  # tested with Jensen-Shannon only when the values were kept
    return stats.values


def _jensenshannon(ref: Counter[Any], cur: Counter[Any]) -> float:
    """scipy's Jensen-Shannon distance (natural log) between the value frequencies, as Evidently's."""
    from scipy.spatial import distance

    keys = sorted(set(ref) | set(cur), key=str)
    ref_n, cur_n = sum(ref.values()), sum(cur.values())
    p = np.array([ref[k] / ref_n for k in keys])
    q = np.array([cur[k] / cur_n for k in keys])
    return float(distance.jensenshannon(p, q))


def _wasserstein(ref: ColumnStats, bins: tuple[float, float], ref_hist: np.ndarray, cur_hist: np.ndarray) -> float:
    """Wasserstein distance between the two histograms (bin centres of the shared range `bins`), over the
    reference's population standard deviation."""
    from scipy.stats import wasserstein_distance

    edges = np.histogram_bin_edges([], bins=HISTOGRAM_BINS, range=bins)
    centres = edges[:-1] + np.diff(edges) / 2
    norm = max(float(np.sqrt(ref.m2 / ref.n)), 0.001)
    return float(wasserstein_distance(centres, centres, ref_hist, cur_hist) / norm)


# ---- the monitoring flow's drift, from partitions -------------------------------------------------------
def compute_drift_merged(
    reference: pd.DataFrame,
    window: Sequence[Partition],
    contract: DatasetContract,
    *,
    client: Client | None = None,
    reference_sample_rows: int = 50_000,
    window_sample_rows: int = 50_000,
    partition_rows: int = 100_000,
    drift_share: float = 0.5,
    seed: int = 42,
) -> DriftResult:
    """`compute_drift`'s result, with the window read partition by partition (on the cluster with a
    `client`) and never held whole here.

    * Verdicts: `merged_drift` over every window row and the seeded reference sample `compute_drift` takes
      (cut into parts of `partition_rows`). A column it does not test (1,000 reference values or fewer) is
      judged by Evidently on the samples below, as `compute_drift` judges it.
    * Data quality: per partition, added up (`merge_quality`); performance: on the labelled rows, which
      each partition hands back.
    * The Evidently report (HTML, workspace) is run on the reference sample and a seeded sample of about
      `window_sample_rows` window rows drawn per partition, for its plots; its drift scores and verdicts are
      the merged ones (a stat test per column that returns them), so the report, the MLflow metrics and the
      decision agree.
    """
    absent = [c for c in contract.feature_columns if c not in reference]
    if absent:
        raise DriftError(f"the reference lacks the contract's feature columns {absent}")
    ref = sample_rows(reference, reference_sample_rows, seed)
    ref_parts = [partial(ref.iloc[i : i + partition_rows].copy) for i in range(0, len(ref), partition_rows)]
    summary = partial(window_summary, contract=contract, sample_size=window_sample_rows, seed=seed)
    merged = merged_drift(ref_parts, window, contract, client=client, window_extra=summary)
    parts: list[tuple[DataQuality, pd.DataFrame, pd.DataFrame]] = merged.extras
    cur = pd.concat([sample for _, _, sample in parts], ignore_index=True)
    shared = [c for c in PREDICTION_COLUMNS if c in ref and c in cur]
    tested = {c: d for c, d in merged.columns.items() if c in contract.feature_columns or c in shared}
    ref_frame = drift_frame(ref[[*contract.feature_columns, *shared]], contract)
    cur_frame = drift_frame(cur[[*contract.feature_columns, *shared]], contract)
    methods = {c: _stattest_name(d) for c, d in tested.items()}
    token = _MERGED.set(tested)
    try:
        snapshot, reported = report_verdicts(
            ref_frame, cur_frame, contract, shared, drift_share=drift_share, methods=methods
        )
    finally:
        _MERGED.reset(token)
    verdicts = {**reported, **tested}
    labelled = [rows for _, rows, _ in parts if len(rows)]
    return drift_result(
        verdicts,
        shared,
        contract,
        rows=(len(reference), merged.window_rows),
        sample_rows=(len(ref), merged.window_rows),  # the tests read every window row
        drift_share=drift_share,
        quality=merge_quality([quality for quality, _, _ in parts]),
        labelled=pd.concat(labelled) if labelled else cur.iloc[:0],
        snapshot=snapshot,
    )


def window_summary(
    frame: pd.DataFrame, index: int, window_rows: int, *, contract: DatasetContract, sample_size: int, seed: int
) -> tuple[DataQuality, pd.DataFrame, pd.DataFrame]:
    """One window partition's data quality, its labelled rows, and a seeded sample of its share of
    `sample_size` (its rows over the window's)."""
    fraction = min(1.0, sample_size / window_rows) if window_rows else 1.0
    sample = sample_rows(frame, round(len(frame) * fraction), seed + 1 + index)
    return data_quality(frame, contract), rows_with_labels(frame), sample


# The merged verdicts of the report being run: its stat tests read them (Evidently calls a stat test with the
# two columns only). A context variable, so that concurrent runs in one process keep theirs apart.
_MERGED: ContextVar[dict[str, ColumnDrift]] = ContextVar("merged_drift_verdicts")


def _merged_verdict(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    verdict = _MERGED.get()[str(reference.name)]
    return verdict.score, verdict.drifted


@cache
def _stattests() -> dict[str, str]:
    """Evidently's test display name -> the name of a stat test that reports the merged verdict under it."""
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    names = {}
    for test in (wasserstein_stat_test, jensenshannon_stat_test):
        name = f"merged_{test.name}"
        merged = StatTest(
            name=name,
            display_name=f"{test.display_name}, merged over partitions",
            allowed_feature_types=[ColumnType.Numerical, ColumnType.Categorical],
            default_threshold=test.default_threshold,
        )
        register_stattest(merged, default_impl=_merged_verdict)
        names[test.display_name] = name
    return names


def _stattest_name(verdict: ColumnDrift) -> str:
    return _stattests()[verdict.test]
