"""The model artefact: how a fitted Pipeline is logged to MLflow, what it carries, and how it is loaded.

One owner for everything a model version is made of, used by training, tuning, promotion, monitoring,
serving, the example model and the tests:

* the Pipeline itself, serialised with skops (never pickle), and the exact types skops must trust to
  load it: :func:`trusted_types`;
* :class:`ModelMetadata`, written into the MLmodel file's ``metadata`` (what serving needs beside the
  Pipeline: the decision threshold, the class order, the task, the contract it was trained on);
* the signature and an input example, and explicit pip requirements;
* the project code the Pipeline holds (the contract's feature transformers), logged with the model so
  that it loads outside this checkout: :func:`log_model` adds it as MLflow ``code_paths``.

Loading goes through :func:`load_pipeline` (a local model directory) or :func:`load_version` (a
registered version, downloaded through MLflow): both read the trust list from the MLmodel file and
accept it only inside :data:`TRUSTED_TYPE_PREFIXES`, the loader's own allow-list, so whoever can write a
model version cannot make the loader trust ``posix.system``.

This module imports neither mlflow nor scikit-learn at import time: the serving process loads models
through it and must start fast.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import yaml_io

if TYPE_CHECKING:
    from core.contract import DatasetContract

# The project's own modules a fitted Pipeline may reference: skops needs them importable at load time.
MODEL_CODE_MODULES = ("core.modeling.features",)
# Types every family's Pipeline holds beyond what skops trusts by default: the project's time transformer
# and numpy dtypes (the imputers and encoders store them).
COMMON_TRUSTED_TYPES = ("core.modeling.features.TimeFeatures", "numpy.dtype")
# The loader trusts a type the MLmodel lists only inside these packages.
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.", *(f"{m}." for m in MODEL_CODE_MODULES))
# What loading needs, pinned to what trained the model.
REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


class ModelFormatError(RuntimeError):
    """The registered model is not in a format this project loads safely."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a consumer needs beside the Pipeline, read from the MLmodel file's ``metadata``."""

    family: str
    task: str
    threshold: float | None = None  # binary: P(positive) at or above it predicts the positive class
    positive_class: Any = None
    classes: list[Any] = field(default_factory=list)  # labels in the order of predict_proba's columns
    primary_metric: str | None = None
    contract: str | None = None
    input_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ModelMetadata:
        raw = dict(raw or {})
        threshold = raw.get("threshold")
        return cls(
            family=str(raw.get("family", "unknown")),
            task=str(raw.get("task", "")),
            threshold=None if threshold is None else float(threshold),
            positive_class=raw.get("positive_class"),
            classes=list(raw.get("classes") or []),
            primary_metric=raw.get("primary_metric"),
            contract=raw.get("contract"),
            input_columns=list(raw.get("input_columns") or []),
        )


def trusted_types(family: str) -> list[str]:
    """The exact types skops must trust to load a Pipeline of `family` (tests check the list is complete)."""
    from core.modeling.families import get_family

    return [*COMMON_TRUSTED_TYPES, *get_family(family).trusted_types]


def pip_requirements() -> list[str]:
    """Explicit and pinned: inferring them costs seconds per model and can guess wrong."""
    return [f"{pkg}=={installed_version(pkg)}" for pkg in REQUIREMENTS]


