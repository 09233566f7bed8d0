"""The Dockerfile: lint-clean, non-root, a health check, and the very command the tests start."""

from __future__ import annotations

import re
import subprocess

from core.servers import VENV_BIN
from core.settings import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    run = subprocess.run([str(VENV_BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_runs_the_serve_command_as_a_non_root_user_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]  # multi-stage: uv and its cache stay in the build stage
    assert "uv sync --frozen --no-dev" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD .*/health", text, flags=re.MULTILINE)
    # The same entrypoint as tests/serving_support.serve and `make serve`.
    assert text.rstrip().splitlines()[-1] == 'CMD ["python", "-m", "serving"]'
