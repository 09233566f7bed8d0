"""Draft a dataset contract and a settings overlay from the data itself (`mlops contract init`).

Reads a bounded sample of the source, guesses each column's type, nullability, range (with a margin) and
categories, the task from the target, and writes two commented files a person reviews and edits:
``dataset.yaml`` (the contract) and ``settings.yaml`` (an overlay of configs/settings.yaml naming the
contract, the source, the registry names and task-appropriate metrics). Every guess is printed with its
reason. Nothing here decides for good: the files are a draft, and the contract is checked at load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.contract import identifier, parse_contract
from core.data.rules import to_timestamps
from core.modeling.catalogue import DEFAULT_METRIC

# A text column with at most this many distinct values (and repeating values) is a category.
MAX_CATEGORIES = 50
# A target with at most this many distinct values is a class label, unless it holds fractions.
MAX_CLASSES = 20
# Range margin: the seen span widened by this share on each side (never below 0 for non-negative data).
RANGE_MARGIN = 0.5
_RESERVED = ("prediction", "probability", "label")
_POSITIVE_WORDS = ("1", "true", "yes", "y", "positive", "pos", "fraud", "malignant", "churn", "default", "spam")


class DraftError(ValueError):
    """The source or the options cannot make a contract (a missing target column, say)."""


@dataclass
class Draft:
    name: str
    task: str
    contract: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was guessed, and why
    rename: dict[str, str] = field(default_factory=dict)  # source column -> contract column
    column_notes: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    positive_share: float | None = None


# ---- reading a bounded sample ----------------------------------------------------------------------------
def read_sample(
    source: str, *, table: str | None = None, query: str | None = None, max_rows: int = 100_000
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(the first `max_rows` rows, the overlay's `source` section). SOURCE is a CSV or Parquet path or glob,
    or a SQLAlchemy URL with a table or a query."""
    if "://" in source and not source.startswith(("file://", "s3://", "gs://", "az://", "abfs://", "http")):
        if not table and not query:
            raise DraftError(f"{source} is a database URL: name a --table or a --query")
        return _read_sql(source, table, query, max_rows)
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    files = sorted(fs.glob(root)) if re.search(r"[*?\[]", root) else ([root] if fs.exists(root) else [])
    if not files:
        raise DraftError(f"no file at {source}")
    kind = "parquet" if files[0].endswith((".parquet", ".pq")) else "csv"
    frames: list[pd.DataFrame] = []
    left = max_rows
    for f in files:
        with fs.open(f, "rb") as fh:
            if kind == "csv":
                frame = pd.read_csv(fh, nrows=left, compression="gzip" if f.endswith(".gz") else None)
            else:
                import pyarrow.parquet as pq

                batches = pq.ParquetFile(fh).iter_batches(batch_size=min(left, 65_536))
                parts = []
                for batch in batches:
                    parts.append(batch.to_pandas())
                    if sum(len(p) for p in parts) >= left:
                        break
                frame = pd.concat(parts, ignore_index=True).head(left) if parts else pd.DataFrame()
        frames.append(frame)
        left -= len(frame)
        if left <= 0:
            break
    return pd.concat(frames, ignore_index=True), {"kind": kind, "path": source}


def _read_sql(url: str, table: str | None, query: str | None, max_rows: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    import sqlalchemy as sa

    from core.databases import engine_for, safe_url

    engine = engine_for(url)
    try:
        prep = engine.dialect.identifier_preparer
        origin = f"({query.strip().rstrip(';')}) AS src" if query else prep.quote(table or "")
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text(f"SELECT * FROM {origin} LIMIT {int(max_rows)}"), conn)
    except Exception as exc:
        raise DraftError(f"could not read {safe_url(url)}: {type(exc).__name__}: {exc}") from None
    finally:
        engine.dispose()
    # The password, if any, stays out of the file: collection reads it from MLOPS_SOURCE__URL.
    section: dict[str, Any] = {"kind": "sql", "url": safe_url(url)}
    section.update({"query": query} if query else {"table": table})
    return frame, section


