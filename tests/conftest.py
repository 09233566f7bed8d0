"""Fixtures shared by every kind of test.

Servers are real and started once per test run; every test that changes settings does it through the
environment, as a user would, in its own state directory.

One Prefect server serves the whole run, however many pytest-xdist workers share it (`make test` runs
three), and each worker has its own MLflow server (SQLite behind one MLflow server is not made for two
processes writing at once, and a registry per worker keeps model names of unrelated tests apart).

Prefect reads its settings once, when it is first imported, and its clients and event workers stay
bound to that server for the life of the process, so the server's address is fixed here, in the process
that starts the run, before anything imports Prefect; the workers inherit it. A server starts the first
time a test asks for it (under a file lock, so workers share one) and is stopped by the process that
started the run, when the run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from core.servers import NO_USAGE_REPORTING, Server, free_port, stop_in_phases

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for _key, _value in NO_USAGE_REPORTING.items():  # Evidently's and MLflow's usage reporting (core.servers)
    os.environ.setdefault(_key, _value)
os.environ.setdefault("MPLBACKEND", "Agg")

# Each xdist worker gets its share of the cores for OpenMP and BLAS threads (scikit-learn's gradient
# boosting, ONNX Runtime, numpy), and so do the servers and flow runs it starts: workers that each spin
# one thread per core against each other made a 30-second test take 90.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))  # libraries this worker has already loaded

if "MLOPS_TESTS_RUN_DIR" not in os.environ:  # the process that starts the run; xdist workers inherit this
    os.environ["MLOPS_TESTS_RUN_DIR"] = tempfile.mkdtemp(prefix="mlops-tests-")
    os.environ["PREFECT_HOME"] = str(Path(os.environ["MLOPS_TESTS_RUN_DIR"]) / "prefect-home")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    _STARTS_THE_RUN = True
else:
    _STARTS_THE_RUN = False
RUN_DIR = Path(os.environ["MLOPS_TESTS_RUN_DIR"])

# Prefect binds its settings, the API URL above among them, when it is first imported, for the life of the
# process. Imported here, every test process is bound to the run's server: a test that points
# PREFECT_API_URL at a closed port (the monitoring tests do) can no longer be the first to import it and
# leave every later flow in that process unable to reach an API.
import prefect  # noqa: E402, F401


def _shared_server(name: str, start: Callable[[Path], Server]) -> str:
    """The run's one `name` server: started by the first test process that needs it; returns its URL."""
    record = RUN_DIR / f"{name}.json"
    with FileLock(str(RUN_DIR / f"{name}.lock")):
        if not record.exists():
            server = start(RUN_DIR / name)
            record.write_text(json.dumps({"url": server.url, "pid": server.proc.pid}))
        return str(json.loads(record.read_text())["url"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each process flushes Prefect's event and log workers; the run's first process stops the servers."""

    if "prefect" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        # A few seconds: what is not sent by then goes to a server about to stop (a worker whose last test
        # pointed Prefect at a closed port waited out a 10-second drain).
        APILogWorker.drain_all(timeout=3)
        EventsWorker.drain_all(timeout=3)
    if not _STARTS_THE_RUN:
        return
    _write_measured_durations(session)
    stop_in_phases([{r.stem: int(json.loads(r.read_text())["pid"]) for r in RUN_DIR.glob("*.json")}])
    shutil.rmtree(RUN_DIR, ignore_errors=True)


DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test file, from a `make test` run
MEASURED_DURATIONS = Path(__file__).resolve().parents[1] / ".state" / "test-durations.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the longest test files first (tests/durations.json), each file's tests in their order.

    `make test` hands whole files to three workers in collection order (`--no-loadscope-reorder`; xdist's own
    order, most tests first, left the one-test files of 30-90 s to the end, one worker finishing alone). A
    file the list does not know yet counts as long: it starts early rather than last."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not DURATIONS.exists():
        return
    seconds: dict[str, float] = json.loads(DURATIONS.read_text())
    unknown = max(seconds.values(), default=0.0)
    index = {item: i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-seconds.get(item.nodeid.split("::")[0], unknown), index[item]))


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The run's seconds per test file (setup, call and teardown), added up where the reports arrive."""
    path = report.nodeid.split("::")[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def _write_measured_durations(session: pytest.Session) -> None:
    """After an xdist run, tests/durations.json updated with this run's seconds, in .state/ (`make
    test-durations` copies it over): files the run did not collect keep their entry while they exist."""
    if not session.config.pluginmanager.has_plugin("dsession") or not _FILE_SECONDS:
        return
    root = DURATIONS.parents[1]
    known: dict[str, float] = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    merged = {k: v for k, v in known.items() if (root / k).exists()}
    merged.update({k: round(v, 1) for k, v in _FILE_SECONDS.items()})
    MEASURED_DURATIONS.parent.mkdir(parents=True, exist_ok=True)
    MEASURED_DURATIONS.write_text(json.dumps(dict(sorted(merged.items(), key=lambda kv: -kv[1])), indent=1) + "\n")


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """The run's Prefect server (SQLite under the run's PREFECT_HOME); its API URL."""
    from core.servers import start_prefect

    port = int(os.environ["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0])
    home = Path(os.environ["PREFECT_HOME"])
    return _shared_server("prefect", lambda root: start_prefect(home, root / "server.log", port=port)) + "/api"


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """This worker's MLflow tracking server (SQLite backend, local artifacts) on 127.0.0.1."""
    from core.servers import start_mlflow

    def start(root: Path) -> Server:
        root.mkdir(parents=True, exist_ok=True)
        return start_mlflow(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log")

    return _shared_server(f"mlflow-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}", start)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """A real Dask cluster for this test process: ``distributed.LocalCluster`` with 2 worker processes of one
    thread each; its scheduler's address. One per process, shared by its Dask tests as one long-lived cluster
    serves a deployment's flows (each start costs two interpreters importing the scientific stack)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every default location at a fresh state directory for one test."""

    state = tmp_path / "state"
    monkeypatch.setenv("MLOPS_STATE_DIR", str(state))
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "test")
    yield state


@pytest.fixture
def mlflow_env(mlflow_server: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings and the mlflow client both pointed at the session's tracking server."""
    import mlflow

    monkeypatch.setenv("MLOPS_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    return mlflow_server


@pytest.fixture
def private_registry() -> Iterator[None]:
    """For a test that points mlflow at its own store (`_mlflow_uris_put_back` puts every test's URIs back;
    this name says in the test's signature that it does so on purpose)."""
    yield


_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _put_mlflow_uris_back() -> Iterator[None]:
    """`mlflow.set_tracking_uri`/`set_registry_uri` change the process *and* its environment (MLflow exports
    MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI so that subprocesses inherit them). Left behind, one test's
    registry becomes the next test's, and the API or `mlops` subprocess a later test starts registers
    models in, or serves them from, a store of an earlier test. Both are put back as they were."""
    saved = {k: os.environ.get(k) for k in _MLFLOW_URI_VARS}
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow

    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or "")  # "": follow the tracking URI
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_put_back_per_module() -> Iterator[None]:
    yield from _put_mlflow_uris_back()


@pytest.fixture(autouse=True)
def _mlflow_uris_put_back() -> Iterator[None]:
    yield from _put_mlflow_uris_back()


# `mlflow.*.load_model` prepends a model's ``code/`` folder (a partial copy of ``core``) to ``sys.path`` for
# good, in a test or in a module's fixture; a process spawned by a later test in this worker (the Dask tests'
# LocalCluster) would import ``core`` from that copy and fail ("No module named 'core.modeling.tuning'").
# After every test ``sys.path`` is what it was once the test modules were collected.
_COLLECTED_SYS_PATH: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    _COLLECTED_SYS_PATH[:] = sys.path


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        if _COLLECTED_SYS_PATH:
            sys.path[:] = _COLLECTED_SYS_PATH
