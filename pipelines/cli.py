"""`mlops`: one entry point for every flow and operation.

mlops contract init data/penguins.csv --target species   # draft a contract and settings for your data
mlops run collect                      # any flow, in this process (recorded by Prefect if a server is set)
mlops run train -p families='["logistic"]'
mlops run score -p version=3           # batch-score the raw snapshot's new partitions
mlops run compare                      # champion vs challenger on live (shadow) traffic
mlops status                           # champion, challenger, last drift decision, recent runs
mlops promote 4                        # run the promotion gate on registered version 4
mlops challenger 4                     # point `challenger` at version 4 (shadow/canary serve it); --clear
mlops rollback 3 --reason "v4 doubles false alarms in FR"
mlops webhook register https://api.example.com/webhooks/mlflow   # the API follows alias moves at once
mlops stack up | down | status         # the local servers `make demo` uses
mlops demo [--stop]

Settings are read and checked before anything slow starts: a mistake is one message and exit code 2.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from core.servers import NO_USAGE_REPORTING
from core.settings import PROJECT_ROOT, Settings, SettingsError, get_settings
from pipelines.entry import user_errors

# Prefect reads its settings at import: set them before any flow module is imported. Offline, its
# telemetry only logs errors.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.update({k: v for k, v in NO_USAGE_REPORTING.items() if k not in os.environ})
# Without PREFECT_API_URL a flow run starts a temporary Prefect server; on a busy machine it can take
# longer than Prefect's default 20 s to come up (seen on a 2-core machine under load).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

FLOWS = ("collect", "preprocess", "train", "tune", "promote", "monitor", "retrain", "rollback", "score", "compare")

app = typer.Typer(help="Run the loop's flows and operate the registry.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: MLflow and Prefect servers, worker, API.", no_args_is_help=True)
contract_app = typer.Typer(help="The dataset contract: draft one from your data.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(contract_app, name="contract")
console = Console(soft_wrap=True)
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """A user's mistake: one message, no traceback."""
    errors.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        fail(str(exc))


