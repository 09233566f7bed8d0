"""The metric names the Grafana dashboards query, and the names the API declares and exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
