"""Study storage: workers share one study through PostgreSQL (or the journal file), and the budget
is a budget for the study, not for each worker."""

from __future__ import annotations

import optuna
import pytest

from core.modeling.tuning import StudySpec, create_study, run_worker, summarize
from core.settings import get_settings
from demo.simulator import simulate
from tests.postgres import fresh_database, sqlalchemy_url


def _spec(storage: str, name: str) -> StudySpec:
    return StudySpec(
        study_name=name, storage=storage, contract=get_settings().contract, families=("logistic",),
        primary_metric="pr_auc", n_trials=3, timeout_seconds=None, n_folds=2, time_aware=True, seed=0,
        pruning=True, pruner="median", sampler="tpe",
    )  # fmt: skip


def _frame() -> object:
    return simulate(4000, seed=3, days=4, rows_per_day=1000, true_labels=True, wrong_types=False)


def _run_two_workers(spec: StudySpec) -> optuna.Study:
    study = create_study(spec)
    frame = _frame()
    ran = [run_worker(spec, frame, 0), run_worker(spec, frame, 1)]  # type: ignore[arg-type]
    assert ran == [3, 0]  # the second worker finds the study's budget spent
    return study


@pytest.mark.postgres
def test_postgres_storage_is_shared_by_workers() -> None:
    with fresh_database("optuna") as db:
        url = sqlalchemy_url(db)
        _run_two_workers(_spec(url, "pg-study"))
        again = optuna.load_study(study_name="pg-study", storage=url)
        summary = summarize(again)
        assert summary.n_trials == 3 and summary.best_family == "logistic"
        assert 0 < summary.best_value <= 1


def test_journal_file_storage_is_shared_by_workers(tmp_path: object) -> None:
    path = f"{tmp_path}/study.journal"
    _run_two_workers(_spec(f"journal:{path}", "journal-study"))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    assert len(optuna.load_study(study_name="journal-study", storage=storage).trials) == 3


@pytest.mark.parametrize("dataset", ["fraud", "generated-multiclass"])
def test_local_worker_processes_share_the_study_budget(tmp_path: object, dataset: str) -> None:
    """`tuning.n_workers` local processes (forkserver children where the platform has it) join one study
    and together stop at its budget: on the fraud contract and on a generated multiclass one (text labels,
    column names with spaces and symbols)."""
    from dataclasses import replace

    from pipelines.tune import run_workers, worker_context
    from tests import generated

    spec = replace(_spec(f"journal:{tmp_path}/study.journal", "local-processes"), n_trials=4)
    frame: object = _frame()
    if dataset != "fraud":
        contract = generated.contract_for("multiclass")
        rows, labels = generated.frame_for(contract, 3_000, seed=4)
        frame = rows.assign(**{generated.TARGET: labels})
        spec = replace(spec, contract=contract, primary_metric="f1_macro")
    study = create_study(spec)
    ran = run_workers(spec, frame, 2, None)  # type: ignore[arg-type]
    assert sum(ran) == 4 and len(ran) == 2
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert worker_context().get_start_method() == "forkserver"
