"""Which model serves: load the registry alias, warm it, swap it in atomically, and watch the alias.

The registry is read over MLflow's REST API with httpx rather than through `import mlflow`: the
service needs four calls (alias, download URI, two files), and leaving mlflow out keeps start-up and
memory small. A tracking URI that is not HTTP (the embedded SQLite default) falls back to the mlflow
client, imported only then. Models are loaded by core.registry.artefact (skops, with the MLmodel's
trust list inside the loader's allow-list); a model saved with pickle or cloudpickle is refused.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from core import yaml_io
from core.contract import DatasetContract
from core.inference.predictor import Predictor, predictor_for
from core.registry.artefact import load_pipeline, sklearn_flavor
from core.settings import Settings
from serving import metrics
from serving.swaps import SwapBoard, sleep_until

log = logging.getLogger(__name__)

_OTHER_VERSIONS_KEPT = 2  # earlier versions held in memory for GET /explain


class RegistryError(RuntimeError):
    """The registry could not be reached or did not answer as expected."""


class RegistryUnreachableError(RegistryError):
    """No answer at all (connection refused, timeout)."""


class AliasNotFoundError(RegistryError):
    """The registry answered: no version holds this alias (e.g. no challenger at the moment)."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    description: str
    tags: dict[str, str]


class Registry:
    """The few registry calls the service needs."""

    def __init__(self, tracking_uri: str, timeout_s: float = 10.0) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.is_http = self.tracking_uri.startswith(("http://", "https://"))
        self._http = httpx.Client(base_url=self.tracking_uri, timeout=timeout_s) if self.is_http else None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _get(self, path: str, **params: str) -> Any:
        assert self._http is not None
        try:
            r = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise RegistryUnreachableError(f"registry {self.tracking_uri} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise RegistryError(f"registry answered {r.status_code} for {path}: {r.text[:300]}")
        return r.json() if path.startswith("/api/2.0/mlflow/") else r.content

    def alias(self, name: str, alias: str) -> VersionInfo:
        if self._http is None:
            try:
                mv = self._client().get_model_version_by_alias(name, alias)
            except Exception as exc:
                if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                    raise AliasNotFoundError(f"{name} has no version with alias {alias!r}") from exc
                raise
            return VersionInfo(name, str(mv.version), mv.run_id, mv.description or "", dict(mv.tags))
        try:
            mv = self._get("/api/2.0/mlflow/registered-models/alias", name=name, alias=alias)["model_version"]
        except RegistryError as exc:
            if "answered 404" in str(exc):
                raise AliasNotFoundError(f"{name} has no version with alias {alias!r}") from exc
            raise
        tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
        return VersionInfo(name, str(mv["version"]), mv.get("run_id"), mv.get("description") or "", tags)

    def version(self, name: str, version: str) -> VersionInfo:
        """One registered version by number (GET /explain reloads the version that made a prediction)."""
        if self._http is None:
            mv = self._client().get_model_version(name, version)
            return VersionInfo(name, str(mv.version), mv.run_id, mv.description or "", dict(mv.tags))
        mv = self._get("/api/2.0/mlflow/model-versions/get", name=name, version=version)["model_version"]
        tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
        return VersionInfo(name, str(mv["version"]), mv.get("run_id"), mv.get("description") or "", tags)

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            if self._http is None:
                return dict(self._client().get_run(run_id).data.metrics)
            run = self._get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
            return {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}
        except Exception as exc:  # metrics are for display; a model still serves without them
            log.warning("could not read metrics of run %s: %s", run_id, exc)
            return {}

    def run_artifact(self, run_id: str, path: str) -> bytes:
        """One artifact of a run (the version's report), as bytes."""
        if self._http is None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_bytes()
        uri = self._get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]["info"]["artifact_uri"]
        return self._fetch(uri, path)

    def download(self, info: VersionInfo, dest: Path) -> Path:
        """Download the MLmodel file and the serialized model into `dest`; return `dest`."""
        if self._http is None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
            return Path(mlflow.artifacts.download_artifacts(f"models:/{info.name}/{info.version}", dst_path=str(dest)))
        uri = self._get("/api/2.0/mlflow/model-versions/get-download-uri", name=info.name, version=info.version)[
            "artifact_uri"
        ]
        mlmodel = self._fetch(uri, "MLmodel")
        (dest / "MLmodel").write_bytes(mlmodel)
        flavor = sklearn_flavor(yaml_io.safe_load(mlmodel))
        (dest / flavor["pickled_model"]).write_bytes(self._fetch(uri, flavor["pickled_model"]))
        return dest

    def _fetch(self, artifact_uri: str, name: str) -> bytes:
        if artifact_uri.startswith("mlflow-artifacts:"):
            path = artifact_uri.removeprefix("mlflow-artifacts:").lstrip("/")
            return bytes(self._get(f"/api/2.0/mlflow-artifacts/artifacts/{path}/{name}"))
        local = Path(artifact_uri.removeprefix("file://"))
        if local.is_absolute() and (local / name).exists():
            return (local / name).read_bytes()
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(f"{artifact_uri}/{name}")).read_bytes()

    def _client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: str
    run_id: str | None
    predictor: Predictor
    metadata: dict[str, Any]
    tags: dict[str, str]
    card: str
    metrics: dict[str, float]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def build_loaded_model(
    info: VersionInfo, pipeline: Any, metadata: dict[str, Any], contract: DatasetContract, settings: Settings
) -> Predictor:
    return predictor_for(
        pipeline,
        metadata,
        contract,
        tags=info.tags,
        use_onnx=False,  # ONNX comes after the swap (see ModelStore.upgrade): readiness need not wait for it
        threads=settings.serving.threads_per_worker,
        parity_rows=settings.serving.parity_rows,
        tolerance=settings.serving.parity_tolerance,
    )


