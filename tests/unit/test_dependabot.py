"""The dependency-update configuration covers the lock file and the workflows, and every version it holds
back is a pin whose reason is written in pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / ".github/dependabot.yml").read_text())


def test_the_lock_file_the_actions_and_the_image_are_updated() -> None:
    ecosystems = {u["package-ecosystem"] for u in CONFIG["updates"]}
    assert {"uv", "github-actions", "docker"} <= ecosystems
    assert (ROOT / "uv.lock").exists() and (ROOT / ".github/workflows").is_dir()


def test_held_back_versions_are_pins_with_a_reason() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    deps = pyproject["project"]["dependencies"]
    (uv,) = [u for u in CONFIG["updates"] if u["package-ecosystem"] == "uv"]
    for rule in uv["ignore"]:
        name = rule["dependency-name"]
        (spec,) = [d for d in deps if re.match(rf"{re.escape(name)}\s*[=<>!~\[]", d.lower())]
        assert any(c in spec for c in "=<"), f"dependabot holds {name} back but pyproject does not pin it"
        line = next(i for i, x in enumerate(lines) if f'"{spec}"' in x)
        commented = "#" in lines[line] or lines[line - 1].strip().startswith("#")
        assert commented, f"{name}: the pin has no reason next to it in pyproject.toml"
