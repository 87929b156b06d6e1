"""The two fast forms of the permission rule that /search uses must equal the rule: `cv_viewer_pages` (the set
of pages a person may read, computed once when a common word's readable rows are counted) and
`app.search._VISIBLE` (the per-row probe inside the HNSW and full-text scans). Both are checked against the
brute-force oracle of `test_access_rule` over random trees of restrictions, space grants and group memberships
(Hypothesis), on real Postgres. A page missing from an answer is lost recall; a page the oracle forbids is a
leak."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from psycopg import sql

from app.search import _VISIBLE
from tests.unit.test_access_rule import USERS, World, _store, principals_of, worlds


@pytest.fixture()
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


def _rows_table(conn: psycopg.Connection[tuple[object, ...]], pages: int) -> None:
    """One chunk-like row per page, plus one of a page without an access record ('orphan')."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS chunk_rows (metadata_ jsonb)")
    conn.execute("TRUNCATE chunk_rows")
    conn.execute(
        """INSERT INTO chunk_rows SELECT jsonb_build_object('ref_doc_id', p::text) FROM generate_series(0, %s) AS p
           UNION ALL SELECT '{"ref_doc_id": "orphan"}'::jsonb UNION ALL SELECT '{}'::jsonb""",
        (pages - 1,),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds())
def test_fast_forms_equal_oracle_on_random_trees(conn: psycopg.Connection[tuple[object, ...]], world: World) -> None:
    _store(conn, world)
    n = len(world.parents)
    _rows_table(conn, n)
    probe = sql.SQL("SELECT d.metadata_ ->> 'ref_doc_id' FROM chunk_rows AS d WHERE {visible}").format(
        visible=_VISIBLE.format(a=sql.Identifier("d"))
    )
    for user in USERS:
        expected = [str(p) for p in range(n) if world.oracle(user, p)]
        row = conn.execute(
            "SELECT cv_viewer_spaces(%(v)s), cv_viewer_blocked(%(v)s)", {"v": sorted(principals_of(world, user))}
        ).fetchone()
        assert row is not None
        spaces, blocked = row
        pages = conn.execute("SELECT page FROM cv_viewer_pages(%s, %s) AS v(page)", (spaces, blocked)).fetchall()
        assert sorted((str(p[0]) for p in pages), key=int) == expected, (user, world)
        rows = conn.execute(probe, {"spaces": spaces, "blocked": blocked}).fetchall()
        assert sorted((str(r[0]) for r in rows), key=int) == expected, (user, world)


def test_page_with_unread_path_or_without_access_record_is_in_neither(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Fail closed: a restriction on the path not established, or no access record at all. (Every path id has
    a restriction row: `app.access.save_page_access` inserts a not-established one for any it lacks.)"""
    conn.execute("INSERT INTO cv_space_access (space_key, principals) VALUES ('A', ARRAY['anyone'])")
    conn.execute(
        "INSERT INTO cv_page_access (page_id, space_key, path) VALUES"
        " ('0', 'A', ARRAY['0']), ('1', 'A', ARRAY['0', '1']), ('2', 'A', ARRAY['0', '1', '2'])"
    )
    # The paths' ids already have denying placeholders (the schema's trigger): answer them.
    conn.execute(
        "INSERT INTO cv_restrictions (content_id, restricted) VALUES ('0', false), ('1', NULL), ('2', false)"
        " ON CONFLICT (content_id) DO UPDATE SET restricted = EXCLUDED.restricted"
    )
    _rows_table(conn, 4)  # page '3' has rows but no access record
    viewer = ["anyone", "logged-in", "user:u0"]
    row = conn.execute("SELECT cv_viewer_spaces(%(v)s), cv_viewer_blocked(%(v)s)", {"v": viewer}).fetchone()
    assert row is not None
    args = {"spaces": row[0], "blocked": row[1]}
    pages = conn.execute("SELECT page FROM cv_viewer_pages(%(spaces)s, %(blocked)s) AS v(page)", args).fetchall()
    probe = sql.SQL("SELECT d.metadata_ ->> 'ref_doc_id' FROM chunk_rows AS d WHERE {visible}").format(
        visible=_VISIBLE.format(a=sql.Identifier("d"))
    )
    assert [p[0] for p in pages] == ["0"]
    assert [r[0] for r in conn.execute(probe, args).fetchall()] == ["0"]
