"""The prediction service through real uvicorn on 127.0.0.1, serving a model from a real MLflow registry.

One service for the module (start-up costs seconds); each test sends its own requests.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from core.inference.sample import synthetic_frame
from core.predictions import read_feedback, read_predictions
from core.settings import get_settings
from tests.serving_support import ADMIN_KEY, Service, record, register, serve, unique_model_name, wait_for

PREDICT_KEY = "test-predict-key"
MAX_BODY = 20_000
MAX_ROWS = 3_000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    name = unique_model_name()
    register(mlflow_server, name)
    state = tmp_path_factory.mktemp("serving-api")
    env = {
        "MLOPS_SERVING__API_KEY": PREDICT_KEY,
        "MLOPS_SERVING__MAX_BODY_BYTES": str(MAX_BODY),
        "MLOPS_SERVING__MAX_BATCH_ROWS": str(MAX_ROWS),
        "MLOPS_SERVING__BATCH_CHUNK_ROWS": "700",
    }
    with serve(mlflow_server, name, state, env) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[Any]:
    with service.client(headers={"X-API-Key": PREDICT_KEY}) as c:
        yield c


def log_url(service: Service) -> str:
    return f"sqlite:///{service.state / 'predictions.db'}"


# ---- predictions --------------------------------------------------------------------------------


def test_predict_one_record(client: Any) -> None:
    r = client.post("/predict", json=record())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1"
    assert body["model_name"].startswith("serving-test-")
    (pred,) = body["predictions"]
    assert pred["request_id"] == body["request_id"]
    assert pred["prediction"] in (0, 1)
    assert set(pred["probabilities"]) == {"0", "1"}
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-6)
    assert pred["flags"] == []


def test_predict_list_gives_one_id_per_record_and_flags_unknown_categories(client: Any) -> None:
    records = [record(transaction_id=f"tx-{i}") for i in range(3)]
    records[1]["merchant_category"] = "space_tourism"  # unknown, allowed by the contract
    r = client.post("/predict", json=records)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len({p["request_id"] for p in preds}) == 3
    assert preds[0]["flags"] == [] and preds[2]["flags"] == []
    assert preds[1]["flags"] == ["merchant_category: unknown category 'space_tourism'"]


def test_predictions_are_logged_with_features(client: Any, service: Service) -> None:
    r = client.post("/predict", json=record(transaction_id="logged-tx", amount=1234.5))
    rid = r.json()["request_id"]

    def logged() -> dict[str, Any] | None:
        df = read_predictions(log_url(service))
        hit = df[df["request_id"] == rid] if "request_id" in df else df
        return hit.iloc[0].to_dict() if len(hit) else None

    row = wait_for(logged)
    assert row["transaction_id"] == "logged-tx"
    assert row["amount"] == 1234.5
    assert row["model_version"] == "1"
    assert row["latency_ms"] > 0
    assert row["prediction"] in (0, 1)
    assert 0.0 <= row["probability"] <= 1.0


def test_feedback_is_stored(client: Any, service: Service) -> None:
    rid = client.post("/predict", json=record()).json()["request_id"]
    r = client.post("/feedback", json={"request_id": rid, "label": 1})
    assert r.status_code == 202, r.text

    def stored() -> list[Any]:
        df = read_feedback(log_url(service))
        return df.loc[df["request_id"] == rid, "label"].tolist()

    assert wait_for(stored) == [1]


def test_feedback_takes_a_list_of_labels_in_one_request(client: Any, service: Service) -> None:
    ids = [p["request_id"] for p in client.post("/predict", json=[record()] * 5).json()["predictions"]]
    labels = [1, 0, 1, 1, 0]
    r = client.post("/feedback", json=[{"request_id": i, "label": y} for i, y in zip(ids, labels, strict=True)])
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 5}

    def stored() -> dict[str, int] | None:
        df = read_feedback(log_url(service))
        got = dict(zip(df["request_id"], df["label"], strict=True))
        return {i: got[i] for i in ids} if all(i in got for i in ids) else None

    assert wait_for(stored) == dict(zip(ids, labels, strict=True))


def test_a_bad_item_refuses_the_whole_feedback_list_naming_it(client: Any, service: Service) -> None:
    *ids, later = [p["request_id"] for p in client.post("/predict", json=[record()] * 4).json()["predictions"]]
    body = [{"request_id": ids[0], "label": 1}, {"request_id": ids[1], "label": 1}, {"request_id": ids[2], "label": 7}]
    r = client.post("/feedback", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "2.label", r.json()
    assert client.post("/feedback", json=[]).status_code == 422
    # The log writes in order: once a label sent afterwards is stored, the refused list would be there too.
    assert client.post("/feedback", json={"request_id": later, "label": 0}).status_code == 202
    assert wait_for(lambda: later in set(read_feedback(log_url(service))["request_id"]))
    assert not set(ids) & set(read_feedback(log_url(service))["request_id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "abc", "label": 7}, "label"),
        ({"request_id": "abc"}, "label"),
        ({"request_id": "no spaces allowed", "label": 1}, "request_id"),
        ({"request_id": "abc", "label": 1, "extra": True}, "extra"),
    ],
)
def test_bad_feedback_names_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    r = client.post("/feedback", json=body)
    assert r.status_code == 422
    assert field in r.json()["detail"]


# ---- batch --------------------------------------------------------------------------------------


def _batch_frame(n: int) -> pd.DataFrame:
    return synthetic_frame(get_settings().contract, n, seed=11)


def test_batch_csv_upload_streams_one_line_per_row(client: Any, service: Service) -> None:
    frame = _batch_frame(2_000)  # > chunk size: several chunks stream back
    frame.loc[3, "merchant_category"] = "space_tourism"
    files = {"file": ("rows.csv", frame.to_csv(index=False).encode(), "text/csv")}
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    out = pd.read_csv(io.StringIO(r.text))
    assert len(out) == 2_000
    assert list(out.columns[:4]) == ["request_id", "prediction", "p_0", "p_1"]
    assert out["request_id"].is_unique
    assert ((out["p_0"] + out["p_1"]).sub(1).abs() < 1e-5).all()
    # An unknown category where the contract allows it: flagged as /predict flags it, not refused.
    assert "merchant_category: unknown category 'space_tourism'" in out.loc[3, "flags"].split("; ")
    assert out["flags"].isna().any()  # an empty field where nothing is flagged
    last = out["request_id"].iloc[-1]
    wait_for(lambda: bool((read_predictions(log_url(service))["request_id"] == last).any()))


def test_batch_parquet_and_json_give_the_same_predictions(client: Any) -> None:
    frame = _batch_frame(300)
    buf = io.BytesIO()
    frame.to_parquet(buf)
    parquet = client.post(
        "/predict/batch", content=buf.getvalue(), headers={"Content-Type": "application/vnd.apache.parquet"}
    )
    assert parquet.status_code == 200, parquet.text
    records = [record(transaction_id=f"j{i}") for i in range(5)]
    as_json = client.post("/predict/batch?format=ndjson", json=records)
    assert as_json.status_code == 200, as_json.text
    lines = as_json.text.strip().splitlines()
    assert len(lines) == 5
    single = client.post("/predict", json=records[0]).json()["predictions"][0]
    first = pd.read_json(io.StringIO(lines[0]), lines=True).iloc[0]
    assert first["prediction"] == single["prediction"]
    assert math.isclose(first["probabilities"]["1"], single["probabilities"]["1"], rel_tol=1e-6)
    assert len(pd.read_csv(io.StringIO(parquet.text))) == 300


def test_batch_arrow_output_carries_the_csv_columns(client: Any) -> None:
    frame = _batch_frame(2_500)  # several chunks: one record batch each, one stream
    frame.loc[7, "merchant_category"] = "space_tourism"
    buf = io.BytesIO()
    frame.to_parquet(buf)
    upload = {"content": buf.getvalue(), "headers": {"Content-Type": "application/vnd.apache.parquet"}}
    r = client.post("/predict/batch?format=arrow", **upload)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    reader = pa.ipc.open_stream(r.content)
    batches = list(reader)
    assert len(batches) > 1
    out = pa.Table.from_batches(batches, reader.schema).to_pandas()
    assert list(out.columns) == ["request_id", "prediction", "p_0", "p_1", "flags"]
    assert len(out) == 2_500
    assert out["request_id"].is_unique
    assert out["request_id"].iloc[0].startswith(r.headers["x-request-id"])
    assert "merchant_category" in out.loc[7, "flags"]
    as_csv = pd.read_csv(io.StringIO(client.post("/predict/batch", **upload).text))
    assert (out["prediction"].to_numpy() == as_csv["prediction"].to_numpy()).all()
    assert np.allclose(out["p_1"], as_csv["p_1"], atol=1e-6)  # CSV rounds to six decimals


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda f: f.drop(columns=["amount"]), "amount"),
        (lambda f: f.assign(surprise=1), "surprise"),
        (lambda f: f.assign(amount=-5.0), "amount"),
        (lambda f: f.assign(amount="lots"), "amount"),
        (lambda f: f.assign(channel="pigeon"), "channel"),
        (lambda f: f.assign(txn_count_1h=1.5), "txn_count_1h"),
        (lambda f: f.assign(country=None), "country"),
        (lambda f: f.assign(event_time="not a time"), "event_time"),
        (lambda f: f.iloc[:0], "no rows"),
    ],
)
def test_bad_batch_names_the_field(client: Any, mutate: Any, field: str) -> None:
    frame = mutate(_batch_frame(20))
    r = client.post("/predict/batch", content=frame.to_csv(index=False).encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


@pytest.mark.parametrize(
    ("content", "ctype"),
    [(b"", "text/csv"), (b"\x00\x01garbage", "application/vnd.apache.parquet"), (b"{not json", "application/json")],
)
def test_malformed_batch_files_are_4xx(client: Any, content: bytes, ctype: str) -> None:
    r = client.post("/predict/batch", content=content, headers={"Content-Type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert "body" in r.json()["detail"]


def test_batch_over_the_row_limit_is_413(client: Any) -> None:
    frame = _batch_frame(MAX_ROWS + 1)
    r = client.post("/predict/batch", content=frame.to_csv(index=False).encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 413
    assert str(MAX_ROWS) in r.json()["detail"]


# ---- bad single-record input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (record(amount="12.5"), "amount"),  # wrong type: numbers are strict
        (record(txn_count_1h=2.5), "txn_count_1h"),
        ({k: v for k, v in record().items() if k != "channel"}, "channel"),  # missing
        (record(coupon="FREE"), "coupon"),  # extra
        (record(amount=1e9), "amount"),  # out of range
        (record(customer_tenure_days=-1), "customer_tenure_days"),
        (record(channel="pigeon"), "channel"),  # unknown category where the contract forbids it
        (record(country=None), "country"),  # null where not nullable
        (record(event_time="yesterday"), "event_time"),
        ([], "body"),  # empty list
        (42, "body"),
    ],
)
def test_bad_record_gets_422_naming_the_field(client: Any, body: Any, field: str) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_refused(client: Any, literal: str) -> None:
    text = json.dumps(record(amount=1.0)).replace('"amount": 1.0', f'"amount": {literal}')
    assert literal in text
    r = client.post("/predict", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "amount" in r.json()["detail"]


def test_malformed_json_is_422(client: Any) -> None:
    r = client.post("/predict", content=b'{"amount": 1,', headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "malformed JSON" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "body"  # not the character offset FastAPI puts in loc


# ---- security and limits ------------------------------------------------------------------------


def test_predict_needs_the_key_when_configured(service: Service) -> None:
    with service.client() as anonymous:
        assert anonymous.post("/predict", json=record()).status_code == 401
        assert anonymous.post("/predict", json=record(), headers={"X-API-Key": "wrong"}).status_code == 401
        assert anonymous.get("/health").status_code == 200  # operations stay open


def test_admin_needs_the_admin_key(service: Service, client: Any) -> None:
    assert client.post("/admin/reload").status_code == 401  # the predict key is not the admin key
    r = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 200, r.text
    assert r.json() == {"changed": False, "model_version": "1", "detail": None}


def test_body_over_the_limit_is_413_with_a_clear_message(client: Any) -> None:
    big = [record(transaction_id=f"tx-{i}") for i in range(200)]  # ~60 kB > MAX_BODY
    r = client.post("/predict", json=big)
    assert r.status_code == 413
    assert "larger than the limit" in r.json()["detail"]


def test_chunked_body_over_the_limit_is_413(client: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        for i in range(400):
            yield (b"," if i else b"") + json.dumps(record()).encode()
        yield b"]"

    r = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# ---- operations ---------------------------------------------------------------------------------


def test_an_idle_keep_alive_connection_is_not_closed_under_the_client(service: Service) -> None:
    """A client reuses a connection it kept 8 s idle (longer than uvicorn's default 5 s keep-alive, after
    which the server closed it and a request sent at that moment failed with a transport error)."""
    import socket

    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n\r\n".encode()

    def response(sock: socket.socket) -> bytes:
        """One whole response: the head, then Content-Length bytes (they may come in separate packets)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data  # closed by the server
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += sock.recv(65536)
        return head

    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        for pause in (0.0, 8.0):
            time.sleep(pause)
            sock.sendall(request)
            head = response(sock)
            assert head.startswith(b"HTTP/1.1 200"), f"after {pause}s idle: {head[:200]!r}"