class ModelStore:
    """Holds the serving model. A request reads `current` once and keeps that object to the end,
    so a swap (one attribute assignment) never changes the model under a request in flight."""

    def __init__(
        self, settings: Settings, registry: Registry | None = None, *, alias: str | None = None, primary: bool = True
    ) -> None:
        """`alias`: the registry alias followed (default serving.model_alias). `primary`: the model that answers
        by default (it sets serving_model_info and reload counts); the rollout's second model is not, and it
        is unloaded when its alias goes away (no challenger any more)."""
        self.settings = settings
        self.registry = registry or Registry(settings.mlflow_tracking_uri)
        self.alias = alias or settings.serving.model_alias
        self.primary = primary
        self.current: LoadedModel | None = None
        self.registry_reachable = False
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time: the watcher and /admin/reload may race
        # Earlier versions loaded to explain their logged predictions (GET /explain/{request_id}).
        self._others: OrderedDict[str, LoadedModel] = OrderedDict()
        self._others_lock = threading.Lock()
        serving = settings.serving
        self.board = SwapBoard(  # one board per alias: the champion's and the challenger's swaps are apart
            (serving.swap_dir or settings.state / "serving" / "swaps") / self.alias,
            workers=serving.workers,
            wait_s=serving.swap_wait_s,
            check_s=serving.nudge_check_s,
        )
        self._nudged_for: str | None = None

    def refresh(self) -> bool:
        """Load the alias' version if it differs from the one serving. True when a new model swapped in."""
        name, alias = self.settings.model_name, self.alias
        with self._lock:
            try:
                info = self.registry.alias(name, alias)
                self.registry_reachable = True
            except Exception as exc:
                self.registry_reachable = not isinstance(exc, RegistryUnreachableError)
                self.last_error = str(exc)
                if not self.primary and isinstance(exc, AliasNotFoundError):
                    if self.current is not None:
                        log.info("alias %s removed: %s v%s unloaded", alias, name, self.current.version)
                    self.current = None
                    return False
                metrics.RELOADS.labels(result="registry_error").inc()
                log.warning("registry check failed: %s", exc)
                return False
            if self.current is not None and self.current.version == info.version:
                return False
            if self.current is not None and self._nudged_for != info.version:
                self._nudged_for = info.version
                self.board.nudge(f"{name}@{alias} -> v{info.version}")  # the other workers load it too, now
            try:
                loaded = self._load(info)
            except Exception as exc:
                self.last_error = f"loading {name} v{info.version} failed: {exc}"
                metrics.RELOADS.labels(result="load_error").inc()
                log.exception("loading %s v%s failed; still serving %s", name, info.version, self.version)
                return False
            previous = self.current
            if previous is not None:
                sleep_until(self.board.switch_time(loaded.version))  # with the other workers
            self.current = loaded  # the swap: atomic, requests in flight keep their reference
            self.board.forget(keep_version=loaded.version)
            self.last_error = None
            if self.primary:
                metrics.RELOADS.labels(result="swapped").inc()
                metrics.set_model(loaded.name, loaded.version, loaded.predictor.runtime, _labels(previous))
            log.info("%s: %s v%s (%s)", alias, loaded.name, loaded.version, loaded.predictor.runtime)
        if self.settings.serving.use_onnx:
            threading.Thread(target=self.upgrade, args=(loaded,), name="onnx-upgrade", daemon=True).start()
        # TreeSHAP's set-up (importing shap, reading the trees) off the request path and after readiness.
        threading.Thread(target=loaded.predictor.explainer.warm, name="explainer-warm", daemon=True).start()
        return True

    def model_for_version(self, version: str) -> LoadedModel:
        """The serving model if it is `version`, else that version loaded from the registry (the last few
        kept). Raises RegistryError when the registry has no such version or cannot be reached."""
        current = self.current
        if current is not None and current.version == version:
            return current
        with self._others_lock:
            if version in self._others:
                self._others.move_to_end(version)
                return self._others[version]
            loaded = self._load(self.registry.version(self.settings.model_name, version))
            self._others[version] = loaded
            while len(self._others) > _OTHER_VERSIONS_KEPT:
                self._others.popitem(last=False)
            return loaded

    def upgrade(self, loaded: LoadedModel) -> bool:
        """Swap in an ONNX Runtime predictor for `loaded` once it converts and matches scikit-learn."""
        serving = self.settings.serving
        faster = loaded.predictor.with_onnx(
            threads=serving.threads_per_worker, parity_rows=serving.parity_rows, tolerance=serving.parity_tolerance
        )
        if faster is loaded.predictor:
            return False
        with self._lock:
            if self.current is not loaded:  # a newer version swapped in meanwhile: leave it alone
                return False
            self.current = replace(loaded, predictor=faster)
            if self.primary:
                metrics.set_model(loaded.name, loaded.version, faster.runtime, _labels(loaded))
        log.info("%s v%s now runs on %s", loaded.name, loaded.version, faster.runtime)
        return True

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    def _load(self, info: VersionInfo) -> LoadedModel:
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix="serving-model-"))
        try:
            model_dir = self.registry.download(info, tmp)
            pipeline, metadata = load_pipeline(model_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        predictor = build_loaded_model(info, pipeline, metadata, self.settings.contract, self.settings)
        predictor.warm()
        loaded = LoadedModel(
            name=info.name,
            alias=self.alias,
            version=info.version,
            run_id=info.run_id,
            predictor=predictor,
            metadata=metadata,
            tags=info.tags,
            card=info.description,
            metrics=self.registry.run_metrics(info.run_id),
        )
        log.info("loaded %s v%s in %.2fs", info.name, info.version, time.perf_counter() - started)
        return loaded

    async def watch(self) -> None:
        """Check the alias every `reload_interval_s`, and at once when nudged: by the MLflow webhook,
        /admin/reload, or another worker that saw the alias move. Every 2 s while the champion is missing;
        a missing challenger is a normal state, polled as usual."""
        interval = self.settings.serving.reload_interval_s

        def next_poll() -> float:
            waiting = self.current is None and self.primary
            return time.monotonic() + (min(interval, 2.0) if waiting else interval)

        due = next_poll()
        while True:
            await asyncio.sleep(self.board.check_s)
            if not self.board.nudged() and time.monotonic() < due:
                continue
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the watcher must outlive any single failure
                log.exception("model watcher iteration failed")
            due = next_poll()


def _labels(model: LoadedModel | None) -> tuple[str, str, str] | None:
    return None if model is None else (model.name, model.version, model.predictor.runtime)
