"""MLflow Model Registry operations: register, record a gate decision, move aliases, roll back.

Aliases: ``champion`` is what serving loads (``models:/<name>@champion``); when a new champion is
promoted the one it replaces keeps ``previous-champion``; a candidate that is not promoted becomes
``challenger``. Every decision is written onto the model version as tags and as a model card in
the version's description (core.registry.cards).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.modeling.gate import Decision

CHAMPION = "champion"
PREVIOUS = "previous-champion"
CHALLENGER = "challenger"


def client() -> MlflowClient:
    return MlflowClient()


def version_by_alias(name: str, alias: str, mlflow_client: MlflowClient | None = None) -> ModelVersion | None:
    c = mlflow_client or client()
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def register(model_uri: str, name: str, tags: Mapping[str, Any]) -> ModelVersion:
    import mlflow

    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def decision_tags(decision: Decision) -> dict[str, str]:
    tags = {
        "decision": decision.decision,
        "reason": decision.reason[:5000],
        "gate_against": decision.against,
        "primary_metric": decision.primary_metric,
        "candidate_score": f"{decision.candidate_score:.6f}",
        "reference_score": f"{decision.reference_score:.6f}",
        "delta": f"{decision.delta:.6f}",
        "ci_low": f"{decision.ci_low:.6f}",
        "ci_high": f"{decision.ci_high:.6f}",
        "latency_ms": f"{decision.latency_ms:.3f}",
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if decision.online is not None:
        tags["online_labelled_pairs"] = str(decision.online.labelled_pairs)
        tags["online_delta"] = f"{decision.online.delta:.6f}"
        tags["online_ci_low"] = f"{decision.online.ci_low:.6f}"
    regressed = [s.name for s in decision.slices if s.regressed]
    tags["slices_regressed"] = ",".join(regressed) or "none"
    return tags


def apply_decision(
    name: str,
    version: str,
    decision: Decision,
    card: str,
    *,
    extra_tags: Mapping[str, Any] | None = None,
    mlflow_client: MlflowClient | None = None,
) -> None:
    """Tag the version with the decision, write its card, and move aliases accordingly."""
    c = mlflow_client or client()
    for key, value in {**decision_tags(decision), **{k: str(v) for k, v in (extra_tags or {}).items()}}.items():
        c.set_model_version_tag(name, version, key, value)
    c.update_model_version(name, version, description=card)
    if decision.promoted:
        current = version_by_alias(name, CHAMPION, c)
        if current is not None and str(current.version) != str(version):
            c.set_registered_model_alias(name, PREVIOUS, current.version)
        c.set_registered_model_alias(name, CHAMPION, version)
        challenger = version_by_alias(name, CHALLENGER, c)
        if challenger is not None and str(challenger.version) == str(version):
            c.delete_registered_model_alias(name, CHALLENGER)
    else:
        c.set_registered_model_alias(name, CHALLENGER, version)


def rollback(name: str, version: str, reason: str, mlflow_client: MlflowClient | None = None) -> dict[str, str]:
    """Point ``champion`` at an earlier version; the replaced one keeps ``previous-champion``."""
    c = mlflow_client or client()
    target = c.get_model_version(name, version)  # raises if the version does not exist
    current = version_by_alias(name, CHAMPION, c)
    if current is not None and str(current.version) == str(target.version):
        raise ValueError(f"version {version} of {name} is already the champion")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if current is not None:
        c.set_registered_model_alias(name, PREVIOUS, current.version)
        c.set_model_version_tag(name, current.version, "rolled_back_at", when)
        c.set_model_version_tag(name, current.version, "rolled_back_reason", reason)
    c.set_registered_model_alias(name, CHAMPION, target.version)
    c.set_model_version_tag(name, target.version, "decision", "rollback")
    c.set_model_version_tag(name, target.version, "reason", reason)
    c.set_model_version_tag(name, target.version, "rollback_from", current.version if current else "none")
    c.set_model_version_tag(name, target.version, "decided_at", when)
    replaced = current.version if current else "-"
    note = f"\n\n## Rollback ({when})\nMade champion again, replacing version {replaced}: {reason}\n"
    c.update_model_version(name, target.version, description=(target.description or "") + note)
    return {"champion": str(target.version), "previous_champion": str(current.version) if current else ""}
