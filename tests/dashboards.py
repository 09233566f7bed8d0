"""What the dashboards show: the metric names Grafana queries, the names the API exports, and the panels of
the Evidently UI read back through its HTTP API."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

# What a metric name in PromQL can be confused with: keywords and the clauses whose parentheses hold
# label names, not metrics.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("_count", "_sum"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are neither functions, keywords, label
    names (inside `{...}` or a `by (...)` list), durations nor numbers."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = _LABEL_LISTS.sub("", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS or name in ("inf", "nan", "Inf", "NaN"):
            continue
        names.add(name)
    return names


def dashboard_queries() -> dict[str, list[str]]:
    """Every PromQL expression of every dashboard, by dashboard file name."""
    out: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        exprs: list[str] = []

        def walk(node: object, exprs: list[str] = exprs) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str):
                    exprs.append(node["expr"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(path.read_text()))
        out[path.name] = exprs
    return out


def declared_series() -> dict[str, str]:
    """Every series name serving/metrics.py can expose -> the metric it belongs to."""
    from serving import metrics

    out = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            (family,) = obj.describe()
            for suffix in _SUFFIXES[family.type]:
                out[family.name + suffix] = family.name
    return out


def exported_series(exposition: str) -> set[str]:
    """The series names in a /metrics response."""
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def grafana_panels() -> list[tuple[str, str, list[str]]]:
    """(dashboard file, panel title, its PromQL expressions) for every panel that queries something."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text()).get("panels", []):
            exprs = [t["expr"] for t in panel.get("targets", []) if isinstance(t.get("expr"), str)]
            if exprs:
                out.append((path.name, str(panel.get("title")), exprs))
    return out


def evidently_panels(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every panel of every project's dashboard on an `evidently ui` server, read as its pages read them:
    {project name: [{"title", "subtitle", "kind", "lines": {legend: [points]}}]} (a text panel has no lines)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(base_url=f"{url}/api", timeout=30) as api:
        for project in api.get("/projects").raise_for_status().json():
            dashboard = api.get(f"/v2/dashboards/{project['id']}").raise_for_status().json()
            in_tabs = {i for tab in dashboard["tabs"] for i in tab["panels"]}
            panels = []
            for panel in dashboard["panels"]:
                assert panel["id"] in in_tabs, f"panel {panel['title']!r} is on no tab: nobody sees it"
                lines: dict[str, list[float]] = {}
                if panel["values"]:
                    keys = ("tags", "metadata", "metric", "metric_labels")
                    filters = [{k: v[k] for k in keys} for v in panel["values"]]
                    series = (
                        api.post(f"/v2/snapshots/{project['id']}/data_series_batch", json={"series_filter": filters})
                        .raise_for_status()
                        .json()["series"]
                    )
                    for index, value in enumerate(panel["values"]):
                        points = [x for s in series if s["filter_index"] == index for x in s["values"] if x is not None]
                        lines[value["legend"] or value["metric"]] = points
                kind = panel["plot_params"]["plot_type"]
                panels.append({"title": panel["title"], "subtitle": panel["subtitle"], "kind": kind, "lines": lines})
            out[project["name"]] = panels
    return out


def workspace_panels(workspace: Path, log: Path) -> dict[str, list[dict[str, Any]]]:
    """`evidently ui` started on `workspace`, its panels read back (evidently_panels), and stopped."""
    from core.servers import start_evidently_ui

    server = start_evidently_ui(workspace, log)
    try:
        return evidently_panels(server.url)
    finally:
        server.stop()


def empty_lines(panels: list[dict[str, Any]]) -> list[str]:
    """'panel: line' for every chart line without a point (what the UI draws as nothing)."""
    return [f"{p['title']}: {legend}" for p in panels for legend, points in p["lines"].items() if not points]
