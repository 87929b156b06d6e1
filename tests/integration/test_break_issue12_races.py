"""Issue 12 break attempt: races between writers of access records and the fast forms of the rule.

The fast forms that /search uses (`app.search._VISIBLE`, SQL `cv_viewer_pages`) only block a path id that HAS
a `cv_restrictions` row (`cv_viewer_blocked` lists rows); a path id without one is read as "no restriction".
`cv_may_read` fails closed on it instead. The schema's comment says the two are equal because
`app.access.save_page_access` inserts a not-established row for any path id it lacks. Several writers delete
restriction rows once "no stored path names them" (checked and deleted in separate statements under READ
COMMITTED): if a page job stores a child's path naming that id in between, the child ends with a path id
lacking a row, and the fast forms show it to everyone in its space, while `cv_may_read` still says no.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from psycopg import sql

from app.access import (
    PageAccess,
    Restriction,
    SpaceAccess,
    person_principals,
    save_page_access,
    save_restrictions,
    save_space,
)
from app.access_jobs import PageKey, forget_page_access, record_page_access
from app.search import _VISIBLE


async def _fast_and_slow(pool: Any, principals: frozenset[str], page: str) -> tuple[bool, bool, bool]:
    """(cv_viewer_pages says readable, _VISIBLE says readable, cv_may_read says readable) for `page`."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT cv_viewer_spaces(%(v)s), cv_viewer_blocked(%(v)s)", {"v": sorted(principals)})
        row = await cur.fetchone()
        assert row is not None
        args = {"spaces": row[0], "blocked": row[1], "page": page, "v": sorted(principals)}
        cur = await conn.execute(
            "SELECT %(page)s::text IN (SELECT p FROM cv_viewer_pages(%(spaces)s, %(blocked)s) AS v(p))", args
        )
        in_set = (await cur.fetchone() or (False,))[0]
        probe = sql.SQL(
            "SELECT {visible} FROM (SELECT jsonb_build_object('ref_doc_id', %(page)s::text) AS metadata_) AS d"
        )
        cur = await conn.execute(probe.format(visible=_VISIBLE.format(a=sql.Identifier("d"))), args)
        probed = (await cur.fetchone() or (False,))[0]
        cur = await conn.execute("SELECT cv_may_read(%(v)s::text[], %(page)s::text)", args)
        rule = (await cur.fetchone() or (False,))[0]
    return bool(in_set), bool(probed), bool(rule)


async def _done_or_waiting_on_lock(pool: Any, task: asyncio.Task[None], timeout: float = 10.0) -> None:
    """Poll until `task` finished or some backend waits on a lock (a row lock held by the caller)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
        if row is not None and row[0] > 0:
            return
        assert asyncio.get_running_loop().time() < deadline, "neither finished nor waiting on a lock"
        await asyncio.sleep(0.01)


async def test_forget_parent_while_child_path_is_written_keeps_child_hidden(pool: Any) -> None:
    """Parent P is restricted to the board; P leaves the index (Confluence answered 404, which it also does
    when P is restricted further) while its child C's page job stores C's path [P, C]. Interleaving: the
    child's transaction has stored its path (not yet committed) when `forget_page_access(P)` checks whether
    any stored path names P: none it can see, so it deletes P's restriction row; the child then commits."""
    eve = person_principals("eve", ["staff"])
    async with pool.connection() as conn:
        await save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        await save_restrictions(conn, [Restriction("P", True, frozenset({"group:board"})), Restriction("C", False)])
        await save_page_access(conn, PageAccess("P", "ENG", ("P",)))
    rt = SimpleNamespace(pool=pool)
    async with pool.connection() as child:
        async with child.transaction():
            await save_page_access(child, PageAccess("C", "ENG", ("P", "C")))
            forget = asyncio.create_task(forget_page_access(rt, "P"))  # type: ignore[arg-type]
            await _done_or_waiting_on_lock(pool, forget)  # before the fix it runs to the end here
        await asyncio.wait_for(forget, timeout=10)
    in_set, probed, rule = await _fast_and_slow(pool, eve, "C")
    assert rule is False  # the rule: P's restriction (or its absence) never admits eve
    assert (in_set, probed) == (False, False), "C under board-only P is shown to eve by the fast forms"


