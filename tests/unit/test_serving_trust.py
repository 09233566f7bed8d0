"""The service, not the artifact, decides which types a model may bring: a model whose MLmodel file
asks to trust something outside scikit-learn, numpy, scipy and the project's features is refused
before skops reads a byte of it (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import skops.io as sio
import yaml
from sklearn.linear_model import LogisticRegression

from core.registry.artefact import ModelFormatError, load_pipeline


def _model_dir(tmp_path: Path, trusted: list[str]) -> Path:
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    sio.dump(model, tmp_path / "model.skops")
    mlmodel = {
        "flavors": {
            "sklearn": {"serialization_format": "skops", "pickled_model": "model.skops", "skops_trusted_types": trusted}
        },
        "metadata": {"threshold": 0.5},
    }
    (tmp_path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return tmp_path


@pytest.mark.parametrize("hostile", ["posix.system", "builtins.eval", "subprocess.Popen", "sklearnx.evil"])
def test_types_outside_the_allow_list_are_refused(tmp_path: Path, hostile: str) -> None:
    with pytest.raises(ModelFormatError, match="allow-list"):
        load_pipeline(_model_dir(tmp_path, ["numpy.dtype", hostile]))


def test_listed_types_inside_the_allow_list_load(tmp_path: Path) -> None:
    pipeline, metadata = load_pipeline(_model_dir(tmp_path, ["numpy.dtype"]))
    assert pipeline.predict([[1.0]]).tolist() == [1]
    assert metadata["threshold"] == 0.5


def test_pickle_formats_are_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, [])
    mlmodel = yaml.safe_load((d / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    (d / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelFormatError, match="cloudpickle"):
        load_pipeline(d)
