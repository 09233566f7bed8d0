"""`mlops`: one entry point for every flow and operation.

mlops run collect                      # any flow, in this process (recorded by Prefect if a server is set)
mlops run train -p families='["logistic"]'
mlops status                           # champion, challenger, last drift decision, recent runs
mlops promote 4                        # run the promotion gate on registered version 4
mlops rollback 3 --reason "v4 doubles false alarms in FR"
mlops stack up | down | status         # the local servers `make demo` uses
mlops demo [--stop]
"""

from __future__ import annotations

import importlib
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core.settings import get_settings

FLOWS = ("collect", "preprocess", "train", "tune", "promote", "monitor", "retrain", "rollback")

app = typer.Typer(help="Run the loop's flows and operate the registry.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: MLflow and Prefect servers, worker, API.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console()


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
    module = importlib.import_module(f"pipelines.{flow}")
    fn = getattr(module, flow)
    with console.status(f"running flow [bold]{flow}[/] {kwargs or ''}"):
        result = fn(**kwargs)
    console.print_json(json.dumps(result, default=str))


@app.command()
def status() -> None:
    """Champion, challenger, the last drift decision and recent flow runs."""
    from core.registry import aliases as registry
    from core.registry.tracking import use_experiment
    from monitoring.decisions import decisions_path, read_decisions

    settings = get_settings()
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
def rollback(
    version: Annotated[int, typer.Argument(help="the earlier version to make champion again")],
    reason: Annotated[str, typer.Option(help="why: recorded on both versions")],
) -> None:
    """Point `champion` back to an earlier version and record why."""
    from pipelines.rollback import rollback as rollback_flow

    console.print_json(json.dumps(rollback_flow(version=version, reason=reason), default=str))


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
    app()
