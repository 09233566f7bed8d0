"""The mistakes a flow reports to its user as one line, not a traceback: a configuration or contract the settings
refuse, data the contract refuses, a source that cannot be read as configured. ``mlops run`` and every flow module
run as a program (``python -m pipelines.<flow>``) print them the same way."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from core.settings import SettingsError, get_settings


def user_errors() -> tuple[type[Exception], ...]:
    """Failures that say what is wrong with the data or the configuration, not with the code."""
    from core.contract import ContractError
    from core.data.collection import CollectionError
    from core.data.datasets import DatasetsNotFoundError
    from core.data.sources import SourceError
    from core.data.splits import PreprocessError
    from core.data.validation import SchemaMismatchError
    from core.inference.scoring import ScoringError

    return (
        SettingsError,
        ContractError,
        CollectionError,
        DatasetsNotFoundError,
        SourceError,
        PreprocessError,
        SchemaMismatchError,
        ScoringError,
    )


def run_main(main: Callable[[], Any]) -> None:
    """Run a flow module's ``main``: a user's mistake exits with its message on stderr (2 for settings, 1 for
    the rest); an int that ``main`` returns is the exit code. The settings are read first, before a flow starts
    (and with it Prefect), as ``mlops run`` does."""
    try:
        get_settings()
        code = main()
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2 if isinstance(exc, SettingsError) else 1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
