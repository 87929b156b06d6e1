"""Reviewer's breakage tests for 8a63f9e (schema: a start leaves existing triggers alone).

`CREATE OR REPLACE TRIGGER` (the schema before 8a63f9e) rewrote the two permission triggers at every start: their
definition, and their `tgenabled` (Postgres sets it to 'O', enabled, when it replaces a trigger). The DO blocks that
replaced it create the trigger only when no trigger of that *name* exists on the table, so a start no longer
restores an invariant that 16366c4 moved into Postgres precisely so that it would not depend on writer discipline:

* a trigger left disabled (`ALTER TABLE ... DISABLE TRIGGER`, as tests/unit/test_access_rule.py does for a moment;
  `pg_restore --data-only --disable-triggers` interrupted between its DISABLE and ENABLE) stays disabled for good;
* a trigger of the same name with another definition is kept as it is.

With `cv_page_access_name_restrictions` off, a path naming an id without a `cv_restrictions` row is stored as it
is, and the fast permission forms search uses (`cv_viewer_blocked` / `cv_page_visible`) show the page to its whole
space; with `cv_restrictions_keep_named` off, deleting a row a stored path names does the same.
"""

from __future__ import annotations

import psycopg
import pytest

from app.db import migrate
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(120)

VIEWER = ["anyone"]


async def _visible(conn: psycopg.AsyncConnection[object], page: str) -> bool:
    """The fast form of the permission rule, as /search evaluates it."""
    row = await (
        await conn.execute(
            "SELECT cv_page_visible(%s, cv_viewer_spaces(%s::text[]), cv_viewer_blocked(%s::text[]))",
            (page, VIEWER, VIEWER),
        )
    ).fetchone()
    assert row is not None
    return bool(row[0])


async def _enabled(conn: psycopg.AsyncConnection[object], table: str, trigger: str) -> str:
    row = await (
        await conn.execute(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s", (table, trigger)
        )
    ).fetchone()
    assert row is not None
    return str(row[0])


async def test_a_start_re_enables_a_disabled_path_naming_trigger(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE cv_page_access DISABLE TRIGGER cv_page_access_name_restrictions")
    await migrate(db_url, make_settings(database_url=db_url))  # a restart: before 8a63f9e it re-enabled it
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO cv_space_access (space_key, principals) VALUES ('S', %s)", (VIEWER,))
        await conn.execute("INSERT INTO cv_restrictions (content_id, restricted) VALUES ('leaf', false)")
        # A path written without a row for its restricted ancestor (a writer other than app.access).
        await conn.execute("INSERT INTO cv_page_access (page_id, space_key, path) VALUES ('leaf', 'S', '{anc,leaf}')")
        assert await _enabled(conn, "cv_page_access", "cv_page_access_name_restrictions") == "O"
        assert not await _visible(conn, "leaf"), "a path id without a restriction row showed its page to the space"


async def test_a_start_re_enables_a_disabled_keep_named_trigger(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE cv_restrictions DISABLE TRIGGER cv_restrictions_keep_named")
    await migrate(db_url, make_settings(database_url=db_url))
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO cv_space_access (space_key, principals) VALUES ('S', %s)", (VIEWER,))
        await conn.execute("INSERT INTO cv_page_access (page_id, space_key, path) VALUES ('leaf', 'S', '{anc,leaf}')")
        await conn.execute("UPDATE cv_restrictions SET restricted = false WHERE content_id = 'leaf'")
        assert not await _visible(conn, "leaf")  # 'anc' not read yet: denies
        await conn.execute("DELETE FROM cv_restrictions WHERE content_id = 'anc'")  # a stored path still names it
        assert await _enabled(conn, "cv_restrictions", "cv_restrictions_keep_named") == "O"
        assert not await _visible(conn, "leaf"), "deleting a named restriction row showed its page to the space"


async def test_a_start_restores_the_path_naming_trigger_definition(db_url: str) -> None:
    """A trigger of the same name with another definition (here: INSERT only, so a page move's new path gets no
    placeholder for its new ancestor) was replaced by every start; now it is kept."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("DROP TRIGGER cv_page_access_name_restrictions ON cv_page_access")
        await conn.execute(
            "CREATE TRIGGER cv_page_access_name_restrictions AFTER INSERT ON cv_page_access"
            " FOR EACH ROW EXECUTE FUNCTION cv_page_access_name_restrictions()"
        )
    await migrate(db_url, make_settings(database_url=db_url))
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO cv_space_access (space_key, principals) VALUES ('S', %s)", (VIEWER,))
        await conn.execute("INSERT INTO cv_page_access (page_id, space_key, path) VALUES ('leaf', 'S', '{leaf}')")
        await conn.execute("UPDATE cv_restrictions SET restricted = false WHERE content_id = 'leaf'")
        await conn.execute("UPDATE cv_page_access SET path = '{moved_under,leaf}' WHERE page_id = 'leaf'")
        assert not await _visible(conn, "leaf"), "a moved page's new, unread ancestor did not hide it"
