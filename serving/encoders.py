"""Batch output: each predicted chunk encoded as CSV, NDJSON or an Arrow IPC stream.

The counterpart of serving.batch, which reads the uploads. CSV is written by Arrow's C++ writer from
the result arrays (formatting rows in Python would cost more than the prediction itself); `arrow`
sends the same columns as an Arrow IPC stream, one record batch per chunk, with no text formatting
at all; NDJSON carries one JSON object per row, worded as /predict words a prediction.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from core.inference.predictor import Prediction
from core.modeling.compiled import Columns
from serving.schemas import unknown_flag

OutputFormat = Literal["csv", "ndjson", "arrow"]
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv", "ndjson": "application/x-ndjson", "arrow": ARROW_STREAM}


@dataclass(frozen=True)
class Chunk:
    """One predicted chunk of a batch, as the encoders and the prediction log take it."""

    ids: pa.Array  # one request id per row
    result: Prediction
    flagged: dict[int, list[str]]  # row within the chunk -> its flags, for flagged rows only
    flags: pa.Array  # '; '-joined flags per row, null where nothing is flagged
    explanations: list[dict[str, Any]] | None = None  # per row, core.modeling.explain.top_reasons' answer


def chunk_flags(unknown: dict[str, np.ndarray], chunk: Columns, offset: int, n: int) -> dict[int, list[str]]:
    """The flags of each flagged row in the chunk (masks from the batch check), worded as /predict words them."""
    flagged: dict[int, list[str]] = {}
    for name, mask in unknown.items():
        for i in np.flatnonzero(mask[offset : offset + n]).tolist():
            flagged.setdefault(i, []).append(unknown_flag(name, chunk[name][i]))
    return flagged


def flag_column(flagged: dict[int, list[str]], n: int) -> pa.Array:
    """'; '-joined flags per row, null (an empty CSV field) where nothing is flagged."""
    if not flagged:
        return pa.nulls(n, pa.string())
    text = np.full(n, None, dtype=object)
    for i, row_flags in flagged.items():
        text[i] = "; ".join(row_flags)
    return pa.array(text, pa.string())


class Encoder(ABC):
    """Bytes for each chunk, in order, then `end()` once after the last."""

    def __init__(self, classes: list[str], explain: int = 0) -> None:
        self.classes = classes
        self.explain = explain

    @abstractmethod
    def chunk(self, chunk: Chunk) -> bytes: ...

    def end(self) -> bytes:
        return b""


class NdjsonEncoder(Encoder):
    def chunk(self, chunk: Chunk) -> bytes:
        result, probs = chunk.result, chunk.result.probabilities
        ids = chunk.ids.to_pylist()
        return "".join(
            json.dumps(
                {
                    "request_id": ids[i],
                    "prediction": result.labels[i],
                    "probabilities": dict(zip(self.classes, probs[i].tolist(), strict=True))
                    if probs is not None
                    else None,
                    "flags": chunk.flagged.get(i, []),
                    **({"explanation": chunk.explanations[i]} if chunk.explanations is not None else {}),
                }
            )
            + "\n"
            for i in range(len(ids))
        ).encode()


class _TableEncoder(Encoder):
    """CSV and Arrow: the same columns (request_id, prediction, p_<class>..., flags) as one table."""

    def __init__(self, classes: list[str], explain: int = 0) -> None:
        super().__init__(classes, explain)
        self.sink = io.BytesIO()

    def _batch(self, chunk: Chunk, probs: np.ndarray | None) -> pa.RecordBatch:
        table: dict[str, Any] = {"request_id": chunk.ids, "prediction": pa.array(chunk.result.labels)}
        if probs is not None:
            table.update({f"p_{c}": probs[:, k] for k, c in enumerate(self.classes)})
        table["flags"] = chunk.flags
        if chunk.explanations is not None:
            table.update(reason_columns(chunk.explanations, self.explain))
        return pa.record_batch(table)

    def _drain(self) -> bytes:
        out = self.sink.getvalue()
        self.sink.seek(0)
        self.sink.truncate()
        return out


def reason_columns(explanations: list[dict[str, Any]], k: int) -> dict[str, pa.Array]:
    """Reason codes as flat columns (the same set on every row and chunk, nulls where a row has fewer):
    explain_method, explained_class, base_value, raw_output, reason_<i>_column/_value/_contribution, other,
    explain_note.
    Values are text: a column holds one contract column's value on one row and another's on the next."""
    out: dict[str, list[Any]] = {"explain_method": [], "explained_class": [], "base_value": [], "raw_output": []}
    for i in range(1, k + 1):
        out |= {f"reason_{i}_column": [], f"reason_{i}_value": [], f"reason_{i}_contribution": []}
    out |= {"other": [], "explain_note": []}
    for e in explanations:
        reasons = e.get("reasons", [])
        out["explain_method"].append(e["method"])
        out["explained_class"].append(e.get("explained_class"))
        out["base_value"].append(e.get("base_value"))
        out["raw_output"].append(e.get("raw_output"))
        for i in range(1, k + 1):
            r = reasons[i - 1] if i <= len(reasons) else None
            out[f"reason_{i}_column"].append(r["column"] if r else None)
            out[f"reason_{i}_value"].append(None if r is None or r["value"] is None else str(r["value"]))
            out[f"reason_{i}_contribution"].append(r["contribution"] if r else None)
        out["other"].append(e.get("other"))
        out["explain_note"].append(e.get("reason"))
    types = {"base_value": pa.float64(), "raw_output": pa.float64(), "other": pa.float64()}
    return {
        name: pa.array(values, types.get(name, pa.float64() if name.endswith("_contribution") else pa.string()))
        for name, values in out.items()
    }


class CsvEncoder(_TableEncoder):
    def __init__(self, classes: list[str], explain: int = 0) -> None:
        super().__init__(classes, explain)
        self.header = True

    def chunk(self, chunk: Chunk) -> bytes:
        probs = chunk.result.probabilities
        # Six decimals: the parity tolerance is 1e-4, and full float text would double the bytes.
        batch = self._batch(chunk, np.round(probs, 6) if probs is not None else None)
        pa_csv.write_csv(batch, self.sink, pa_csv.WriteOptions(include_header=self.header))
        self.header = False
        return self._drain()


class ArrowEncoder(_TableEncoder):
    def __init__(self, classes: list[str], explain: int = 0) -> None:
        super().__init__(classes, explain)
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None

    def chunk(self, chunk: Chunk) -> bytes:
        batch = self._batch(chunk, chunk.result.probabilities)
        if self.writer is None:  # the schema is known once the first chunk is predicted
            self.writer = pa.ipc.new_stream(self.sink, batch.schema)
        self.writer.write_batch(batch)
        return self._drain()

    def end(self) -> bytes:
        if self.writer is None:
            return b""
        self.writer.close()  # the end-of-stream marker
        return self._drain()


def encoder_for(output: OutputFormat, classes: list[str], explain: int = 0) -> Encoder:
    encoders: dict[str, type[Encoder]] = {"csv": CsvEncoder, "ndjson": NdjsonEncoder, "arrow": ArrowEncoder}
    return encoders[output](classes, explain)