# ---- guessing ---------------------------------------------------------------------------------------------
def draft_contract(
    frame: pd.DataFrame,
    *,
    target: str,
    name: str,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    task: str | None = None,
) -> Draft:
    """Guess a contract for `frame`; raises DraftError naming what is wrong with the options."""
    for role, col in (("target", target), ("id", id_column), ("timestamp", timestamp_column)):
        if col is not None and col not in frame.columns:
            raise DraftError(f"--{role} {col!r} is not a column of the source; its columns: {list(frame.columns)}")
    if frame.empty:
        raise DraftError("the source has no rows to learn the columns from")
    draft = Draft(name=name, task="", contract={}, rows=len(frame))
    y = frame[target]
    if y.isna().any():
        draft.notes.append(f"{int(y.isna().sum())} sample rows have no {target}: collection will quarantine them")
    draft.task = task or _guess_task(y, draft)
    columns = []
    for col in frame.columns:
        contract_name = str(col)
        if contract_name in _RESERVED and col != target:
            contract_name = f"{col}_in"
            draft.rename[str(col)] = contract_name
            draft.notes.append(
                f"column {col!r} is renamed {contract_name!r} (the prediction log reserves the name; source.rename)"
            )
        role = (
            "target" if col == target else "id" if col == id_column else "timestamp" if col == timestamp_column else ""
        )
        columns.append(_guess_column(frame[col], contract_name, role, draft))
    contract: dict[str, Any] = {
        "name": name,
        "description": f"Drafted by `mlops contract init` from {len(frame)} sample rows; review and edit.",
        "task": draft.task,
    }
    if id_column:
        contract["id_column"] = id_column
    if timestamp_column:
        contract["timestamp_column"] = timestamp_column
    contract["target"] = _target(y, draft)
    contract["slice_columns"] = []
    contract["derived_time_features"] = []
    contract["columns"] = columns
    draft.contract = contract
    parse_contract(contract, source="the drafted contract")  # a draft that does not load is a bug here
    return draft


def _guess_task(y: pd.Series, draft: Draft) -> str:
    values = y.dropna()
    distinct = values.nunique()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    fractional = numeric and bool((values.astype(float) % 1 != 0).any())
    if numeric and (fractional or distinct > MAX_CLASSES):
        draft.notes.append(f"task regression: the target is numeric with {distinct} distinct values")
        return "regression"
    if distinct == 2:
        draft.notes.append("task binary: the target has two distinct values")
        return "binary"
    if 2 < distinct <= MAX_CLASSES or not numeric:
        draft.notes.append(f"task multiclass: the target has {distinct} distinct values")
        return "multiclass"
    raise DraftError(f"the target has {distinct} distinct value(s): give --task")


def _labels(y: pd.Series) -> list[Any]:
    values = y.dropna()
    if pd.api.types.is_bool_dtype(values):
        return [False, True]
    if pd.api.types.is_integer_dtype(values) or (pd.api.types.is_float_dtype(values) and bool((values % 1 == 0).all())):
        return sorted(int(v) for v in values.unique())
    return sorted(str(v) for v in values.unique())


def _target(y: pd.Series, draft: Draft) -> dict[str, Any]:
    out: dict[str, Any] = {"name": str(y.name)}
    if draft.task == "regression":
        return out
    classes = _labels(y)
    out["classes"] = classes
    if draft.task == "binary":
        positive = next((c for c in classes if str(c).strip().lower() in _POSITIVE_WORDS), None)
        counts = y.dropna().astype(str).value_counts()
        if positive is None:
            positive = min(classes, key=lambda c: counts.get(str(c), 0))
            draft.notes.append(f"positive_class {positive!r}: the rarer class (no label reads as 'positive')")
        else:
            draft.notes.append(f"positive_class {positive!r}: it reads as the positive label")
        out["positive_class"] = positive
        draft.positive_share = float(counts.get(str(positive), 0) / max(counts.sum(), 1))
    return out


