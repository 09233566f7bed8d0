"""The production profile (docker-compose.yml) without a container engine: `make prod-local`.

Each compose service runs as a real server on 127.0.0.1, on free ports, logs under the state folder:

- PostgreSQL: the machine's (MLOPS_PRODLOCAL_PG_URL, default postgresql://postgres@127.0.0.1:5432), with
  the databases of deploy/postgres/init.sql created when missing (names prefixed with `--db-prefix`);
- the object store: moto's standalone S3 server in place of MinIO, the bucket of
  deploy/minio/create-bucket.sh, the same variables (MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...);
- the MLflow server (backend on PostgreSQL, artifacts proxied to s3://<bucket>), the Prefect server on
  PostgreSQL, the work pool and prefect.yaml's deployments (deploy/prefect/deploy.sh), a process worker;
- the API (`python -m serving`) with 2 workers and the prediction log on PostgreSQL;
- Prometheus (Debian's `prometheus`), with deploy/prometheus/prometheus.yml's scrape config and alerting
  rules, targets rewritten to the local ports (no Pushgateway here: that job is left out).

What runs where is written to <state>/prodlocal.json, so `--stop` works from another shell. moto keeps
the bucket in memory: artifacts are gone once it stops, the databases stay.

    python -m deploy.prodlocal [--state DIR] [--db-prefix P]     # start, print where everything is
    python -m deploy.prodlocal --stop [--state DIR] [--drop-databases]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from core.databases import engine_for, normalise_url, safe_url
from core.servers import (
    HOST,
    VENV_BIN,
    Server,
    free_port,
    prefect_env,
    register_deployments,
    spawn,
    start_api,
    start_mlflow,
    start_prefect,
    start_together,
    start_worker,
    stop_in_phases,
    wait_http,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
API_WORKERS = 2
# The front (what scrapes, serves or runs flows) stops first, then what it talks to.
STOP_PHASES = (("prometheus", "api", "worker"), ("prefect", "mlflow", "s3"))

Say = Callable[[str], None]


def database_names() -> list[str]:
    """The databases compose's PostgreSQL creates at its first start (deploy/postgres/init.sql)."""
    return re.findall(r"CREATE DATABASE (\w+);", (DEPLOY / "postgres" / "init.sql").read_text())


def bucket_name() -> str:
    """The artifact bucket compose creates (deploy/minio/create-bucket.sh)."""
    match = re.search(r"mc mb .*local/([a-z0-9.-]+)", (DEPLOY / "minio" / "create-bucket.sh").read_text())
    if match is None:
        raise RuntimeError("deploy/minio/create-bucket.sh names no bucket (`mc mb ... local/<bucket>`)")
    return match.group(1)