def test_health_ready_model(service: Service) -> None:
    with service.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/ready").json()
        assert ready["ready"] is True and ready["registry_reachable"] is True and ready["model_version"] == "1"
        model = c.get("/model").json()
    assert model["version"] == "1" and model["alias"] == "champion"
    assert model["family"] == "logistic"
    assert model["data_window_start"] == "2026-01-01" and model["data_window_end"] == "2026-03-01"
    assert "train_accuracy" in model["metrics"]
    assert model["card"].startswith("# serving-test-")
    assert model["runtime"] in ("onnx", "numpy")
    assert model["parity_max_abs_diff"] is not None and model["parity_max_abs_diff"] <= 1e-4


def test_metrics_by_endpoint_status_and_model(client: Any, service: Service) -> None:
    client.post("/predict", json=record())
    client.post("/predict", json=record(amount=-1))
    text = client.get("/metrics").text
    assert 'serving_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'serving_requests_total{endpoint="/predict",method="POST",status="422"}' in text
    assert 'serving_request_duration_seconds_bucket{endpoint="/predict",le="0.005",method="POST",status="200"}' in text
    assert 'serving_predictions_total{label="0",version="1"}' in text
    assert 'serving_model_info{name="' in text and 'version="1"' in text
    assert 'serving_model_reloads_total{result="swapped"} 1.0' in text
    assert "serving_prediction_score_bucket" in text


