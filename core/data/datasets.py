"""Read the processed splits without knowing their layout.

``latest_processed().load("train")`` is all that training, the promotion gate (``"holdout"``) and
monitoring (``"reference"``) need; the manifest carries each split's rows, fingerprint, time window
and positive rate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.contract import DatasetContract
from core.settings import Settings

SPLIT_NAMES = ("train", "validation", "test", "holdout", "reference")


class DatasetsNotFoundError(FileNotFoundError):
    """No processed datasets yet (run collection and preprocessing first)."""


@dataclass(frozen=True)
class ProcessedDatasets:
    version: str
    dir: Path
    manifest: dict[str, Any]
    contract: DatasetContract

    def path(self, split: str) -> Path:
        """The split's folder of pieces (``<split>/part-*.parquet``), or its one file (``<split>.parquet``, as
        versions built before splits were written in pieces hold it)."""
        if split not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split!r}; choose one of {list(SPLIT_NAMES)}")
        folder = self.dir / split
        return folder if folder.is_dir() else self.dir / f"{split}.parquet"

    def load(self, split: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One split with the contract's dtypes (nullable ints as Int64, categories as object strings); pieces
        in their order."""
        path = self.path(split)
        wanted = list(columns) if columns is not None else None
        if path.is_dir():
            pieces = [pq.read_table(f, columns=wanted) for f in sorted(path.glob("part-*.parquet"))]
            frame = pa.concat_tables(pieces).to_pandas()
        else:
            frame = pd.read_parquet(path, columns=wanted)
        for col in self.contract.columns:
            if col.name in frame.columns and col.type == "int":
                frame[col.name] = frame[col.name].astype("Int64" if col.nullable else "int64")
        return frame


def processed_version(version: str, settings: Settings) -> ProcessedDatasets:
    directory = settings.data_dir / "processed" / version
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise DatasetsNotFoundError(f"no processed datasets version {version} at {directory}")
    return ProcessedDatasets(
        version=version, dir=directory, manifest=json.loads(manifest_path.read_text()), contract=settings.contract
    )


def latest_processed(settings: Settings) -> ProcessedDatasets:
    """The version ``processed/latest.json`` points at."""
    pointer = settings.data_dir / "processed" / "latest.json"
    if not pointer.exists():
        raise DatasetsNotFoundError(
            f"no processed datasets under {pointer.parent}: run `python -m pipelines.collect` "
            "then `python -m pipelines.preprocess`"
        )
    return processed_version(json.loads(pointer.read_text())["version"], settings)