def prometheus_config(api_target: str, rules: Path, scrape_interval: str | None = None) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the API's target on this machine and the rules by path.

    The Pushgateway job is dropped: nothing runs one here.
    """
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(rules)]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] != "pushgateway"]
    for job in jobs:
        if job["job_name"] == "prediction-api":
            job["static_configs"] = [{"targets": [api_target]}]
    config["scrape_configs"] = jobs
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return config


@dataclass
class Component:
    pid: int
    url: str
    log: str


@dataclass
class ProdLocal:
    state: str
    db_prefix: str
    pg_url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)  # what the worker, the API and a client see
    components: dict[str, Component] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.components[name].url

    def database_url(self, name: str) -> str:
        return normalise_url(f"{self.pg_url.rstrip('/')}/{self.db_prefix}{name}")


def _record(state: Path) -> Path:
    return state / "prodlocal.json"


def _save(stack: ProdLocal) -> None:
    path = _record(Path(stack.state))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(stack), indent=2))


def load(state: Path) -> ProdLocal | None:
    path = _record(state)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    raw["components"] = {k: Component(**v) for k, v in raw["components"].items()}
    return ProdLocal(**raw)


def create_databases(pg_url: str, names: list[str], prefix: str) -> None:
    with engine_for(f"{pg_url.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        existing = {row[0] for row in conn.exec_driver_sql("SELECT datname FROM pg_database")}
        for name in names:
            if prefix + name not in existing:
                conn.exec_driver_sql(f'CREATE DATABASE "{prefix}{name}"')


def drop_databases(pg_url: str, names: list[str], prefix: str) -> None:
    with engine_for(f"{pg_url.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{prefix}{name}" WITH (FORCE)')


def _start_s3(stack: ProdLocal, logs: Path) -> None:
    import boto3

    port = free_port()
    proc = spawn("s3", [str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)], logs / "s3.log")
    url = f"http://{HOST}:{port}"
    stack.components["s3"] = Component(proc.pid, url, str(logs / "s3.log"))
    _save(stack)
    wait_http(f"{url}/moto-api/", 60, proc, logs / "s3.log")
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=stack.bucket)


def _start_prometheus(stack: ProdLocal, logs: Path, scrape_interval: str | None) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("the `prometheus` binary is missing: `make prometheus-tools` installs it")
    state = Path(stack.state)
    config_path = state / "prometheus" / "prometheus.yml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    api_target = stack.url("api").removeprefix("http://")
    config = prometheus_config(api_target, DEPLOY / "prometheus" / "alerts.yml", scrape_interval)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    cmd = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={state / 'prometheus' / 'data'}",
        f"--web.listen-address={HOST}:{port}",
    ]
    proc = spawn("prometheus", cmd, logs / "prometheus.log")
    url = f"http://{HOST}:{port}"
    stack.components["prometheus"] = Component(proc.pid, url, str(logs / "prometheus.log"))
    _save(stack)
    wait_http(f"{url}/-/ready", 60, proc, logs / "prometheus.log")


def _config(extra: str | None) -> str:
    """compose's MLOPS_CONFIG, with a dataset's overlay (MLOPS_CONFIG of the caller) before production.yaml."""
    files = (extra or "configs/settings.yaml").split(",")
    return ",".join([*files, "configs/production.yaml"])


def up(
    state: Path,
    *,
    db_prefix: str = "",
    pg_url: str | None = None,
    config: str | None = None,
    deploy_flows: bool = True,
    scrape_interval: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    say: Say = print,
) -> ProdLocal:
    """Start everything (stopping what a previous `up` in `state` left running first)."""
    state = state.resolve()
    if load(state) is not None:
        down(state, say=say)
    logs = state / "logs"
    pg = pg_url or os.environ.get("MLOPS_PRODLOCAL_PG_URL", DEFAULT_PG)
    stack = ProdLocal(str(state), db_prefix, pg, bucket_name())
    names = database_names()
    say(f"PostgreSQL {safe_url(pg)}: databases {', '.join(db_prefix + n for n in names)}")
    create_databases(pg, names, db_prefix)
    home = state / "prefect-home"
    stack.env = {
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "prodlocal"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "prodlocal-secret"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLOPS_CONFIG": _config(config or os.environ.get("MLOPS_CONFIG")),
        "MLOPS_ENVIRONMENT": "production",
        "MLOPS_PROJECT_ROOT": str(ROOT),
        "MLOPS_STATE_DIR": str(state / "app"),
        "MLOPS_ADMIN_API_KEY": os.environ.get("MLOPS_ADMIN_API_KEY") or secrets.token_urlsafe(24),
        "MLOPS_WAREHOUSE_URL": stack.database_url("warehouse"),
        "MLOPS_PREDICTION_LOG_URL": stack.database_url("predictions"),
        "MPLBACKEND": "Agg",
        **(extra_env or {}),
    }
    try:
        say("starting the S3 server (moto) ...")
        _start_s3(stack, logs)
        stack.env["MLFLOW_S3_ENDPOINT_URL"] = stack.url("s3")
        _save(stack)

        say("starting the MLflow and Prefect servers ...")

        def started(name: str, server: Server) -> None:  # recorded at once, so that `down` stops it
            stack.components[name] = Component(server.proc.pid, server.url, str(server.log))
            _save(stack)

        start_together(
            {
                "mlflow": partial(
                    start_mlflow,
                    stack.database_url("mlflow"),
                    f"s3://{stack.bucket}",
                    logs / "mlflow.log",
                    env=stack.env,
                ),
                "prefect": partial(
                    start_prefect,
                    home,
                    logs / "prefect.log",
                    database_url=stack.database_url("prefect").replace("+psycopg", "+asyncpg"),
                ),
            },
            started,
        )
        mlflow_url = stack.url("mlflow")
        stack.env |= {"MLOPS_MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_TRACKING_URI": mlflow_url}
        flow_env = {**stack.env, **prefect_env(stack.url("prefect") + "/api", home)}
        pool_name = "local"
        if deploy_flows:
            say("registering the work pool and the deployments (deploy/prefect/deploy.sh) ...")
            register_deployments(flow_env, pool_name, ROOT)
        worker = start_worker(flow_env["PREFECT_API_URL"], home, pool_name, logs / "worker.log", ROOT, env=flow_env)
        stack.components["worker"] = Component(worker.pid, "", str(logs / "worker.log"))
        _save(stack)

        say(f"starting the API ({API_WORKERS} workers) ...")
        api_env = {**stack.env, "MLOPS_SERVING__WORKERS": str(API_WORKERS)}
        # No champion yet on a new registry: the API is up (/health) and loads one when it appears.
        api = start_api(api_env, logs / "api.log", wait_path="/health")
        stack.components["api"] = Component(api.proc.pid, api.url, str(api.log))
        _save(stack)

        say("starting Prometheus ...")
        _start_prometheus(stack, logs, scrape_interval)
    except BaseException:
        down(state, say=say)
        raise
    return stack


def down(state: Path, *, drop: bool = False, say: Say = print) -> list[str]:
    """Stop every process `up` started in `state`, newest first; `drop` also drops its databases."""
    state = state.resolve()
    stack = load(state)
    if stack is None:
        return []
    phases = [{n: stack.components[n].pid for n in phase if n in stack.components} for phase in STOP_PHASES]
    stopped = stop_in_phases(phases, say)
    if drop:
        say(f"dropping the databases {', '.join(stack.db_prefix + n for n in database_names())}")
        drop_databases(stack.pg_url, database_names(), stack.db_prefix)
    _record(state).unlink()
    return stopped


def describe(stack: ProdLocal) -> str:
    lines = [
        f"API (2 workers)  {stack.url('api')}   (/docs, /metrics; admin key: MLOPS_ADMIN_API_KEY below)",
        f"MLflow           {stack.url('mlflow')}",
        f"Prefect          {stack.url('prefect')}",
        f"Prometheus       {stack.url('prometheus')}",
        f"S3 (moto)        {stack.url('s3')}   bucket {stack.bucket}",
        f"PostgreSQL       {safe_url(stack.pg_url)}   databases "
        + ", ".join(stack.db_prefix + n for n in database_names()),
        f"logs             {Path(stack.state) / 'logs'}",
        "",
        "environment for a client (flows, `mlops`, boto3):",
        *(f"  export {k}={v}" for k, v in sorted(stack.env.items())),
        f"  export PREFECT_API_URL={stack.url('prefect')}/api",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.prodlocal", description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=ROOT / ".state" / "prodlocal")
    parser.add_argument("--db-prefix", default="", help="prefix of the database names (default: init.sql's)")
    parser.add_argument("--stop", action="store_true", help="stop what `up` started in --state")
    parser.add_argument("--drop-databases", action="store_true", help="with --stop: drop the databases too")
    parser.add_argument("--no-deployments", action="store_true", help="skip `prefect deploy --all`")
    parser.add_argument("--scrape-interval", default=None, help="Prometheus' scrape interval (default: 15s)")
    args = parser.parse_args(argv)
    if args.stop:
        stopped = down(args.state, drop=args.drop_databases)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    try:
        stack = up(
            args.state,
            db_prefix=args.db_prefix,
            deploy_flows=not args.no_deployments,
            scrape_interval=args.scrape_interval,
        )
    except (RuntimeError, TimeoutError) as exc:
        print(f"prod-local failed: {exc}", file=sys.stderr)
        return 1
    print(describe(stack))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
