"""Start-up against a vector table built for another model: an empty table is recreated, a filled one refused."""

from __future__ import annotations

import psycopg
import pytest

from app.db import migrate
from app.errors import IndexModelMismatch
from tests.conftest import make_settings


def _meta(url: str) -> tuple[str, int, str]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT embed_model, embed_dim FROM cv_index_meta WHERE table_name = 'confluence'"
        ).fetchone()
        typ = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'data_confluence'::regclass AND attname = 'embedding'"
        ).fetchone()
    assert row is not None and typ is not None
    return str(row[0]), int(row[1]), str(typ[0])


async def test_an_empty_table_takes_the_configured_model_and_a_filled_one_is_refused(db_url: str) -> None:
    """A first start before `.env` was written builds the table for the defaults; the next start, configured,
    must not ask for a `reindex` of a table that holds nothing. Once a vector is stored, the refusal stands."""
    await migrate(db_url, make_settings())  # defaults: bge-m3, 1024
    assert _meta(db_url) == ("bge-m3", 1024, "vector(1024)")

    await migrate(db_url, make_settings(embed_model="wordllama", embed_dim=256))
    assert _meta(db_url) == ("wordllama", 256, "vector(256)")

    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO data_confluence (text, metadata_, node_id, embedding) VALUES ('x', '{}', 'n1', %s::vector)",
            ("[" + ",".join(["0.1"] * 256) + "]",),
        )
    with pytest.raises(IndexModelMismatch, match="reindex"):
        await migrate(db_url, make_settings(embed_model="bge-m3", embed_dim=1024))
    assert _meta(db_url) == ("wordllama", 256, "vector(256)")
