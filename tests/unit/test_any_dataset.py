"""The contract takes data as it comes: any column names, optional id and timestamp, labels of any type,
timestamps in every common form, and settings that fit the task (issue: any tabular dataset)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract import ROW_KEY, ContractError, identifier, parse_contract
from core.data.rules import ContractChecker, parse_timestamp, row_keys, to_timestamps
from core.data.validation import REASON, validate_batch
from core.modeling.metrics import compute_metrics
from core.settings import SettingsError, load_settings


def contract(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "penguins",
        "task": "multiclass",
        "target": {"name": "species", "classes": ["Adelie", "Chinstrap", "Gentoo"]},
        "columns": [
            {"name": "Body mass (g)", "type": "float", "min": 0, "nullable": True},
            {"name": "flipper/length", "type": "float", "nullable": True},
            {"name": "2nd island", "type": "category", "categories": ["Biscoe", "Dream"], "nullable": True},
            {"name": "Île", "type": "string", "nullable": True},
            {"name": "species", "type": "category", "categories": ["Adelie", "Chinstrap", "Gentoo"]},
        ],
    }
    raw.update(overrides)
    return raw


def test_column_names_as_the_source_has_them_get_one_derived_identifier() -> None:
    c = parse_contract(contract())
    assert c.identifiers == {
        "Body mass (g)": "Body_mass_g",
        "flipper/length": "flipper_length",
        "2nd island": "c_2nd_island",
        "Île": "Ile",
        "species": "species",
    }
    assert c.id_column is None and c.timestamp_column is None and c.key_column == ROW_KEY
    assert not c.is_ordered and c.time_feature_columns == []
    assert identifier("a--b  c") == "a_b_c"


def test_two_names_that_derive_the_same_identifier_are_refused_naming_both() -> None:
    raw = contract()
    raw["columns"].insert(0, {"name": "flipper length", "type": "float"})
    with pytest.raises(ContractError, match=r"\['flipper length', 'flipper/length'\] -> 'flipper_length'"):
        parse_contract(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"derived_time_features": ["hour_of_day"]}, "derived_time_features need a timestamp_column"),
        (
            {"target": {"name": "species", "classes": ["Adelie", "Gentoo"], "label_delay_days": 2}},
            "label_delay_days needs a timestamp_column",
        ),
        ({"target": {"name": "species", "classes": ["Adelie", 2, "Gentoo"]}}, "do not fit the type category"),
        ({"target": {"name": "species", "classes": ["Adelie", "Gentoo"]}}, "must equal the categories"),
    ],
)
def test_contract_faults_of_the_new_kinds_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        parse_contract(contract(**change))


def test_string_and_boolean_labels_are_labels() -> None:
    binary = contract(task="binary", target={"name": "ok", "classes": ["no", "yes"], "positive_class": "yes"})
    binary["columns"][-1] = {"name": "ok", "type": "string"}
    assert parse_contract(binary).classes == ["no", "yes"]
    flags = contract(task="binary", target={"name": "ok", "classes": [False, True], "positive_class": True})
    flags["columns"][-1] = {"name": "ok", "type": "bool"}
    assert parse_contract(flags).target.positive_class is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-01", datetime(2025, 1, 1)),
        ("2025-01-01T10:30:00", datetime(2025, 1, 1, 10, 30)),
        ("2025-01-01T10:30:00+02:00", datetime(2025, 1, 1, 8, 30)),
        ("2025-01-01T10:30:00Z", datetime(2025, 1, 1, 10, 30)),
        (1735727400, datetime(2025, 1, 1, 10, 30)),
        ("1735727400", datetime(2025, 1, 1, 10, 30)),
        (1735727400.5, datetime(2025, 1, 1, 10, 30, 0, 500000)),
        ("tomorrow", None),
        (True, None),
        ("0001-01-01T00:00:00+05:00", None),  # before year 1 in UTC (schemathesis found it: a 500)
        ("1500-06-01", None),  # outside datetime64[ns], which the batch path reads into
    ],
)
def test_timestamps_are_read_the_same_way_everywhere(value: Any, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected
    column = pd.Series([value], dtype=object)
    parsed = to_timestamps(column).iloc[0]
    assert (pd.isna(parsed) and expected is None) or parsed == pd.Timestamp(expected)


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    form=st.sampled_from(["date", "minutes", "seconds", "micro", "space"]),
    offset=st.sampled_from(["", "Z", "+02:00", "-05:30", "+00:00"]),
    month=st.integers(1, 14),
)
def test_one_record_and_a_column_read_a_text_timestamp_alike(
    moment: datetime, form: str, offset: str, month: int
) -> None:
    """parse_timestamp reads the plain ISO forms without pandas; the batch path (to_timestamps) with it.
    Both must agree, invalid dates (month 13, 14) included."""
    text = {
        "date": f"{moment.year:04d}-{month:02d}-{moment:%d}",
        "minutes": f"{moment.year:04d}-{month:02d}-{moment:%dT%H:%M}",
        "seconds": f"{moment.year:04d}-{month:02d}-{moment:%dT%H:%M:%S}",
        "micro": f"{moment.year:04d}-{month:02d}-{moment:%dT%H:%M:%S.%f}",
        "space": f"{moment.year:04d}-{month:02d}-{moment:%d %H:%M:%S}",
    }[form] + ("" if form == "date" else offset)
    one = parse_timestamp(text)
    column = to_timestamps(pd.Series([text], dtype=object)).iloc[0]
    assert (one is None and pd.isna(column)) or pd.Timestamp(one) == column, (text, one, column)


def test_the_checker_types_text_and_names_each_fault() -> None:
    c = parse_contract(contract())
    frame = pd.DataFrame(
        {
            "Body mass (g)": ["3750", "-1", "heavy", None],
            "flipper/length": [181.0, np.nan, 190.0, 200.0],
            "2nd island": ["Biscoe", "Atlantis", None, "Dream"],
            "Île": ["x", "y", 3, None],
            "species": ["Adelie", "Gentoo", "Dodo", "Chinstrap"],
        }
    )
    checked = validate_batch(frame, c)
    assert len(checked.valid) == 2 and len(checked.quarantined) == 2
    assert checked.quarantined[REASON].tolist() == [
        "Body mass (g): -1.0 below min 0.0; 2nd island: unknown category 'Atlantis'",
        "Body mass (g): wrong type 'heavy'; species: Dodo not in classes ['Adelie', 'Chinstrap', 'Gentoo']",
    ]
    assert checked.quarantined["Body mass (g)"].tolist() == ["-1", "heavy"]  # kept as text, as sent
    assert checked.valid["Île"].tolist() == ["x", None]
    assert checked.valid["Body mass (g)"].tolist()[0] == 3750.0
    # Batch wording for the API: the same faults, worded as pydantic words them.
    errors = ContractChecker(c, c.input_columns).check(frame.drop(columns=["species"])).api_errors()
    assert {"field": "Body mass (g)", "message": "Input should be greater than or equal to 0", "rows": [2]} in errors


def test_row_keys_are_stable_and_keep_identical_rows_apart() -> None:
    table = pa.table({"a": [1, 1, 2], "b": ["x", "x", "y"]})
    seen: dict[int, int] = {}
    keys = row_keys(table, ["a", "b"], seen).to_pylist()
    assert keys[0] != keys[1] and keys[0].split("-")[0] == keys[1].split("-")[0]
    assert row_keys(table, ["a", "b"]).to_pylist() == keys  # the same rows, the same keys, every run
    more = row_keys(pa.table({"a": [1], "b": ["x"]}), ["a", "b"], seen).to_pylist()
    assert more[0].endswith("-2")  # a third identical row, in a later chunk of the same run


def test_multiclass_metrics_of_the_catalogue_work_on_class_indices() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[[0, 1, 2, 1, 1, 0]] * 0.8 + 0.2 / 3
    m = compute_metrics("multiclass", y, proba)
    assert set(m) == {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "log_loss", "roc_auc_ovr"}
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert 0 < m["f1_macro"] < 1 and np.isfinite(m["roc_auc_ovr"])


# ---- settings ---------------------------------------------------------------------------------------------
def _overlay(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(text)
    monkeypatch.setenv("MLOPS_CONFIG", f"configs/settings.yaml,configs/fraud/settings.yaml,{extra}")


def test_settings_files_merge_deeply(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _overlay(tmp_path, "splits:\n  reference_rows: 123\n", monkeypatch)
    s = load_settings()
    assert s.splits.reference_rows == 123
    assert s.splits.window_days == 28  # set by the fraud overlay, kept: a later file changes only its keys
    assert s.monitoring.column_weights == {"amount": 2.0, "txn_count_1h": 1.5}


def test_a_mapping_setting_is_replaced_whole(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _overlay(tmp_path, "monitoring:\n  column_weights: {amount: 3.0}\n", monkeypatch)
    assert load_settings().monitoring.column_weights == {"amount": 3.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training:\n  primary_metric: rmse\n", "training.primary_metric = 'rmse': does not apply to task binary"),
        ("monitoring:\n  performance_metric: accuracy2\n", "monitoring.performance_metric = 'accuracy2'"),
        ("monitoring:\n  column_weights: {colour: 2}\n", "monitoring.column_weights names ['colour']"),
        ("splits:\n  strategy: grouped\n", "splits.strategy = 'grouped': Input should be"),
        ("splits:\n  holdout: lots\n", "splits.holdout = 'lots': Input should be a valid number"),
        ("trainig:\n  families: [logistic]\n", "unknown setting 'trainig'"),
        ("training:\n  familes: [logistic]\n", "unknown setting 'training.familes'; known keys here:"),
    ],
)
def test_a_settings_mistake_is_one_message_naming_key_value_and_what_is_allowed(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    _overlay(tmp_path, text, monkeypatch)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_metrics_and_names_default_from_the_task_and_the_contract(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CONFIG", "configs/settings.yaml,configs/examples/breast_cancer/settings.yaml")
    s = load_settings()
    assert s.training.primary_metric == "roc_auc" and s.monitoring.performance_metric == "roc_auc"
    assert s.model_name == "breast-cancer" and s.splits.window_days is None


def test_a_window_is_refused_for_unordered_data(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(contract()))
    monkeypatch.setenv("MLOPS_CONTRACT_PATH", str(path))
    monkeypatch.setenv("MLOPS_MONITORING__COLUMN_WEIGHTS", "{}")
    with pytest.raises(SettingsError, match=r"splits\.window_days = 28: the contract has no timestamp_column"):
        load_settings()


@pytest.mark.parametrize("kind", ["date", "number", "category", "flag"])
def test_a_value_of_any_shape_is_a_wrong_type_never_a_crash(kind: str) -> None:
    c = parse_contract(
        {
            "name": "shapes",
            "task": "regression",
            "target": {"name": "y"},
            "columns": [
                {"name": "date", "type": "datetime", "nullable": True},
                {"name": "number", "type": "float", "nullable": True},
                {"name": "category", "type": "category", "categories": ["a"], "nullable": True},
                {"name": "flag", "type": "bool", "nullable": True},
                {"name": "y", "type": "float"},
            ],
        }
    )
    for odd in ([{"nested": 1}], [[1, 2]], [b"bytes"]):
        table = pa.table({kind: pa.array(odd)})
        checked = ContractChecker(c, [kind]).check(table)
        assert [(f.column, f.kind) for f in checked.faults] == [(kind, "wrong type")], odd


@pytest.mark.parametrize("metric", ["f1_macro", "accuracy", "roc_auc_ovr", "log_loss"])
def test_multiclass_string_labels_train_and_explain_with_any_catalogue_metric(tmp_path: Path, metric: str) -> None:
    # The old failure: int() on string labels, and binary scorers in permutation importance.
    from core.modeling.diagnostics import write_plots
    from core.modeling.families import build_pipeline
    from core.modeling.features import to_model_input
    from core.modeling.training import encode_target, model_classes, predict_scores

    c = parse_contract(contract())
    rng = np.random.default_rng(0)
    n = 300
    mass = rng.uniform(3000, 6000, n)
    frame = pd.DataFrame(
        {
            "Body mass (g)": mass,
            "flipper/length": rng.normal(200, 10, n),
            "2nd island": rng.choice(["Biscoe", "Dream"], n),
            "Île": rng.choice(["a", "b"], n),
            "species": np.asarray(["Adelie", "Chinstrap", "Gentoo"], dtype=object)[np.digitize(mass, [4000, 5000])],
        }
    )
    X, y = to_model_input(frame, c), frame["species"].to_numpy()
    model = build_pipeline(c, "logistic", seed=0).fit(X, y)
    assert model_classes(model) == ["Adelie", "Chinstrap", "Gentoo"]
    scores = predict_scores(model, X, c)
    assert compute_metrics("multiclass", encode_target(y, c, model_classes(model)), scores)["accuracy"] > 0.9
    paths = write_plots(model, X, y, scores, contract=c, threshold=0.5, out_dir=tmp_path, primary_metric=metric)
    assert {p.name for p in paths} == {"confusion_matrix.png", "permutation_importance.png"}


@pytest.mark.parametrize(
    ("module", "env", "code", "message"),
    [
        ("pipelines.preprocess", {"MLOPS_COLLECTION__READERS": "0"}, 2, "collection.readers = '0'"),
        ("pipelines.score", {"MLOPS_SPLITS__STRATEGY": "grouped"}, 2, "splits.strategy = 'grouped'"),
    ],
)
def test_a_flow_run_as_a_program_reports_a_users_mistake_as_one_message(
    state_dir: Path, module: str, env: dict[str, str], code: int, message: str
) -> None:
    """`python -m pipelines.<flow>` (docs/data.md) prints a settings or data mistake as `mlops run` does: the
    message, no traceback."""
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == code, run.stderr[-3000:]
    assert run.stderr.startswith("error: ") and message in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
