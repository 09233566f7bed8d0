"""Drift statistics per partition on a real Dask cluster (distributed.LocalCluster, 2 worker processes): each
partition is a Parquet file read by the task that summarises it, and the verdicts and scores are the ones
the same partitions give without a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from monitoring.merged_drift import merged_drift
from tests.drift_support import CONTRACT, flats


@pytest.fixture(scope="module")
def client(dask_cluster: str) -> Iterator[object]:
    from distributed import Client

    with Client(dask_cluster) as client:
        yield client


def _files(frame: pd.DataFrame, folder: Path, size: int) -> list[partial[pd.DataFrame]]:
    folder.mkdir()
    readers = []
    for i in range(0, len(frame), size):
        path = folder / f"part-{i // size:03d}.parquet"
        frame.iloc[i : i + size].to_parquet(path, index=False)
        readers.append(partial(pd.read_parquet, path))
    return readers


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_the_cluster_gives_the_local_verdicts_and_scores(client: object, tmp_path: Path, shift: float) -> None:
    reference = _files(flats(24_000, 1), tmp_path / "reference", 3_000)
    window = _files(flats(9_000, 2, shift=shift), tmp_path / "window", 2_000)
    local = merged_drift(reference, window, CONTRACT)
    remote = merged_drift(reference, window, CONTRACT, client=client)  # type: ignore[arg-type]
    assert remote.columns == local.columns
    assert (remote.reference_rows, remote.window_rows, remote.partitions) == (24_000, 9_000, (8, 5))
    assert any(d.drifted for d in local.columns.values()) == (shift > 0)
