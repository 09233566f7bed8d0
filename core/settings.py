"""One typed settings object for the whole project.

Sources, highest priority first: keyword arguments, environment variables (prefix ``MLOPS_``,
nested with ``__``, e.g. ``MLOPS_COLLECTION__MAX_BAD_SHARE=0.1``), the YAML files named by
``MLOPS_CONFIG`` (comma-separated; default: the generic ``configs/settings.yaml`` and the fraud demo's
overlay ``configs/fraud/settings.yaml``), then the defaults below. Files merge deeply: a later file
changes only the keys it names, inside a section too. Every location has an embedded default under one
git-ignored state directory, so a fresh clone runs with SQLite files and local folders and no server.

Settings are checked against the dataset contract at load: a metric the task does not have, a column
weight, slice or group column the contract does not name. :func:`load_settings` turns any fault into one
:class:`SettingsError` line naming the key, the value and what is allowed; entry points (the CLI, the
flows, the service) call it once and pass the object down; nothing below them reads the environment.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core import yaml_io
from core.contract import ContractError, DatasetContract, load_contract
from core.modeling.catalogue import CATALOGUE, DEFAULT_METRIC, metric_names

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Names monitoring gives the model's output beside the inputs: an input column may not have one of them.
RESERVED_INPUT_NAMES = ("prediction", "probability", "label")
# What runs when MLOPS_CONFIG is unset: every generic default, then the fraud demo (`make demo`).
DEFAULT_CONFIG = "configs/settings.yaml,configs/fraud/settings.yaml"


class SettingsError(ValueError):
    """A settings or contract mistake, said in one line per fault."""


def _config_files() -> list[Path]:
    raw = os.environ.get("MLOPS_CONFIG") or DEFAULT_CONFIG
    files = [Path(p.strip()) for p in raw.split(",") if p.strip()]
    return [p if p.is_absolute() else PROJECT_ROOT / p for p in files]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSettings(Section):
    """Where collection reads raw rows from."""

    kind: Literal["simulator", "sql", "csv", "parquet"] = "csv"
    # sql: any SQLAlchemy URL and a table or query. simulator: writes to and reads from `warehouse_url`.
    url: str | None = None
    table: str = "transactions"
    query: str | None = None
    # csv / parquet: a local path, glob or fsspec URL
    path: str | None = None
    # csv: the files' text encoding (a Python codec name); a file that does not decode fails collection, named
    encoding: str = "utf-8"
    # Source column name -> the contract's name for it, for a column whose name the contract cannot keep
    # (one of the names the prediction log reserves) or that you simply want to call otherwise.
    rename: dict[str, str] = Field(default_factory=dict)


class SimulatorSettings(Section):
    seed: int = 42
    start: str = "2026-01-01"
    days: int = 60
    rows_per_day: int = 2_000
    fraud_rate: float = 0.02
    # Named drift scenarios switch on from `scenario_start` (ISO date): none, covariate_shift,
    # concept_drift, data_quality.
    scenario: Literal["none", "covariate_shift", "concept_drift", "data_quality"] = "none"
    scenario_start: str | None = None


class CollectionSettings(Section):
    max_bad_share: float = Field(0.05, ge=0.0, le=1.0)
    chunk_rows: int = Field(250_000, gt=0)
    # Connections that read a SQL source's chunks at once (SQLite file, PostgreSQL; the contract has a timestamp).
    readers: int = Field(2, ge=1)


class SplitSettings(Section):
    # Shares of the collected, labelled rows. The holdout is frozen: only the promotion gate reads it.
    train: float = Field(0.6, ge=0.0, le=1.0)
    validation: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)
    holdout: float = Field(0.15, ge=0.0, le=1.0)
    # time: oldest rows train, newest are held out (needs the contract's timestamp column); random;
    # stratified: each class cut by the shares; group: rows sharing `group_column` stay in one split.
    # auto: time with a timestamp, else stratified for classification and random for regression.
    strategy: Literal["auto", "time", "random", "stratified", "group"] = "auto"
    group_column: str | None = None
    reference_rows: int = Field(50_000, gt=0)  # monitoring reference: a sample of the train split
    # Only the newest N calendar days of collected data are split (None: all of it). Retraining after
    # drift then learns from recent behaviour instead of being outvoted by months of the old pattern.
    window_days: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSettings:
        total = self.train + self.validation + self.test + self.holdout
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split shares must sum to 1, got {total}")
        if self.strategy == "group" and not self.group_column:
            raise ValueError("strategy group needs splits.group_column")
        return self


class RollbackLimits(Section):
    """When a canary is stopped: any limit crossed over the last `window_s` seconds, once the canary has
    answered `min_requests` requests in it. A limit left null is not checked."""

    max_error_rate: float | None = Field(0.02, ge=0, le=1)  # share of canary requests whose prediction raised
    max_p99_ms: float | None = Field(250.0, gt=0)  # the canary's prediction latency, 99th percentile
    # Population stability index of the canary's scores against the champion's in the same window (binary:
    # P(positive); regression: the value; multiclass: the predicted class). 0.1 is a shift, 0.25 a big one.
    max_score_psi: float | None = Field(0.25, gt=0)
    min_requests: int = Field(200, ge=1)
    window_s: float = Field(60.0, gt=0)


class RolloutSettings(Section):
    """A second model beside the champion (serving/rollout.py): off, shadow (scores every request off the
    response path, logged with role 'shadow') or canary (answers `canary_share` of the entities)."""

    mode: Literal["off", "shadow", "canary"] = "off"
    alias: str = "challenger"
    canary_share: float = Field(0.1, ge=0, le=1)
    # The contract input column whose value keeps an entity on one model (e.g. a customer id); null: the
    # request id (every request drawn anew).
    sticky_column: str | None = None
    shadow_queue: int = Field(1000, ge=1)  # requests waiting for shadow scoring; beyond it they are dropped
    rollback: RollbackLimits = Field(default_factory=RollbackLimits)

    @model_validator(mode="before")
    @classmethod
    def _yaml_off(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `mode: off` as false.
        if isinstance(data, dict) and data.get("mode") is False:
            return {**data, "mode": "off"}
        return data


class ServingSettings(Section):
    """The prediction service (serving/): where it binds, its limits, and how it follows the registry."""

    host: str = "127.0.0.1"  # loopback unless a deployment says otherwise
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    # BLAS/OpenMP threads per worker: one, so that workers do not fight over the cores.
    threads_per_worker: int = Field(1, ge=1)
    model_alias: str = "champion"
    reload_interval_s: float = Field(30.0, gt=0)
    # How long an idle keep-alive connection stays open. Longer than clients and load balancers keep theirs
    # (httpx 5 s, requests/urllib3 until closed, AWS ALB 60 s), so the server never closes a connection a
    # client is reusing at that moment: with uvicorn's default 5 s, clients saw `httpx.ReadError` under load.
    keep_alive_s: int = Field(120, gt=0)
    # Swaps the workers make together (serving/swaps.py): a worker that sees the alias move nudges the
    # others through this folder (default <state_dir>/serving/swaps), each looks every `nudge_check_s`;
    # a loaded version waits up to `swap_wait_s` for every worker to be ready, then all switch at once.
    swap_dir: Path | None = None
    nudge_check_s: float = Field(0.05, gt=0)
    swap_wait_s: float = Field(10.0, ge=0)
    # POST /webhooks/mlflow: MLflow's registry webhook (alias created/deleted), signed with this secret;
    # unset, the route answers 403 and the poll alone follows the alias.
    webhook_secret: SecretStr | None = None
    max_body_bytes: int = Field(1_000_000, gt=0)  # /predict and /feedback
    max_batch_bytes: int = Field(100_000_000, gt=0)  # /predict/batch uploads
    max_batch_rows: int = Field(200_000, gt=0)
    batch_chunk_rows: int = Field(10_000, gt=0)
    # Required as X-API-Key on /predict when set; /admin always needs settings.admin_api_key.
    api_key: SecretStr | None = None
    cors_origins: list[str] = Field(default_factory=list)
    # Serve through ONNX Runtime when the model converts and matches scikit-learn on a sample.
    use_onnx: bool = True
    parity_rows: int = Field(512, gt=0)
    parity_tolerance: float = Field(1e-4, gt=0)
    # Prediction log writer: rows per insert, longest wait before a partial batch is written.
    log_batch_rows: int = Field(500, gt=0)
    log_flush_s: float = Field(0.5, gt=0)
    # Rows the prediction log may queue before requests wait for its writer (serving/prediction_log.py).
    log_max_backlog_rows: int = Field(50_000, gt=0)
    log_retry_s: float = Field(2.0, gt=0)
    spool_dir: Path | None = None  # default: <state_dir>/serving/spool
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)


Family = Literal["logistic", "random_forest", "hist_gradient_boosting", "svm", "mlp"]


class ScoringSettings(Section):
    """Batch scoring (pipelines/score.py): which model scores the raw snapshot's partitions, and where
    the predictions go."""

    output_dir: Path | None = None  # default: <data_dir>/scores (partitioned Parquet, refused rows, manifests)
    model_alias: str = "champion"  # scored with this alias' version unless a run names a version
    # Partitions are the raw snapshot's part files (one event date each, or `all` without a timestamp).
    # new: those not scored yet (the done markers are the scoring watermark); all: every partition
    # (done ones still skipped unless rescore).
    partitions: Literal["new", "all"] = "new"
    batch_rows: int = Field(250_000, gt=0)  # rows read, checked and predicted at a time
    warehouse_table: str | None = None  # also write predictions into this warehouse table (warehouse_url)
    log_predictions: bool = True  # scored rows into the prediction log, marked source=batch
    use_onnx: bool = True  # the API's fast path, after the same parity check
    # Top-k reason codes per scored row (the API's ?explain=k, core.modeling.explain), written beside the
    # predictions: explain_method, base_value, raw_output, reason_1..k (column, value, contribution), other.
    # 0: none. A family without an exact method says so in the manifest; its reason columns stay null.
    explain: int = Field(0, ge=0)


class DaskSettings(Section):
    """A Dask cluster for the work that runs partition by partition (docs/scaling.md)."""

    # A scheduler address (tcp://host:8786). Set: batch scoring sends one task per raw partition, tuning
    # runs its trials on the cluster's workers and the monitor flow's drift statistics are computed per
    # window slice there (monitoring.partition_rows); collection reads, checks and stages one chunk of the
    # source per task and preprocessing counts each date's keys there. Unset: everything runs locally.
    address: str | None = None
    # How long collection and preprocessing wait for the scheduler before failing the run, naming the address.
    connect_timeout_s: float = Field(30.0, gt=0)


class TrainingSettings(Section):
    """The training flow: which model families it fits with their default params, and how it scores them."""

    # "logistic" means LogisticRegression for classification and Ridge for regression.
    families: list[Family] = ["logistic", "hist_gradient_boosting"]
    # What "better" means: one of the task's metrics (core/modeling/catalogue.py); unset: the task's
    # default (binary roc_auc, multiclass f1_macro, regression rmse). Also the tuning objective and the gate's.
    primary_metric: str = ""
    cv_folds: int = Field(3, ge=2)
    # Time-aware CV (TimeSeriesSplit on rows ordered by the timestamp) unless set to false.
    time_aware_cv: bool = True
    # The approximate-kernel SVM is only fitted when the training split has at most this many rows.
    svm_max_rows: int = Field(200_000, gt=0)
    # Threads for HistGradientBoosting and other OpenMP/BLAS code during a fit (None: all cores).
    # One thread by default: on a 2-core machine shared with other work, HistGradientBoosting with
    # two OpenMP threads was 9x slower than with one (spin-waiting on a busy core).
    n_threads: int | None = 1
    # Plots and permutation importance use at most this many test rows: they describe, not decide.
    diagnostics_rows: int = Field(5_000, gt=0)
    auto_register: bool = True
    # Before registering, refit the chosen model on train + validation + test (never the holdout), so
    # that a model retrained after drift learns from the newest labelled rows too.
    refit_before_holdout: bool = True


class TuningSettings(Section):
    """The tuning flow: one Optuna study over the families under one budget."""

    families: list[Family] = ["logistic", "random_forest", "hist_gradient_boosting", "svm", "mlp"]
    n_trials: int | None = Field(40, gt=0)
    timeout_seconds: float | None = None
    # Parallel trials in local processes (1: in the flow's own process).
    n_workers: int = Field(2, gt=0)
    pruning: bool = True
    pruner: Literal["median", "successive_halving"] = "median"
    sampler: Literal["tpe", "random"] = "tpe"
    # Tuning fits on at most this many of the newest training rows (None: all of them).
    max_rows: int | None = Field(200_000, gt=0)
    # "journal" (a file under the state directory), "memory" (one worker only), or a database URL
    # (postgresql://... for workers on several machines).
    storage_url: str = "journal"
    # Deprecated: use dask.address (still read, with a warning, when dask.address is unset).
    dask_address: str | None = None
    # After the study, fit the best configuration like the training flow does and send it through the gate.
    register_best: bool = True
    # The retraining flow's tuning budget: after training with default params it runs a study of this
    # many trials over training.families, whose best is gated too (0: train only).
    retrain_trials: int = Field(6, ge=0)
    retrain_timeout_seconds: float | None = Field(120, gt=0)


class OnlineGateSettings(Section):
    """gate.require_online: promote a challenger only on online evidence too (core/modeling/online.py)."""

    # Labelled shadow requests (scored by both models, a /feedback label each) needed before judging.
    min_labelled_rows: int = Field(200, ge=1)
    # The paired bootstrap interval of (challenger - champion) on those requests, at this confidence: its
    # lower end (direction-aware) must be at least -max_regression.
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    max_regression: float = Field(0.0, ge=0.0)


class GateSettings(Section):
    """The promotion gate: the candidate must beat the champion on the frozen holdout."""

    # The paired bootstrap CI's lower bound of (candidate - champion) must be above this, in metric units
    # (sign flipped for lower-is-better metrics so that positive always means better).
    min_improvement: float = 0.0
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    n_bootstrap: int = Field(500, ge=50)
    # No slice (a value of a contract slice column) may fall more than this below the champion.
    slice_tolerance: float = Field(0.05, ge=0.0)
    min_slice_rows: int = Field(200, gt=0)
    min_slice_positives: int = Field(5, gt=0)
    # Median single-row predict time of the whole pipeline, one thread, in CPU time (a busy machine does
    # not reject a model).
    latency_budget_ms: float = Field(50.0, gt=0)
    # Unset (the default): the holdout alone decides. Set: a version is promoted over a champion only when
    # its shadow traffic shows it not worse online as well (docs/serving.md).
    require_online: OnlineGateSettings | None = None


class ReportSettings(Section):
    """The stakeholder report each registered version gets (core/registry/report.py)."""

    # Columns whose values the report compares (rows, error rates, gaps between slices). Unset: the
    # contract's category columns. Each must be a contract column of type category, string, bool or int.
    slice_columns: list[str] | None = None
    # A slice is flagged when one of its rates (binary: false-positive and false-negative rate; multiclass:
    # error rate) is more than this away from the whole holdout's, in absolute terms (0.05 = 5 points);
    # regression: when its mean absolute error differs from the whole holdout's by more than this fraction.
    slice_gap_tolerance: float = Field(0.05, gt=0.0)
    # Slices with fewer holdout rows are shown but not judged (too noisy).
    min_slice_rows: int = Field(100, gt=0)
    rows: int = Field(2_000, gt=0)  # holdout rows sampled for importance and partial dependence
    top_features: int = Field(4, ge=1, le=20)  # columns shown with partial dependence

    def slice_columns_for(self, contract: DatasetContract) -> list[str]:
        if self.slice_columns is not None:
            return list(self.slice_columns)
        return [c.name for c in contract.features if c.type == "category"]


class MonitoringSettings(Section):
    """The monitoring flow: which window of the prediction log it compares, and when it asks for retraining."""

    # The window is the newest `window_rows` predictions, or those of the last `window_hours` (both: the
    # smaller); neither: the whole log.
    window_rows: int | None = Field(20_000, gt=0)
    window_hours: float | None = Field(None, gt=0)
    # Below this many window rows the flow reports "too little data" and decides nothing.
    min_window_rows: int = Field(1_000, gt=0)
    # Seeded uniform samples fed to the drift tests. Above 1,000 reference rows Evidently uses effect-size
    # tests (normalised Wasserstein, Jensen-Shannon), whose estimates settle at these sizes: docs/monitoring.md.
    reference_sample_rows: int = Field(50_000, gt=1_000)
    window_sample_rows: int = Field(50_000, gt=0)
    # With dask.address set, drift runs on the cluster from per-partition statistics over every window row
    # (monitoring/merged_drift.py): the window is read in slices of about this many rows, one task each.
    partition_rows: int = Field(100_000, gt=0)
    # Retraining policy: weighted share of drifted feature columns (weight 1 unless listed, 0 ignores one).
    drift_share_threshold: float = Field(0.3, gt=0.0, le=1.0)
    column_weights: dict[str, float] = Field(default_factory=dict)
    # Largest allowed fall of `performance_metric` (unset: training.primary_metric) below the champion's
    # holdout value, as a fraction of that value: 0.05 = 5% worse (direction-aware: for rmse, 5% higher).
    performance_metric: str = ""
    max_performance_drop: float = Field(0.05, ge=0.0)
    min_labelled_rows: int = Field(200, gt=0)
    # The champion's holdout value is read from its training run's metric `<prefix><performance_metric>`.
    champion_metric_prefix: str = "holdout_"
    prediction_drift_triggers: bool = False
    cooldown_hours: float = Field(24.0, ge=0.0)
    # How a decision to retrain reaches Prefect: `event` emits `mlops.monitoring.retrain-requested` (the
    # retrain deployment's trigger in prefect.yaml starts the run); `deployment` starts it directly.
    trigger: Literal["event", "deployment"] = "event"
    # After emitting the event, wait this long for the run the trigger starts, to record its id.
    trigger_follow_s: float = Field(20.0, ge=0.0)
    retrain_deployment: str = "retrain/retrain"
    schedule_cron: str = "0 * * * *"
    # A Prometheus Pushgateway (e.g. http://pushgateway:9091): each run pushes its decision there for the
    # alerting rules (deploy/prometheus/alerts.yml). Unset: nothing is pushed.
    pushgateway_url: str | None = None


class StackSettings(Section):
    """The local stack `make demo` starts: ports on 127.0.0.1 and the Prefect work pool."""

    mlflow_port: int = Field(5000, ge=1, le=65535)
    prefect_port: int = Field(4200, ge=1, le=65535)
    work_pool: str = "local"


class NotificationSettings(Section):
    """A Slack-compatible incoming webhook; unset means no notifications."""

    webhook_url: str | None = None
    events: tuple[str, ...] = ("drift_detected", "retraining_finished", "promotion_decision")
    timeout_s: float = 5.0


class _YamlFiles(PydanticBaseSettingsSource):
    """The YAML files of MLOPS_CONFIG, merged deeply: a later file changes only the keys it names, inside a
    section too (``splits: {holdout: 0.2}`` keeps the other split settings). A value that is itself a
    mapping (``monitoring.column_weights``) is replaced whole, so a file can also remove entries."""

    def __init__(self, settings_cls: type[BaseSettings], files: list[Path]) -> None:
        super().__init__(settings_cls)
        self.files = files

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        sections = {
            name
            for name, f in self.settings_cls.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
        }
        merged: dict[str, Any] = {}
        for path in self.files:
            try:
                data = yaml_io.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
            if not isinstance(data, dict):
                raise SettingsError(f"settings file {path} must be a mapping of settings, got {type(data).__name__}")
            for key, value in data.items():
                if key in sections and isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
        return merged


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        env_parse_none_str="null",  # MLOPS_SPLITS__WINDOW_DAYS=null unsets an optional setting
    )

    environment: Literal["development", "test", "production"] = "development"
    contract_path: Path = Path("configs/fraud/dataset.yaml")
    state_dir: Path = Path(".state")

    # Locations. Left unset, each gets its embedded default under state_dir (see _default_locations).
    data_dir: Path = Path()
    warehouse_url: str = ""
    mlflow_tracking_uri: str = ""
    prediction_log_url: str = ""
    stack: StackSettings = Field(default_factory=StackSettings)

    # Registry and experiment names; unset: the contract's name (underscores as dashes).
    model_name: str = ""
    experiment_name: str = ""
    seed: int = 42

    admin_api_key: SecretStr | None = None

    source: SourceSettings = Field(default_factory=SourceSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    collection: CollectionSettings = Field(default_factory=CollectionSettings)
    splits: SplitSettings = Field(default_factory=SplitSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)

    training: TrainingSettings = Field(default_factory=TrainingSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)

    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        missing = [p for p in _config_files() if not p.exists()]
        if missing and not os.environ.get("MLOPS_CONFIG"):
            raise SettingsError(
                f"no MLOPS_CONFIG, and the default {DEFAULT_CONFIG} is incomplete ({missing[0].name} is gone): "
                "set MLOPS_CONFIG=configs/settings.yaml,configs/<name>/settings.yaml (`mlops contract init` writes one)"
            )
        if missing:
            raise FileNotFoundError(f"MLOPS_CONFIG names files that do not exist: {[str(p) for p in missing]}")
        return (init_settings, env_settings, _YamlFiles(settings_cls, _config_files()))

    @model_validator(mode="before")
    @classmethod
    def _default_locations(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        state = Path(data.get("state_dir") or ".state")
        state = state if state.is_absolute() else PROJECT_ROOT / state
        defaults = {
            "data_dir": state / "data",
            "warehouse_url": f"sqlite:///{state / 'warehouse.db'}",
            "mlflow_tracking_uri": f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
            "prediction_log_url": f"sqlite:///{state / 'predictions.db'}",
        }
        return {**data, **{k: v for k, v in defaults.items() if not data.get(k)}}

    @model_validator(mode="after")
    def _dask_address_moved(self) -> Settings:
        """tuning.dask_address became dask.address: the old key is read, with a warning naming the new one."""
        old = self.tuning.dask_address
        if old is None:
            return self
        if self.dask.address is not None and self.dask.address != old:
            raise ValueError(
                f"tuning.dask_address ({old}) and dask.address ({self.dask.address}) disagree: "
                "tuning.dask_address is deprecated, set dask.address only"
            )
        warnings.warn(
            "tuning.dask_address (MLOPS_TUNING__DASK_ADDRESS) is deprecated: set dask.address "
            "(MLOPS_DASK__ADDRESS) instead; it now also sends batch scoring to the cluster",
            FutureWarning,  # shown by default: DeprecationWarning is hidden outside __main__
            stacklevel=2,
        )
        self.dask.address = old
        return self

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.environment == "production" and self.admin_api_key is None:
            raise ValueError("MLOPS_ADMIN_API_KEY must be set in production")
        return self

    @model_validator(mode="after")
    def _fits_the_contract(self) -> Settings:
        """Settings that name metrics or columns are checked against the contract they will run on."""
        contract = self.contract
        task = contract.task
        faults = []
        name = contract.name.replace("_", "-")
        self.model_name = self.model_name or name
        self.experiment_name = self.experiment_name or self.model_name
        metrics = metric_names(task)
        if not self.training.primary_metric:
            self.training.primary_metric = DEFAULT_METRIC[task]
        elif self.training.primary_metric not in CATALOGUE[task]:
            faults.append(
                f"training.primary_metric = {self.training.primary_metric!r}: does not apply to task {task}; "
                f"choose one of {metrics}"
            )
        if not self.monitoring.performance_metric:
            self.monitoring.performance_metric = self.training.primary_metric
        elif self.monitoring.performance_metric not in CATALOGUE[task]:
            faults.append(
                f"monitoring.performance_metric = {self.monitoring.performance_metric!r}: "
                f"does not apply to task {task}; "
                f"choose one of {metrics}"
            )
        reserved = sorted(set(contract.input_columns) & set(RESERVED_INPUT_NAMES))
        if reserved:
            faults.append(
                f"contract '{contract.name}' has input column(s) {reserved}, names the prediction log and monitoring "
                f"reserve for the model's output; call them otherwise in the contract and map the source's name to "
                f"the new one with source.rename (e.g. {{{reserved[0]!r}: {reserved[0] + '_in'!r}}})"
            )
        features = contract.feature_columns
        stray = sorted(set(self.monitoring.column_weights) - set(features))
        if stray:
            faults.append(
                f"monitoring.column_weights names {stray}, not feature columns of contract '{contract.name}'; "
                f"its feature columns are {features}"
            )
        for column in self.report.slice_columns or []:
            if column not in contract.input_columns:
                faults.append(
                    f"report.slice_columns names {column!r}, not an input column of contract '{contract.name}'; "
                    f"its input columns are {contract.input_columns}"
                )
            elif contract.column(column).type not in ("category", "string", "bool", "int"):
                faults.append(
                    f"report.slice_columns names {column!r} of type {contract.column(column).type}: slices need "
                    "a column of type category, string, bool or int"
                )
        if self.splits.group_column is not None and self.splits.group_column not in contract.column_names:
            faults.append(
                f"splits.group_column = {self.splits.group_column!r}: not a column of contract '{contract.name}'"
            )
        if not contract.is_ordered:
            if self.splits.strategy == "time":
                faults.append("splits.strategy = 'time': the contract has no timestamp_column to order rows by")
            if self.splits.window_days is not None:
                faults.append(
                    f"splits.window_days = {self.splits.window_days}: the contract has no timestamp_column; "
                    "set it to null"
                )
        sticky = self.serving.rollout.sticky_column
        if sticky is not None and sticky not in contract.input_columns:
            faults.append(
                f"serving.rollout.sticky_column = {sticky!r}: not a column a request carries for contract "
                f"'{contract.name}'; choose one of {contract.input_columns}, or null to stick by request id"
            )
        if faults:
            raise ValueError("; ".join(faults))
        return self

    # ---- resolved locations --------------------------------------------------------------------
    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else PROJECT_ROOT / p

    @property
    def state(self) -> Path:
        return self.path(self.state_dir)

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.state / "mlflow" / "artifacts"

    @property
    def source_url(self) -> str:
        return self.source.url or self.warehouse_url

    def path_or_url(self, value: str) -> str:
        """A relative local path against the project root; an fsspec URL (s3://...) as it is."""
        return value if "://" in value else str(self.path(Path(value)))

    @property
    def contract(self) -> DatasetContract:
        path = self.path(self.contract_path)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        return _load_contract_cached(path, stamp)


@lru_cache(maxsize=8)
def _load_contract_cached(path: Path, stamp: int) -> DatasetContract:
    """Contracts by (path, modification time): an edited contract is read again."""
    return load_contract(path)


def load_settings(**overrides: Any) -> Settings:
    """The settings from files and environment (and `overrides`), or one SettingsError naming each fault:
    the key, the value given and what is allowed. No traceback for a configuration mistake."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except SettingsError:
        raise
    except (ContractError, FileNotFoundError) as exc:
        raise SettingsError(str(exc)) from None


def _describe(exc: ValidationError) -> str:
    faults = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown setting {where!r}" + _known_keys(err["loc"])
            faults.append(msg)
            continue
        if where:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            faults.append(f"{where}{shown}: {msg} ({_origin(err['loc'])})")
        else:
            faults.append(msg)
    files = ", ".join(str(p.relative_to(PROJECT_ROOT)) if p.is_relative_to(PROJECT_ROOT) else str(p)
                      for p in _config_files())  # fmt: skip
    return f"settings are invalid (MLOPS_CONFIG={files}):\n  - " + "\n  - ".join(faults)


def _known_keys(loc: tuple[Any, ...]) -> str:
    fields: Any = Settings.model_fields
    for part in loc[:-1]:
        field = fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        fields = field.annotation.model_fields
    return f"; known keys here: {sorted(fields)}"


def _origin(loc: tuple[Any, ...]) -> str:
    """Where a value came from: an environment variable or the last settings file that names it."""
    env = "MLOPS_" + "__".join(str(p).upper() for p in loc)
    if env in os.environ:
        return f"from {env}"
    for path in reversed(_config_files()):
        try:
            node: Any = yaml_io.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for part in loc:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            return f"from {path.name}"
    return "default"


def get_settings() -> Settings:
    """The settings, read now from the files and environment: for entry points (flows, CLI, the service)."""
    return load_settings()
