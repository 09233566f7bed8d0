"""Reading YAML: libyaml's C parser where PyYAML was built with it, the pure-Python one otherwise.

Settings and the contract are read at every entry point (each flow, each CLI command, the service, and
tests that read them per request): PyYAML's pure-Python SafeLoader took ~7 ms for configs/settings.yaml,
CSafeLoader ~0.75 ms, for the same mapping. Both raise ``yaml.YAMLError`` on bad input.
"""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str | bytes) -> Any:
    """``yaml.safe_load`` with the fastest safe loader available."""
    return yaml.load(text, Loader=SafeLoader)