def _parse_params(params: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {p!r}", param_hint="--param")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as reason=manual
    return out


@app.command()
def run(
    flow: Annotated[str, typer.Argument(help=f"one of: {', '.join(FLOWS)}")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value (value parsed as JSON)")] = None,
) -> None:
    """Run one flow now, in this process."""
    if flow not in FLOWS:
        raise typer.BadParameter(f"unknown flow {flow!r}; choose one of {', '.join(FLOWS)}", param_hint="FLOW")
    kwargs = _parse_params(param or [])
    settings_or_exit()  # before Prefect is imported or a temporary server starts
    module = importlib.import_module(f"pipelines.{flow}")
    fn = getattr(module, flow)
    known = user_errors()
    with console.status(f"running flow [bold]{flow}[/] {kwargs or ''}"):
        try:
            result = fn(**kwargs)
        except known as exc:
            fail(str(exc), code=1)
    console.print_json(json.dumps(result, default=str))


@contract_app.command("init")
def contract_init(  # noqa: PLR0917 - a command: its options are its parameters
    source: Annotated[str, typer.Argument(help="CSV or Parquet path or glob, or a SQLAlchemy URL")],
    target: Annotated[str, typer.Option(help="the column the model predicts")],
    id_column: Annotated[str | None, typer.Option("--id", help="a column that identifies a row (optional)")] = None,
    timestamp: Annotated[str | None, typer.Option(help="a column that orders rows in time (optional)")] = None,
    task: Annotated[str | None, typer.Option(help="binary | multiclass | regression (default: guessed)")] = None,
    name: Annotated[str | None, typer.Option(help="the dataset's name (default: from the file or table)")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write dataset.yaml and settings.yaml")] = None,
    table: Annotated[str | None, typer.Option(help="with a database URL: the table to read")] = None,
    query: Annotated[str | None, typer.Option(help="with a database URL: a query to read")] = None,
    sample_rows: Annotated[int, typer.Option(help="rows read to guess from")] = 100_000,
    force: Annotated[bool, typer.Option(help="overwrite existing files")] = False,
) -> None:
    """Draft a contract and a settings overlay from the data; print what was guessed and why."""
    from core.data.draft import DraftError, default_name, draft_contract, read_sample, write_draft

    if task is not None and task not in ("binary", "multiclass", "regression"):
        fail(f"--task {task!r}: choose binary, multiclass or regression")
    try:
        frame, section = read_sample(source, table=table, query=query, max_rows=sample_rows)
        dataset_name = name or default_name(source, table)
        draft = draft_contract(
            frame, target=target, name=dataset_name, id_column=id_column, timestamp_column=timestamp, task=task
        )
        folder = out or PROJECT_ROOT / "configs" / dataset_name
        if "path" in section and "://" not in section["path"]:
            section["path"] = _relative(Path(section["path"]).resolve())
        dataset, settings = write_draft(draft, folder, source=section, project_root=PROJECT_ROOT, force=force)
    except DraftError as exc:
        fail(str(exc))
    console.print(f"[bold]{dataset_name}[/]: {draft.rows} sample rows, task [bold]{draft.task}[/]")
    for note in draft.notes:
        console.print(f"  - {note}")
    for column, note in draft.column_notes.items():
        console.print(f"  - {column}: {note}")
    console.print(f"wrote {_relative(dataset)} and {_relative(settings)}; review them, then:")
    console.print(f"  export MLOPS_CONFIG=configs/settings.yaml,{_relative(settings)}", highlight=False, soft_wrap=True)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


@app.command()
def status() -> None:
    """Champion, challenger, the last drift decision and recent flow runs."""
    from core.registry import aliases as registry
    from core.registry.tracking import use_experiment
    from monitoring.decisions import decisions_path, read_decisions

    settings = settings_or_exit()
    use_experiment(settings)
    table = Table(title=f"registry: {settings.model_name} at {settings.mlflow_tracking_uri}")
    for col in ("alias", "version", "family", "decision", "reason"):
        table.add_column(col, overflow="fold")
    for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS):
        mv = registry.version_by_alias(settings.model_name, alias)
        if mv is None:
            table.add_row(alias, "-", "", "", "")
        else:
            t = mv.tags
            table.add_row(alias, str(mv.version), t.get("family", ""), t.get("decision", ""), t.get("reason", "")[:160])
    console.print(table)

    decisions = read_decisions(decisions_path(settings))
    if decisions:
        last = decisions[-1]
        console.print(
            f"last monitoring decision ({last.get('decided_at')}): "
            f"retrain={last.get('retrain')} triggered={last.get('triggered')} - {last.get('reason', '')}"
        )
    else:
        console.print("no monitoring decision yet")
    _recent_runs()


def _recent_runs(limit: int = 8) -> None:
    import asyncio
    import os

    if not os.environ.get("PREFECT_API_URL"):
        console.print("recent flow runs: set PREFECT_API_URL (the demo prints it) to list them")
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def fetch() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs(limit=limit, sort=FlowRunSort.START_TIME_DESC))

    try:
        runs = asyncio.run(fetch())
    except Exception as exc:  # the server being down is a status, not a crash
        console.print(f"recent flow runs: Prefect API unreachable ({exc.__class__.__name__})")
        return
    table = Table(title="recent flow runs")
    for col in ("name", "state", "started"):
        table.add_column(col)
    for r in runs:
        table.add_row(r.name, r.state_name or "", str(r.start_time or ""))
    console.print(table)


@app.command()
def promote(version: Annotated[int, typer.Argument(help="registered model version to gate")]) -> None:
    """Run the promotion gate on a registered version against the current champion."""
    from pipelines.promote import promote as promote_flow

    with console.status(f"gating version {version} on the holdout"):
        result = promote_flow(version=version)
    console.print_json(json.dumps(result, default=str))


@app.command()
def challenger(
    version: Annotated[int | None, typer.Argument(help="the version the service shadows or canaries")] = None,
    clear: Annotated[bool, typer.Option(help="remove the alias: no challenger")] = False,
) -> None:
    """Point the `challenger` alias at a version (or remove it): what the service's shadow and canary serve."""
    from mlflow import MlflowClient

    settings = settings_or_exit()
    if (version is None) == (not clear):
        fail("give a VERSION, or --clear to remove the alias")
    uri = settings.mlflow_tracking_uri
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    alias = settings.serving.rollout.alias
    try:
        if clear:
            c.delete_registered_model_alias(settings.model_name, alias)
            console.print(f"{settings.model_name}: alias {alias!r} removed")
            return
        c.get_model_version(settings.model_name, str(version))  # a clear error for a version that is not there
        c.set_registered_model_alias(settings.model_name, alias, str(version))
    except Exception as exc:
        fail(f"{settings.model_name} at {settings.mlflow_tracking_uri}: {exc}")
    console.print(f"{settings.model_name}: {alias} -> version {version} (served within the poll interval)")


@app.command()
def rollback(
    version: Annotated[int, typer.Argument(help="the earlier version to make champion again")],
    reason: Annotated[str, typer.Option(help="why: recorded on both versions")],
) -> None:
    """Point `champion` back to an earlier version and record why."""
    from pipelines.rollback import rollback as rollback_flow

    console.print_json(json.dumps(rollback_flow(version=version, reason=reason), default=str))


webhook_app = typer.Typer(help="The registry webhook that tells the API an alias moved.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("register")
def webhook_register(
    url: Annotated[str, typer.Argument(help="the API's webhook URL, e.g. https://api.example.com/webhooks/mlflow")],
) -> None:
    """Create (or update) the MLflow webhook that posts alias moves of the model to the API."""
    from core.registry.webhooks import WebhookSetupError, ensure_alias_webhook

    try:
        hook = ensure_alias_webhook(settings_or_exit(), url)
    except WebhookSetupError as exc:
        fail(str(exc))
    console.print(f"webhook {hook.name} ({hook.webhook_id}) -> {hook.url}: {', '.join(str(e) for e in hook.events)}")
    console.print("the MLflow server reads its webhooks every MLFLOW_WEBHOOK_CACHE_TTL seconds (default 60)")


@stack_app.command("up")
def stack_up(api: Annotated[bool, typer.Option(help="also start the API (needs a champion)")] = False) -> None:
    from demo import stack

    settings = get_settings()
    s = stack.up_servers(settings, say=console.print)
    if api:
        s = stack.up_api(settings, s, say=console.print)
    _print_stack(s)


@stack_app.command("down")
def stack_down() -> None:
    from demo import stack

    stopped = stack.down(get_settings(), say=console.print)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    from demo import stack

    _print_stack(stack.load(get_settings()))


def _print_stack(s: Any) -> None:
    table = Table(title="local stack")
    for col in ("component", "pid", "url", "log"):
        table.add_column(col, overflow="fold")
    for name, c in s.components.items():
        table.add_row(name, str(c.pid), c.url, c.log)
    console.print(table)


@app.command()
def demo(stop: Annotated[bool, typer.Option(help="stop everything the demo started")] = False) -> None:
    """The whole loop on embedded defaults (what `make demo` runs)."""
    from demo import __main__ as demo_mod

    demo_mod.main(["--stop"] if stop else [])


if __name__ == "__main__":
    app(prog_name="mlops")
