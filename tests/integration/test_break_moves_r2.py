# ruff: noqa: F811  (the fixtures imported from test_break_moves_1130 are parameters here)
"""Break review, round 3 on cross-space moves: trying to break a310a02 and 6908ee7.

Rule (README "Permissions"; Atlassian "Space permissions overview", "Page restrictions", "Move and reorder
pages", "Use folders to organize your work"): a person may read a page only when they hold view permission on
the space the page is in NOW and pass every restriction on its path. Moving a page, or a Cloud folder, to
another space takes everything below it along; the moved pages then answer to the new space's permissions (and
are listed, filtered and linked under that space).

Setup as in test_break_moves_1130: ENG readable by eve and alice, SEC by alice and sam; eve may never read what
lives in SEC, sam never what lives in ENG. The fake's oracle (`FakePermissions.may_read`) is asserted beside
every check.

Real Postgres, the fake Confluence (Cloud) and the fake Ollama over HTTP, the service's own pipeline, folder
job and permission sync; page jobs the code queues are run as the worker would. Interleavings are forced with
events/hooks at points a real worker passes through, never with sleeps.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import pytest

from app import access, access_jobs
from app.access import may_read
from app.access_jobs import refresh_folder_access_job, sync_permissions
from app.pipeline import admit_page, index_page, process_page
from app.runtime import Runtime
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_permissions import FakePermissions
from tests.fakes.ollama import FakeOllama

# The same world and helpers as the first round (eve reads ENG, sam SEC, alice both; Cloud).
from tests.integration.test_break_moves_1130 import (  # noqa: F401  (fixtures are parameters here)
    SECRET,
    _access_row,
    _found,
    _hits,
    _principals,
    _run_queued_page_jobs,
    fakes,
    rt,
)


async def _row_spaces(rt: Runtime, page_id: str) -> tuple[str | None, set[str]]:
    """`cv_pages.space_key` and the distinct `space_key` of the page's vector rows."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute("SELECT space_key FROM cv_pages WHERE page_id = %s", (page_id,))
        row = await cur.fetchone()
        cur = await conn.execute(
            f"""SELECT DISTINCT metadata_ ->> 'space_key' FROM data_{rt.settings.vector_table}
                WHERE metadata_ ->> 'ref_doc_id' = %s""",
            (page_id,),
        )
        spaces = {str(r[0]) for r in await cur.fetchall()}
    return (str(row[0]) if row and row[0] is not None else None), spaces


async def _index_unrelated_older_page(rt: Runtime, confluence: FakeConfluence) -> None:
    """One page indexed before everything else: with PATH_RECHECKS_PER_SYNC lowered to 1 (a wiki larger than one
    sync's path budget, 500 by default), the sync's round-robin re-reads this page's path, the least recently
    read, and not the ones the test is about (as it would in a wiki of thousands of pages)."""
    confluence.put_page("7001", title="Lunch menu", body="<p>soup of the day</p>", space_key="ENG")
    assert (await process_page(rt, "7001")).action == "indexed"


# --- findings (fail on 6908ee7) ----------------------------------------------------------------------------


