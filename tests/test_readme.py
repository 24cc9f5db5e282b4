"""README's two commands are the ones the project actually runs."""

from __future__ import annotations

import re

from .conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO_ROOT / "README.md").read_text())


def test_readme_opens_with_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()[:2]
    assert "anomalib_simplenet.demo" in demo
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text()