async def test_path_id_without_restriction_row_is_hidden_by_fast_forms(pool: Any) -> None:
    """The invariant the fast forms rely on, broken directly (any writer that deletes a restriction row a
    stored path still names, or a path written without `save_page_access`): the fast forms must fail closed
    as `cv_may_read` does."""
    eve = person_principals("eve", ["staff"])
    async with pool.connection() as conn:
        await save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        await save_restrictions(conn, [Restriction("C", False)])
        await save_page_access(conn, PageAccess("C", "ENG", ("P", "C")))
        await conn.execute("DELETE FROM cv_restrictions WHERE content_id = 'P'")  # skipped: a path names P
        # A path written by hand, without save_page_access: its new id gets a denying row all the same.
        await conn.execute("UPDATE cv_page_access SET path = ARRAY['Q', 'P', 'C'] WHERE page_id = 'C'")
        cur = await conn.execute("SELECT content_id, restricted FROM cv_restrictions WHERE content_id IN ('P', 'Q')")
        assert sorted(await cur.fetchall()) == [("P", None), ("Q", None)]
    assert await _fast_and_slow(pool, eve, "C") == (False, False, False)
    async with pool.connection() as conn:  # once no path names them, the rows can go
        await conn.execute("DELETE FROM cv_page_access WHERE page_id = 'C'")
        cur = await conn.execute("DELETE FROM cv_restrictions WHERE content_id IN ('P', 'Q') RETURNING content_id")
        assert len(await cur.fetchall()) == 2


class MovingConfluence:
    """Permission reads of a page that moves: `paths` is what Confluence answers now. The first path read is
    taken when it arrives and answered only once `release` is set (a slow re-check), so a later job overtakes it."""

    def __init__(self, paths: dict[str, tuple[str, ...]], restrictions: dict[str, Restriction]) -> None:
        self.paths = paths
        self.restrictions = restrictions
        self.path_calls = 0
        self.first_asked = asyncio.Event()
        self.release = asyncio.Event()

    async def path(self, page_id: str, content_type: str) -> tuple[str, ...]:
        self.path_calls += 1
        snapshot = self.paths[page_id]
        if self.path_calls == 1:
            self.first_asked.set()
            await self.release.wait()
        return snapshot

    async def restriction(self, content_id: str) -> Restriction:
        return self.restrictions[content_id]

    async def space_of(self, content_id: str, kind: str) -> str:
        return "ENG"  # the page moves within its space

    async def space_access(self, space_key: str) -> SpaceAccess:
        return SpaceAccess(space_key, frozenset({"group:staff"}))


async def test_slow_recheck_of_old_path_does_not_undo_a_move_under_a_restriction(pool: Any) -> None:
    """Page 7 sits under open page 3; a re-check reads its path ([3, 7]) slowly; meanwhile 7 is moved under
    board-only page 5 and its page job stores [5, 7]. The re-check's answer, read before the move, arrives last:
    it must not put back [3, 7] (`save_page_access` read_at), or eve reads 7 again."""
    eve = person_principals("eve", ["staff"])
    confluence = MovingConfluence(
        {"7": ("3", "7")},
        {
            "3": Restriction("3", False),
            "5": Restriction("5", True, frozenset({"group:board"})),
            "7": Restriction("7", False),
        },
    )
    rt = SimpleNamespace(pool=pool, permissions=confluence, settings=SimpleNamespace(permission_sync_interval=900))
    async with pool.connection() as conn:
        await save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        await save_restrictions(conn, list(confluence.restrictions.values()))
        await save_page_access(conn, PageAccess("7", "ENG", ("3", "7")))
    key = PageKey("7", "ENG", "page")
    stale = asyncio.create_task(record_page_access(rt, key))  # type: ignore[arg-type]
    await asyncio.wait_for(confluence.first_asked.wait(), timeout=10)
    confluence.paths["7"] = ("5", "7")  # moved under the board's page; its page job reads and stores that
    assert (await record_page_access(rt, key)).established  # type: ignore[arg-type]
    assert await _fast_and_slow(pool, eve, "7") == (False, False, False)
    confluence.release.set()
    await asyncio.wait_for(stale, timeout=10)
    assert await _fast_and_slow(pool, eve, "7") == (False, False, False)