async def test_a_new_page_indexed_while_its_folder_moves_to_another_space_keeps_the_old_space(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leak (1). The 6908ee7 guard against "a child created while its parent moved" only looks at the
    ancestors' rows in `cv_page_access` (`SELECT space_key ... WHERE page_id = ANY(path[:-1]) FOR SHARE`). A
    Cloud folder is never indexed, so it has no such row: when the ancestor that moved is a folder (or any
    ancestor without an access record), the check finds nothing to compare and the page job stores the space
    from its fetch, which is older than the `read_started` date it is stored with.

    Page 7102 is created in folder 7100 (ENG). Its `page_created` job fetches it (space ENG). Before it records
    access, the folder is moved, with 7102, to SEC (Atlassian: moving a folder moves its contents; they take
    the destination space's permissions). The folder's `avi:confluence:moved:folder` event is delivered and its
    job (`refresh_folder_access`) runs meanwhile on another worker: 7102 has no row yet, so it has nothing to
    rewrite or re-queue. 7102's job then carries on (`admit_page`, `index_page`, as `process_page` does) and
    records 7102 as ENG, dated after the move. Every event was delivered and handled; eve (ENG only) reads the
    text of a page in SEC, and keeps doing so after a permission sync (whose path round-robin comes to the
    just-written 7102 last: PATH_RECHECKS_PER_SYNC lowered to 1 to stand for a wiki with more than 500 pages).
    """
    confluence, perms, _ = fakes
    await _index_unrelated_older_page(rt, confluence)
    confluence.add_container("7100", title="Incidents", space_key="ENG")
    confluence.put_page("7101", title="Incident index", body="<p>incident index</p>", space_key="ENG", parent_id="7100")
    assert (await process_page(rt, "7101")).action == "indexed"  # an indexed sibling: the folder job has work
    confluence.put_page(
        "7102", title="Incident report", body=f"<p>{SECRET} incident report</p>", space_key="ENG", parent_id="7100"
    )
    fetched = await rt.confluence.get_page("7102", None)  # 7102's page_created job has fetched it
    assert fetched.space_key == "ENG"

    confluence.move_page("7100", space_key="SEC")  # the folder moves with its pages
    result = await refresh_folder_access_job(rt, "7100")  # its event, handled meanwhile by another worker
    assert result["established"] is True
    assert await _access_row(rt, "7101") == ("SEC", ["7100", "7101"])  # the sibling followed: the move was seen

    assert await admit_page(rt, fetched) is None  # 7102's job carries on: access, then rows
    await index_page(rt, fetched)
    ran = await _run_queued_page_jobs(rt)
    monkeypatch.setattr(access_jobs, "PATH_RECHECKS_PER_SYNC", 1)
    await sync_permissions(rt)
    ran += await _run_queued_page_jobs(rt)

    assert perms.may_read("eve", "7102") is False and perms.may_read("alice", "7102") is True
    leaked = await _hits(rt, "eve")
    assert "7102" not in leaked, (
        f"7102 moved to SEC with its folder (folder event handled, jobs run afterwards: {ran}, then a permission "
        f"sync); stored access {await _access_row(rt, '7102')}; eve (ENG only) finds: {leaked}"
    )
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "7102")


async def test_a_page_whose_space_was_read_again_keeps_the_fetched_old_space_in_its_rows(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hidden from rightful readers (2) / wrong space shown. The 6908ee7 fix itself: when the ancestor check
    fails, `record_page_access` reads the page's space again (SEC) and stores ACCESS under SEC, but the page job
    then writes the page's rows (`index_page`) from the same fetched `Page`, whose `space_key` (and url,
    breadcrumb) still say ENG, and `_requeue_moved_rows(..., include_root=False)` skips the page itself ("its
    rows are being rewritten already": with the OLD space). Nothing queues another job for it.

    Page 7202 is created under 7201 (ENG); its job fetches it; 7201 moves with its subtree to SEC and the
    move's job runs; 7202's job carries on. Access is right (eve cannot read it: holds). But its rows say ENG: a
    search limited to SEC (REST `space`, MCP `spaces`) by sam or alice, who may read it, misses it; it is listed
    under ENG, linked under /spaces/ENG/, and MCP `list_spaces` counts it in ENG. A permission sync does not
    repair it (its path round-robin reaches the just-written page last: PATH_RECHECKS_PER_SYNC lowered to 1 to
    stand for a wiki with more than 500 pages). Atlassian: after a move the page belongs to the new space."""
    confluence, perms, _ = fakes
    await _index_unrelated_older_page(rt, confluence)
    confluence.put_page("7201", title="Audit parent", body="<p>audit overview</p>", space_key="ENG")
    assert (await process_page(rt, "7201")).action == "indexed"
    confluence.put_page(
        "7202", title="Audit child", body=f"<p>{SECRET} audit child</p>", space_key="ENG", parent_id="7201"
    )
    fetched = await rt.confluence.get_page("7202", None)  # 7202's page_created job has fetched it
    assert fetched.space_key == "ENG"

    confluence.move_page("7201", space_key="SEC")
    await process_page(rt, "7201", "page", event="page_moved")  # handled meanwhile by another worker

    assert await admit_page(rt, fetched) is None  # 7202's job carries on (the space is read again here)
    await index_page(rt, fetched)
    ran = await _run_queued_page_jobs(rt)
    monkeypatch.setattr(access_jobs, "PATH_RECHECKS_PER_SYNC", 1)
    await sync_permissions(rt)
    ran += await _run_queued_page_jobs(rt)

    assert perms.may_read("sam", "7202") is True and perms.may_read("eve", "7202") is False
    assert await _access_row(rt, "7202") == ("SEC", ["7201", "7202"])  # access: right (holds)
    assert "7202" not in await _found(rt, "eve")  # holds
    in_sec = await _hits(rt, "sam", space="SEC")
    assert "7202" in in_sec, (
        f"7202 is in SEC (access stored as SEC; jobs run: {ran}, then a permission sync), but its rows "
        f"(cv_pages, vector rows) say {await _row_spaces(rt, '7202')}: sam's search limited to SEC finds {in_sec}; "
        f"unfiltered he sees {await _hits(rt, 'sam')}"
    )


async def test_a_parent_and_a_child_page_job_writing_at_once_deadlock_and_the_parents_job_fails(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """Deadlock (3), new in 6908ee7, and it fails the page job. A page job now takes FOR SHARE locks on its
    ancestors' `cv_page_access` rows FIRST, then the `cv_restrictions` rows of its whole path
    (`save_restrictions`, and `save_page_access`'s `ON CONFLICT DO UPDATE ... WHERE false`, which locks every
    conflicting row). The parent's job takes the same two in the opposite order: its own `cv_restrictions` row
    (always re-read and upserted), then its own `cv_page_access` row (the upsert needs it exclusively, so it
    waits for the child's FOR SHARE). Each holds what the other waits for: Postgres aborts one after
    `deadlock_timeout` (1 s). Before 6908ee7 both jobs locked restriction rows first: no cycle.

    `in_deferral_transaction` documents that a "deadlock or serialization victim" is retried at once (tenacity,
    `psycopg.errors.TransactionRollback`). It is not: in psycopg 3 `DeadlockDetected` (40P01) and
    `SerializationFailure` (40001) subclass `OperationalError` directly, not `TransactionRollback` (which is only
    SQLSTATE 40000), so `_in_transaction` turns the deadlock into `DatabaseUnavailable("cannot store the jobs:
    deadlock detected")`. The page job fails: `cv_pages.attempts` counted, "page job failed" logged, `status`
    shows a Postgres outage that never happened, and the edit waits for a backoff retry (12 such attempts and
    the page is `failed`, left to reconciliation). No move is needed: any parent's and child's jobs overlapping
    in their write (a backfill, a reindex, a subtree edited at once) collide, and the space home page, the
    parent of every top-level page, is the usual victim (it waits first).

    Forced interleaving (events, no sleeps): the child's write is held right after its FOR SHARE (at
    `_stored_access`, its next statement) until the parent's write has upserted its own restriction row; from
    there both go on by themselves, and whichever order they take, the cycle closes."""
    confluence, _, _ = fakes
    confluence.put_page("7301", title="Runbook parent", body="<p>parent runbook</p>", space_key="ENG")
    confluence.put_page(
        "7302", title="Runbook child", body=f"<p>{SECRET} child runbook</p>", space_key="ENG", parent_id="7301"
    )
    for page_id in ("7301", "7302"):
        assert (await process_page(rt, page_id)).action == "indexed"
    confluence.put_page("7301", title="Runbook parent", body="<p>parent runbook, edited</p>", space_key="ENG")
    confluence.put_page(
        "7302",
        title="Runbook child",
        body=f"<p>{SECRET} child runbook, edited</p>",
        space_key="ENG",
        parent_id="7301",
    )

    child_locked, release_child = asyncio.Event(), asyncio.Event()
    stored_access = access_jobs._stored_access
    held = False

    async def holding_stored_access(conn: Any, page_id: str) -> Any:
        nonlocal held
        if page_id == "7302" and not held:  # the child's write, its ancestors' rows just locked FOR SHARE
            held = True
            child_locked.set()
            await release_child.wait()
        return await stored_access(conn, page_id)

    parent_locked = asyncio.Event()
    save_restrictions = access.save_restrictions

    async def signalling_save_restrictions(conn: Any, restrictions: Any) -> None:
        await save_restrictions(conn, restrictions)
        if any(r.content_id == "7301" for r in restrictions):  # the parent's write holds its restriction row
            parent_locked.set()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(access_jobs, "_stored_access", holding_stored_access)
        mp.setattr(access, "save_restrictions", signalling_save_restrictions)
        child = asyncio.create_task(process_page(rt, "7302", "page", event="page_updated"))
        parent: asyncio.Task[Any] | None = None
        try:
            await asyncio.wait_for(child_locked.wait(), 30)
            parent = asyncio.create_task(process_page(rt, "7301", "page", event="page_updated"))
            # The parent's write either got its restriction row (the old lock order: the cycle) or queues behind
            # the child on a lock (since the fix every writer locks its path's restriction rows first, sorted).
            deadline = asyncio.get_running_loop().time() + 30
            while not parent_locked.is_set():
                async with rt.pool.connection() as conn:
                    row = await (
                        await conn.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock'"
                        )
                    ).fetchone()
                if row and row[0]:
                    break
                assert asyncio.get_running_loop().time() < deadline, "the parent's write neither locked nor waited"
                await asyncio.sleep(0.05)
        finally:
            release_child.set()
            outcomes = await asyncio.wait_for(
                asyncio.gather(child, *([parent] if parent else []), return_exceptions=True), 60
            )

    failures = ["".join(traceback.format_exception(o)) for o in outcomes if isinstance(o, BaseException)]
    assert not failures, (
        "the parent's page job failed instead of its write being retried (a deadlock with its child's job):\n"
        + "\n".join(failures)
    )


# --- performance ------------------------------------------------------------------------------------------


async def test_an_edit_that_moves_nothing_runs_no_subtree_statement(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Performance. 6908ee7 ran `_rewrite_descendant_paths` (an UPDATE) and `_requeue_moved_rows` (a SELECT) in
    every page job's access transaction. A reviewer measured them at 20,000 indexed pages, every path starting
    at the home page: Postgres plans a sequential scan of `cv_page_access` for a leaf page (the `path @>
    ARRAY[...]` estimate is the default 0.5%, so the GIN bitmap never looks cheaper): ~10 ms per job, growing
    with the wiki. Now they run only when the page's path or space changed, or its first record is written
    (pages below it may already be indexed): an edit that moves nothing, the common job, runs neither."""
    calls: list[str] = []
    rewrite, requeue = access_jobs._rewrite_descendant_paths, access_jobs._requeue_moved_rows

    async def counting_rewrite(*args: Any, **kwargs: Any) -> Any:
        calls.append("rewrite")
        return await rewrite(*args, **kwargs)

    async def counting_requeue(*args: Any, **kwargs: Any) -> Any:
        calls.append("requeue")
        return await requeue(*args, **kwargs)

    monkeypatch.setattr(access_jobs, "_rewrite_descendant_paths", counting_rewrite)
    monkeypatch.setattr(access_jobs, "_requeue_moved_rows", counting_requeue)
    confluence, _, _ = fakes
    confluence.put_page("7401", title="Edited often", body="<p>first text</p>", space_key="ENG")
    assert (await process_page(rt, "7401")).action == "indexed"
    assert calls == ["rewrite", "requeue"]  # the first record: pages below it may be indexed already
    calls.clear()
    confluence.put_page("7401", title="Edited often", body="<p>second text</p>", space_key="ENG")
    assert (await process_page(rt, "7401", "page", event="page_updated")).action == "indexed"
    assert calls == []
    confluence.move_page("7401", space_key="SEC")
    await process_page(rt, "7401", "page", event="page_moved")
    assert calls == ["rewrite", "requeue"]
