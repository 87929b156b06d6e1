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


async def test_api_docs_load_without_internet() -> None:
    """/docs and /redoc reference only assets the service itself serves (no CDN), and those assets answer."""
    import re

    import httpx

    from app.api import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(), worker=False)  # the routes only: no lifespan, no database
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?['"]([^'"]+)['"]""", html)
            urls = [a or b for a, b in assets]
            assert urls, html
            assert not [u for u in urls if u.startswith(("http://", "https://", "//"))], urls
            for url in urls:
                if url.endswith((".js", ".css", ".png")):
                    response = await client.get(url)
                    assert response.status_code == 200 and len(response.content) > 1000, url
