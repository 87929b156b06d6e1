"""More of a new user's first hour (found by a helper following the README): what `status` must say, and a
wrong first setting that must not leave the table locked to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from app.db import migrate
from app.errors import IndexModelMismatch
from tests.conftest import make_settings
from tests.e2e.test_first_hour import cli, env  # noqa: F401  (the fixture)


def test_status_lists_access_not_established(env: dict[str, str], tmp_path: Path, db_url: str) -> None:  # noqa: F811
    """README: content whose access could not be read "is visible to nobody ... and `status` lists it", and the
    Troubleshooting row "A page never appears" sends the user to `status`. The plain output printed only the
    counts (`--json` had the list)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO cv_space_access (space_key, principals, error, checked_at)
               VALUES ('ENG', NULL, 'AccessUnavailable: space ENG permissions (404)', now())"""
        )
        conn.execute(
            """INSERT INTO cv_restrictions (content_id, restricted, error, checked_at)
               VALUES ('777', NULL, 'AccessUnavailable: restriction of 777 (503)', now())"""
        )
    shown = cli(["status"], env | {"COLUMNS": "200"}, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Access not established" in shown.stdout, shown.stdout
    assert "space ENG" in shown.stdout and "permissions (404)" in shown.stdout
    assert "content 777" in shown.stdout and "sync-permissions" in shown.stdout


def _dim(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a
               WHERE a.attrelid = 'data_confluence'::regclass AND a.attname = 'embedding'"""
        ).fetchone()
    assert row is not None
    return int(str(row[0]).split("(")[1].rstrip(")"))


def test_an_empty_table_follows_a_corrected_embed_dim(pg_server: str) -> None:
    """A first start with the `.env.example` EMBED_DIM=1024 against a 256-dimension model: every page job fails
    on the dimension, no row is written. Correcting EMBED_DIM then met "run reindex" for a table with nothing in
    it. An empty table is now created again for the settings; one with rows is still refused."""
    name = "cv_first_dim"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.replace("/postgres?", f"/{name}?")
    assert url != pg_server
    asyncio.run(migrate(url, make_settings(embed_dim=1024)))
    assert _dim(url) == 1024
    asyncio.run(migrate(url, make_settings(embed_dim=256)))  # corrected: accepted, the table follows
    assert _dim(url) == 256
    # A service running on the table: a mistaken start beside it changes nothing.
    with psycopg.connect(url), pytest.raises(IndexModelMismatch):
        asyncio.run(migrate(url, make_settings(embed_dim=512)))
    assert _dim(url) == 256
    asyncio.run(migrate(url, make_settings(embed_dim=256, embed_model="other-model")))  # still empty
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO data_confluence (text, metadata_, node_id, embedding)
               VALUES ('x', '{}', 'n1', %s::vector)""",
            ("[" + ",".join(["0.1"] * 256) + "]",),
        )
    with pytest.raises(IndexModelMismatch):
        asyncio.run(migrate(url, make_settings(embed_dim=256)))
    assert _dim(url) == 256
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM data_confluence").fetchone() == (1,)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