def _guess_column(s: pd.Series, name: str, role: str, draft: Draft) -> dict[str, Any]:
    present = s.dropna()
    col: dict[str, Any] = {"name": name}
    why: list[str] = []
    if role == "target" and draft.task != "regression":
        classes = _labels(s)
        if isinstance(classes[0], bool):
            col["type"] = "bool"
        elif isinstance(classes[0], int):
            col.update({"type": "int", "min": min(classes), "max": max(classes)})
        else:
            col.update({"type": "category", "categories": classes})
        why.append(f"the target's {len(classes)} classes")
    elif role == "timestamp" or _looks_like_time(s):
        col["type"] = "datetime"
        why.append("the timestamp column" if role == "timestamp" else "its values read as timestamps")
    elif pd.api.types.is_bool_dtype(s):
        col["type"] = "bool"
        why.append("true/false values")
    elif pd.api.types.is_numeric_dtype(s):
        integral = bool((present.astype(float) % 1 == 0).all()) if len(present) else False
        # Whole numbers read as integers, or as floats only because some are missing (pandas' NaN).
        whole = pd.api.types.is_integer_dtype(s) or (pd.api.types.is_float_dtype(s) and bool(s.isna().any()))
        col["type"] = "int" if integral and whole else "float"
        if role != "id" and len(present):
            lo, hi = float(present.min()), float(present.max())
            margin = (hi - lo) * RANGE_MARGIN if hi > lo else abs(hi) * RANGE_MARGIN or 1.0
            low = 0.0 if lo >= 0 and lo - margin < 0 else lo - margin
            high = hi + margin
            if col["type"] == "int":
                low, high = float(np.floor(low)), float(np.ceil(high))
            col["min"], col["max"] = _number(low, col["type"]), _number(high, col["type"])
            why.append(f"numbers from {_number(lo, col['type'])} to {_number(hi, col['type'])}, range widened by 50%")
    else:
        text = present.astype(str)
        distinct = text.nunique()
        if role != "id" and 0 < distinct <= MAX_CATEGORIES and distinct < max(len(text) * 0.5, 2):
            col["type"] = "category"
            col["categories"] = sorted(text.unique().tolist())
            col["allow_unknown"] = True
            why.append(f"{distinct} distinct values: a category; new ones are accepted and flagged")
        else:
            col["type"] = "string"
            why.append(
                f"{distinct} distinct values of {len(text)}: free text, checked and logged but not a model input "
                "(make it a category to model it)"
                if role != "id"
                else "the id column"
            )
    col["nullable"] = bool(s.isna().any()) and role not in ("target", "id")
    if s.isna().any():
        why.append(f"{int(s.isna().sum())} missing in the sample")
    col["description"] = ""
    if len(present):
        col["example"] = _plain(present.iloc[0], col["type"])
    draft.column_notes[name] = "; ".join(why)
    return col


