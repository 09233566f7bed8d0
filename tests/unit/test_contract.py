"""The dataset contract: the real one loads, broken ones are refused with a message naming the fault."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from core.contract import ContractError, load_contract, parse_contract
from core.data.rules import ContractChecker, arrow_schema
from core.settings import PROJECT_ROOT

CONTRACT = PROJECT_ROOT / "configs" / "fraud" / "dataset.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(CONTRACT.read_text())
    assert isinstance(data, dict)
    return data


def test_the_project_contract_loads_with_its_roles() -> None:
    c = load_contract(CONTRACT)
    assert c.task == "binary"
    assert (c.id_column, c.timestamp_column, c.target.name) == ("transaction_id", "event_time", "is_fraud")
    assert c.target.label_delay_days == 3
    assert "transaction_id" not in c.feature_columns and "is_fraud" not in c.feature_columns
    assert set(c.numeric_features) >= {"amount", "txn_count_1h", "customer_tenure_days"}
    assert set(c.categorical_features) == {"merchant_category", "channel", "country", "device"}
    assert c.column("merchant_category").allow_unknown and not c.column("channel").allow_unknown


def _column(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(col for col in raw["columns"] if col["name"] == name)


def _break(raw: dict[str, Any], fault: str) -> dict[str, Any]:
    bad = copy.deepcopy(raw)
    if fault == "unknown type":
        _column(bad, "amount")["type"] = "money"
    elif fault == "category without categories":
        del _column(bad, "channel")["categories"]
    elif fault == "duplicate column":
        bad["columns"].append(copy.deepcopy(_column(bad, "amount")))
    elif fault == "missing id column":
        bad["id_column"] = "tx_id"
    elif fault == "min above max":
        _column(bad, "amount")["min"] = 10.0
        _column(bad, "amount")["max"] = 1.0
    elif fault == "nullable target":
        _column(bad, "is_fraud")["nullable"] = True
    elif fault == "three classes for binary":
        bad["target"]["classes"] = [0, 1, 2]
    elif fault == "positive class not a class":
        bad["target"]["positive_class"] = 7
    elif fault == "timestamp not datetime":
        bad["timestamp_column"] = "amount"
    elif fault == "unknown key":
        bad["columns"][0]["colour"] = "red"
    return bad


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("unknown type", "unknown type 'money' for column 'amount'"),
        ("category without categories", "column 'channel': type category needs a non-empty 'categories' list"),
        ("duplicate column", "duplicate column names: ['amount']"),
        ("missing id column", "id_column 'tx_id' is not one of the contract's columns"),
        ("min above max", "column 'amount': min 10.0 is greater than max 1.0"),
        ("nullable target", "target 'is_fraud' must not be nullable"),
        ("three classes for binary", "task binary needs exactly two target.classes"),
        ("positive class not a class", "target.positive_class 7 is not one of target.classes"),
        ("timestamp not datetime", "timestamp_column 'amount' must have type datetime"),
        ("unknown key", "colour"),
    ],
)
def test_a_broken_contract_is_refused_naming_the_fault(raw: dict[str, Any], fault: str, message: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_contract(_break(raw, fault), source="broken.yaml")
    assert message in str(err.value)
    assert "broken.yaml" in str(err.value)


def test_unreadable_contract_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not found"):
        load_contract(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("columns: [unclosed")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ContractError, match="must be a mapping"):
        load_contract(tmp_path / "list.yaml")


def test_the_checker_derives_from_the_contract() -> None:
    c = load_contract(CONTRACT)
    schema = arrow_schema(c, c.column_names)
    assert schema.names == c.column_names
    for col in c.columns:
        assert schema.field(col.name).nullable == col.nullable
    rules = ContractChecker(c).rules
    # The declared ranges and category lists travel into the rules (and from there into the API model).
    assert rules["amount"].field_constraints() == {"ge": 0.0, "le": 100000.0}
    assert rules["amount"].range_text() == "[0.0, 100000.0]"
    checked = ContractChecker(c, ["channel", "merchant_category"]).check(
        pd.DataFrame({"channel": ["pos", "teleport"], "merchant_category": ["grocery", "crypto"]})
    )
    assert [(f.column, f.kind) for f in checked.faults] == [("channel", "unknown category")]
    assert checked.unknown["merchant_category"].tolist() == [False, True]  # allow_unknown: flagged, not refused


def test_a_contract_reads_as_its_fields_to_dict() -> None:
    # Prefect passes task parameters through dict(model): an attribute named `keys` once broke that.
    c = load_contract(CONTRACT)
    assert dict(c)["name"] == "card_fraud"
