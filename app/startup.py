"""What a new user needs to hear once at start-up: where the data and settings are, and what is missing.

Why here and not in each component: a service started with no `.env` used to say nothing, then log a
traceback every minute from the reconciliation job. The checks below name every missing setting at once, with
the variable to set, before anything runs; `confluence_configured` lets periodic jobs skip work that cannot
succeed instead of failing loudly on every tick.
"""

from __future__ import annotations

import httpx

from app.config import Settings, env_files_in_use

#: Seconds the start-up probe of Ollama may take: a hint for the operator, not a readiness check (`/readyz`).
OLLAMA_PROBE_SECONDS = 3.0


def confluence_problems(settings: Settings) -> list[str]:
    """Missing Confluence settings, each naming the variables to set (empty when Confluence is configured).

    The credential rule is Atlassian's: Cloud REST calls authenticate with an account email and API token
    (Basic auth), Data Center with a personal access token (Bearer) -- "Basic auth for REST APIs" and "Using
    Personal Access Tokens" in Atlassian's documentation.
    """
    problems = []
    if not settings.confluence_base_url:
        problems.append(
            "CONFLUENCE_BASE_URL is not set: the wiki's URL (Cloud: https://SITE.atlassian.net/wiki; "
            "Data Center: its root URL, e.g. https://wiki.example.com)"
        )
    has_cloud = settings.confluence_email is not None and settings.confluence_api_token is not None
    if not has_cloud and settings.confluence_pat is None:
        problems.append(
            "no Confluence credentials: set CONFLUENCE_EMAIL and CONFLUENCE_API_TOKEN (Cloud) or CONFLUENCE_PAT "
            "(Data Center)"
        )
    return problems


def confluence_configured(settings: Settings) -> bool:
    """Whether calls to Confluence can possibly succeed (a URL and some credentials are set)."""
    return not confluence_problems(settings)


async def ollama_problem(settings: Settings) -> str | None:
    """None when Ollama answers at OLLAMA_BASE_URL and has EMBED_MODEL; else what is wrong and how to fix it.

    Uses Ollama's documented `GET /api/tags` (list local models) with a short timeout.
    """
    url = f"{settings.ollama_base_url}/api/tags"
    try:
        async with httpx.AsyncClient(timeout=OLLAMA_PROBE_SECONDS) as client:
            response = await client.get(url)
            response.raise_for_status()
            names = {str(m.get("name", "")) for m in response.json().get("models", []) if isinstance(m, dict)}
    except (httpx.HTTPError, ValueError) as exc:
        return (
            f"Ollama does not answer at OLLAMA_BASE_URL={settings.ollama_base_url} ({type(exc).__name__}): start "
            "it (`ollama serve`) or set OLLAMA_BASE_URL"
        )
    wanted = settings.embed_model
    if wanted not in names and f"{wanted}:latest" not in names and not any(n.split(":")[0] == wanted for n in names):
        return f"Ollama at {settings.ollama_base_url} has no model {wanted!r}: run `ollama pull {wanted}`"
    return None


def data_location(settings: Settings) -> str:
    """One line saying where the index lives and which `.env` files were read."""
    where = (
        "DATABASE_URL (external Postgres)"
        if settings.database_url is not None
        else f"embedded Postgres in DATA_DIR={settings.data_dir}"
    )
    files = ", ".join(str(p) for p in env_files_in_use()) or "none (environment only)"
    return f"data: {where}; settings files: {files}"


async def startup_problems(settings: Settings) -> list[str]:
    """Every configuration problem found at start-up, Confluence's and Ollama's."""
    problems = confluence_problems(settings)
    ollama = await ollama_problem(settings)
    if ollama:
        problems.append(ollama)
    return problems