def _looks_like_time(s: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(s):
        return True
    if s.dtype != object:
        return False
    sample = s.dropna().astype(str).head(200)
    if sample.empty or not sample.str.contains(r"\d{4}-\d{2}-\d{2}", regex=True).all():
        return False
    return bool(to_timestamps(sample).notna().mean() > 0.95)


def _number(value: float, kind: str) -> int | float:
    return int(value) if kind == "int" else round(value, 6)


def _plain(value: Any, kind: str) -> Any:
    if kind == "datetime":
        stamp = to_timestamps(pd.Series([value], dtype=object)).iloc[0]
        return None if pd.isna(stamp) else pd.Timestamp(stamp).isoformat()
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return str(value)


# ---- the files ---------------------------------------------------------------------------------------------
def _scalar(value: Any) -> str:
    """A YAML scalar (JSON is valid YAML, and quotes whatever needs quoting)."""
    return json.dumps(value, ensure_ascii=False)


def contract_yaml(draft: Draft) -> str:
    c = draft.contract
    lines = [
        f"# The dataset contract for {draft.name}, drafted by `mlops contract init` from {draft.rows} sample rows.",
        "# Review every column: the types, ranges and categories below are guesses from the sample (see the",
        "# comment above each). A wrong guess makes collection quarantine good rows, or let bad ones through.",
        f"name: {_scalar(c['name'])}",
        f"description: {_scalar(c['description'])}",
        f"task: {c['task']}                 # binary | multiclass | regression",
    ]
    lines.append(
        f"id_column: {_scalar(c['id_column'])}"
        if "id_column" in c
        else "# id_column: none, so collection derives a row key from each row's content"
    )
    lines.append(
        f"timestamp_column: {_scalar(c['timestamp_column'])}"
        if "timestamp_column" in c
        else "# timestamp_column: none: rows are unordered, splits are random (stratified for classes)"
    )
    t = c["target"]
    lines += ["target:", f"  name: {_scalar(t['name'])}"]
    if "classes" in t:
        lines.append(f"  classes: {_scalar(t['classes'])}")
    if "positive_class" in t:
        lines.append(f"  positive_class: {_scalar(t['positive_class'])}   # its probability is the score")
    lines += [
        "  label_delay_days: 0        # labels are final this many days after the event (needs a timestamp)",
        "slice_columns: []            # category columns whose values the gate checks one by one",
        "derived_time_features: []    # hour_of_day, day_of_week, month of the timestamp, if time of day matters",
        "columns:",
    ]
    for col in c["columns"]:
        note = draft.column_notes.get(col["name"])
        if note:
            lines.append(f"  # {note}")
        lines.append(f"  - name: {_scalar(col['name'])}")
        lines.append(f"    type: {col['type']}")
        for key in ("nullable", "min", "max", "categories", "allow_unknown", "description", "example"):
            if key in col:
                lines.append(f"    {key}: {_scalar(col[key])}")
    return "\n".join(lines) + "\n"


def settings_yaml(draft: Draft, *, contract_path: str, source: dict[str, Any]) -> str:
    metric = DEFAULT_METRIC[draft.task]
    why = "the task's default"
    if draft.task == "binary" and draft.positive_share is not None and draft.positive_share < 0.2:
        metric, why = "pr_auc", f"positives are {draft.positive_share:.0%} of the sample: average precision"
    model_name = draft.name.replace("_", "-")
    rows = draft.rows
    lines = [
        f"# Settings for {draft.name}, drafted by `mlops contract init`: an overlay read after configs/settings.yaml",
        f"#   export MLOPS_CONFIG=configs/settings.yaml,{Path(contract_path).parent / 'settings.yaml'}",
        "# Everything not named here keeps its generic default (files merge key by key).",
        f"contract_path: {_scalar(contract_path)}",
        f"model_name: {_scalar(model_name)}",
        f"experiment_name: {_scalar(model_name)}",
        "",
        "source:",
    ]
    for key, value in source.items():
        if value is not None:
            lines.append(f"  {key}: {value if key == 'kind' else _scalar(value)}")
    if draft.rename:
        lines.append(f"  rename: {_scalar(draft.rename)}   # source name -> contract name")
    lines += [
        "",
        "training:",
        f"  primary_metric: {metric}    # {why}",
    ]
    small = rows < 10_000
    if small:
        lines += [
            "",
            f"# A small dataset ({rows} rows): references and windows sized to it.",
            "splits:",
            f"  reference_rows: {max(50, int(rows * 0.6))}",
            "monitoring:",
            f"  min_window_rows: {max(50, min(1000, rows // 10))}",
            f"  min_labelled_rows: {max(20, min(200, rows // 20))}",
        ]
    return "\n".join(lines) + "\n"


def write_draft(
    draft: Draft, out_dir: Path, *, source: dict[str, Any], project_root: Path, force: bool = False
) -> tuple[Path, Path]:
    """Write DIR/dataset.yaml and DIR/settings.yaml; refuse to overwrite either without `force`."""
    dataset, settings = out_dir / "dataset.yaml", out_dir / "settings.yaml"
    existing = [p for p in (dataset, settings) if p.exists()]
    if existing and not force:
        raise DraftError(f"{', '.join(str(p) for p in existing)} exist(s): pass --force to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        contract_path = str(dataset.resolve().relative_to(project_root))
    except ValueError:
        contract_path = str(dataset.resolve())
    dataset.write_text(contract_yaml(draft))
    settings.write_text(settings_yaml(draft, contract_path=contract_path, source=source))
    return dataset, settings


def default_name(source: str, table: str | None) -> str:
    """A contract name from the table or the file name: `data/Penguins (2024).csv` -> `penguins_2024`."""
    base = table or Path(source.split("?", maxsplit=1)[0].rstrip("/*")).name.split(".")[0] or "dataset"
    return identifier(base).lower()
