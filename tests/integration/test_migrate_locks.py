"""A start (`app.db.migrate`, run by every `serve`, `worker` and command) leaves existing objects alone, unlocked.

CREATE INDEX IF NOT EXISTS, CREATE OR REPLACE TRIGGER and ALTER TABLE ... ADD COLUMN IF NOT EXISTS take their
table's lock (SHARE, SHARE ROW EXCLUSIVE, ACCESS EXCLUSIVE) before they look: a start then waited for any open
transaction on that table, and everything queued behind the start's lock (searches join cv_pages) waited too.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from app.db import migrate
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(120)

#: Tables a start used to lock, and a statement that leaves an open transaction holding a lock on each.
HELD = {
    "cv_pages": "SELECT count(*) FROM cv_pages",  # read by every search (version columns)
    "cv_page_access": "INSERT INTO cv_page_access (page_id, space_key, path) VALUES ('p1', 'S', '{}')",
    "cv_restrictions": "SELECT count(*) FROM cv_restrictions",
    "cv_deliveries": "SELECT count(*) FROM cv_deliveries",
    "cv_attachments": "SELECT count(*) FROM cv_attachments",
    "cv_term_deltas": "INSERT INTO cv_term_deltas (relid, lexeme, delta) VALUES (1, 'x', 1)",
    "data_confluence": "INSERT INTO data_confluence (text, node_id) VALUES ('t', 'n1')",
}


@pytest.mark.parametrize("table", sorted(HELD))
async def test_a_start_does_not_wait_for_an_open_transaction_on_a_table_it_only_checks(
    db_url: str, table: str
) -> None:
    holder = await psycopg.AsyncConnection.connect(db_url)  # autocommit off: the transaction stays open
    try:
        await holder.execute(HELD[table])
        await asyncio.wait_for(migrate(db_url, make_settings(database_url=db_url)), timeout=15)
    finally:
        await holder.close()