def test_openapi_documents_every_field_with_an_example(service: Service) -> None:
    with service.client() as c:
        schema = c.get("/openapi.json").json()
    record_schema = schema["components"]["schemas"]["RecordIn"]
    contract = get_settings().contract
    assert set(record_schema["properties"]) == set(contract.input_columns)
    assert set(record_schema["required"]) == set(contract.input_columns)
    for name, prop in record_schema["properties"].items():
        assert prop.get("description"), name
        assert prop.get("examples"), name
    assert record_schema["additionalProperties"] is False
    assert schema["components"]["schemas"]["Channel"]["enum"] == ["pos", "online", "atm"]
    assert record_schema["properties"]["amount"]["maximum"] == 100000.0


def test_docs_pages_load_their_scripts_from_the_service_itself(service: Service) -> None:
    """/docs and /redoc work offline: no asset comes from a CDN."""
    with service.client() as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page)
            assert html.status_code == 200, page
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
            assert assets, page
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                loaded = c.get(asset)
                assert loaded.status_code == 200, asset
                assert len(loaded.content) > 10_000, asset


def test_service_binds_loopback_only(service: Service) -> None:
    assert service.url.startswith("http://127.0.0.1:")
    assert Path(service.log).read_text().count("Uvicorn running on http://127.0.0.1:") == 1
