"""Docs that cannot go stale: every setting and every command is documented where users look."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import cli
from app.config import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (REPO / ".env.example").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_readme_and_env_example(name: str) -> None:
    variable = name.upper()
    assert f"`{variable}`" in README or f"`{variable}," in README or f", `{variable}`" in README, variable
    assert variable in ENV_EXAMPLE, variable


@pytest.mark.parametrize("command", sorted(c.name or c.callback.__name__ for c in cli.registered_commands))  # type: ignore[union-attr]
def test_every_command_is_in_readme(command: str) -> None:
    assert f"confluence-vectors {command}" in README


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in README and "make test" in (REPO / ".ci" / "run").read_text()