@contextmanager
def model_code() -> Iterator[list[str]]:
    """A temporary tree holding only the project modules a Pipeline references, as MLflow ``code_paths``.

    MLflow copies each code path into the model's ``code/`` folder and puts that folder on ``sys.path``
    when the model is loaded, so ``core.modeling.features`` imports wherever the model goes. The copy
    holds the module files and empty package markers, nothing else of the project.
    """
    root = Path(__file__).resolve().parents[2]
    tmp = Path(tempfile.mkdtemp(prefix="model-code-"))
    try:
        top = MODEL_CODE_MODULES[0].split(".")[0]
        for module in MODEL_CODE_MODULES:
            parts = module.split(".")
            for depth in range(1, len(parts)):
                package = tmp.joinpath(*parts[:depth])
                package.mkdir(exist_ok=True)
                (package / "__init__.py").touch()
            shutil.copy2(root.joinpath(*parts).with_suffix(".py"), tmp.joinpath(*parts).with_suffix(".py"))
        yield [str(tmp / top)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _sys_path_kept() -> Iterator[None]:
    """Put ``sys.path`` back as it was.

    ``log_model`` loads the saved model once to check the input example, and MLflow's loader prepends the
    model's ``code/`` folder (a temporary copy of a few project modules) to ``sys.path`` for good. Left
    there, a process this one spawns afterwards (a Dask worker of a ``LocalCluster``, a multiprocessing
    child) imports ``core`` from that partial copy, or from a folder that no longer exists, and fails
    with ``No module named 'core.modeling.tuning'``. In this process the project's own modules are
    already importable, so the copy is not needed here.
    """
    before = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = before


def log_model(pipeline: Any, metadata: ModelMetadata, example: Any, *, name: str = "model") -> str:
    """Log `pipeline` in the active MLflow run; return its model URI.

    Classifiers log ``predict_proba`` as the pyfunc method, so any MLflow scoring server built from the
    model returns probabilities, not hard labels.
    """
    import mlflow
    from mlflow.models import infer_signature

    # The requirements are explicit; uv auto-detection would add seconds per model exporting the
    # project's lock (its hash is already a run tag).
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    classifier = hasattr(pipeline, "predict_proba")
    output = pipeline.predict_proba(example) if classifier else pipeline.predict(example)
    with model_code() as code_paths, _sys_path_kept():
        info = mlflow.sklearn.log_model(
            pipeline,
            name=name,
            serialization_format="skops",
            skops_trusted_types=trusted_types(metadata.family),
            pip_requirements=pip_requirements(),
            signature=infer_signature(example, output),
            input_example=example,
            pyfunc_predict_fn="predict_proba" if classifier else "predict",
            metadata=metadata.as_dict(),
            code_paths=code_paths,
        )
    return str(info.model_uri)


def metadata_for(
    pipeline: Any, contract: DatasetContract, *, family: str, threshold: float | None, primary_metric: str | None
) -> ModelMetadata:
    """The metadata of a Pipeline trained on `contract`."""
    classes = [_plain(c) for c in getattr(pipeline, "classes_", [])]
    return ModelMetadata(
        family=family,
        task=contract.task,
        threshold=None if threshold is None else float(threshold),
        positive_class=contract.target.positive_class,
        classes=classes,
        primary_metric=primary_metric,
        contract=contract.name,
        input_columns=list(contract.input_columns),
    )


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ---- loading ------------------------------------------------------------------------------------------
def sklearn_flavor(mlmodel: Mapping[str, Any]) -> dict[str, Any]:
    """The MLmodel file's sklearn flavor, refused unless it was written with skops."""
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ModelFormatError("the model has no sklearn flavor")
    if flavor.get("serialization_format") != "skops":
        raise ModelFormatError(
            f"refusing serialization_format {flavor.get('serialization_format')!r}: "
            "only skops loads without running code"
        )
    return dict(flavor)


def load_pipeline(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The skops-loaded Pipeline and the MLmodel metadata of a local model directory.

    Trusts the types the MLmodel lists only where :data:`TRUSTED_TYPE_PREFIXES` also admits them.
    """
    import skops.io as sio

    mlmodel = yaml_io.safe_load((model_dir / "MLmodel").read_text())
    flavor = sklearn_flavor(mlmodel)
    trusted = list(flavor.get("skops_trusted_types") or [])
    refused = [t for t in trusted if not str(t).startswith(TRUSTED_TYPE_PREFIXES)]
    if refused:
        raise ModelFormatError(
            f"the model's MLmodel asks to trust {refused}, outside the loader's allow-list "
            f"{list(TRUSTED_TYPE_PREFIXES)}: refused"
        )
    pipeline = sio.load(model_dir / flavor["pickled_model"], trusted=trusted)
    return pipeline, dict(mlmodel.get("metadata") or {})


def load_version(model_uri: str, tracking_uri: str | None = None) -> tuple[Any, ModelMetadata]:
    """A registered model (``models:/name/3``, ``models:/name@champion``, ``runs:/...``) and its metadata,
    downloaded through MLflow and loaded by :func:`load_pipeline`."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        pipeline, metadata = load_pipeline(local)
    return pipeline, ModelMetadata.from_dict(metadata)


@dataclass(frozen=True)
class RegisteredModel:
    """One registered version, loaded: what batch scoring needs to predict and to say what predicted."""

    name: str
    version: str
    run_id: str | None
    pipeline: Any
    metadata: dict[str, Any]  # the MLmodel's metadata as written (see ModelMetadata)
    tags: dict[str, str]


def load_registered(
    name: str, *, tracking_uri: str, alias: str | None = None, version: str | None = None
) -> RegisteredModel:
    """The version `alias` points at (or `version`), downloaded and loaded by :func:`load_pipeline`,
    with its version number, run id and tags."""
    import mlflow

    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias and version")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=tmp))
        pipeline, metadata = load_pipeline(local)
    return RegisteredModel(
        name=name, version=str(mv.version), run_id=mv.run_id, pipeline=pipeline, metadata=metadata, tags=dict(mv.tags)
    )
