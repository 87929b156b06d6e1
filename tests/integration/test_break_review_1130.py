"""Break review 1130: content moved to another space keeps the old space's readers.

The rule (README "Permissions"; Atlassian "Space permissions" and "Page restrictions"): a person may read a page
only when they hold the view permission of the space the page is in NOW, and pass every restriction on its path.
Confluence lets a page (with its subtree), or a Cloud folder with the pages below it, be moved to another space;
the moved pages then answer to the new space's permissions.

The access record keeps, per indexed page, its space (`cv_page_access.space_key`), and only a page job (a fetch
of that very page) ever sets it from Confluence. Everything else that re-reads access (the folder job, the
descendants' rewrite after a move, the scheduled permission sync's path re-reads) carries the STORED space key
along, and reconciliation compares versions only (a move keeps the version). These tests move content from ENG
(readable by eve and alice) to SEC (readable by alice and sam) and check who may read what afterwards; the fake
Confluence's oracle (`FakePermissions.may_read`) says eve may not read anything that moved to SEC.

Findings (each test fails on the current code):

* a folder moved to another space: its pages stay readable (text, title, score) by the old space's readers,
  after the folder event, a permission sync and a reconciliation;
* a page moved to another space whose webhook was lost: stays readable by the old space's readers after the
  permission sync and reconciliation that README says make such moves converge;
* a top-level page moved, with its webhook, to another space's top level: its path is unchanged, so its
  descendants are never rewritten and stay readable by the old space's readers;
* a page moved to another space under the new space's home page: access follows, but the descendants' rows and
  `cv_pages` rows keep the old space (a `space` search misses them; MCP `list_spaces` names the old space to a
  person who may not read it).

Real Postgres, the fake Confluence (Cloud) and the fake Ollama over HTTP, the service's own pipeline, folder job,
permission sync and reconciliation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from app.access import may_read
from app.access_jobs import refresh_folder, sync_permissions
from app.pipeline import process_page
from app.runtime import Runtime
from app.search import SearchMode, search
from app.sync import reconcile
from tests.conftest import open_runtime
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_permissions import FakePermissions
from tests.fakes.ollama import FakeOllama

SECRET = "zanzibarquux"  # a word only the moved page holds


@pytest.fixture()
def fakes() -> Iterator[tuple[FakeConfluence, FakePermissions, FakeOllama]]:
    with FakeConfluence("cloud") as confluence, FakeOllama() as ollama:
        perms = FakePermissions.install(confluence)
        for user in ("eve", "alice", "sam"):
            confluence.add_user(user, user.title())
        confluence.add_space("ENG", "Engineering")
        confluence.add_space("SEC", "Security")
        perms.grant_space("ENG", users=["eve", "alice"])
        perms.grant_space("SEC", users=["alice", "sam"])
        yield confluence, perms, ollama


@pytest.fixture()
async def rt(db_url: str, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]) -> AsyncIterator[Runtime]:
    confluence, _, ollama = fakes
    async with open_runtime(
        database_url=db_url,
        confluence_base_url=confluence.base_url,
        ollama_base_url=ollama.base_url,
        permission_sync_interval=900,
        **confluence.credentials,
    ) as runtime:
        yield runtime


async def _principals(rt: Runtime, user: str) -> frozenset[str]:
    return (await rt.permissions.person(user, fresh=True)).principals


async def _hits(rt: Runtime, user: str, query: str = SECRET, space: str | None = None) -> dict[str, str]:
    hits = await search(
        rt.pool,
        rt.embedder,
        rt.settings.vector_table,
        query,
        k=10,
        space=space,
        mode=SearchMode.HYBRID,
        principals=await _principals(rt, user),
    )
    return {h.page_id: f"{h.space_key} | {h.title} | {h.text}" for h in hits}


async def _found(rt: Runtime, user: str, query: str = SECRET, space: str | None = None) -> set[str]:
    return set(await _hits(rt, user, query, space))


async def test_control_a_page_moved_across_spaces_with_its_webhook_follows_the_new_space(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """Covered ground (passes): the page job of a `page_moved` event reads the page's new space."""
    confluence, perms, _ = fakes
    confluence.put_page("8101", title="Rotation", body=f"<p>{SECRET} rotation notes</p>", space_key="ENG")
    assert (await process_page(rt, "8101")).action == "indexed"
    assert "8101" in await _found(rt, "eve")

    confluence.move_page("8101", space_key="SEC")
    await process_page(rt, "8101", "page", event="page_moved")
    assert perms.may_read("eve", "8101") is False and perms.may_read("alice", "8101") is True
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "8101")
    assert "8101" not in await _found(rt, "eve")
    assert "8101" in await _found(rt, "alice")


async def test_a_folder_moved_to_another_space_leaves_its_pages_readable_by_the_old_spaces_readers(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """A folder (Cloud) with a page below it moves from ENG to SEC; the folder event is delivered and handled
    (`refresh_folder`, what `avi:confluence:moved:folder` runs). The page is now in SEC: eve, who holds ENG but
    not SEC, may not read it in Confluence.

    Bug: `refresh_folder` rewrites the descendants' paths but gives them the space key it finds in their own
    stored record (`SELECT ..., space_key FROM cv_page_access WHERE path @> [folder]`), i.e. the OLD space: the
    folder's space is never read. The page keeps `space_key = ENG` in its access record, so eve still finds its
    text. Nothing repairs it later either: the scheduled permission sync re-reads paths with the stored space
    key (`_recheck_paths` builds `PageKey(page_id, a.space_key, ...)`), and reconciliation skips the page because
    a move does not change its version. The leak lasts until the page is next edited."""
    confluence, perms, _ = fakes
    confluence.add_container("8200", title="Incidents", space_key="ENG")
    confluence.put_page(
        "8201", title="Breach report", body=f"<p>{SECRET} breach details</p>", space_key="ENG", parent_id="8200"
    )
    assert (await process_page(rt, "8201")).action == "indexed"
    assert "8201" in await _found(rt, "eve")  # in ENG: eve may read it, and does

    confluence.move_page("8200", space_key="SEC")  # the folder and its page now live in SEC
    assert confluence.page("8201").space_key == "SEC"
    assert perms.may_read("eve", "8201") is False and perms.may_read("alice", "8201") is True

    await refresh_folder(rt, "8200")  # the folder-moved event's job
    await sync_permissions(rt)  # then a scheduled permission sync and a reconciliation: not a short window
    queued = await _run_reconciliation(rt)
    leaked = await _hits(rt, "eve")
    assert "8201" not in leaked, (
        f"after the folder moved to SEC (event handled, permission sync and reconciliation run, queued: {queued}),"
        f" eve (ENG only) finds: {leaked}"
    )
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "8201")


async def test_a_page_moved_to_another_space_without_a_webhook_never_converges(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """README "Permissions": "a scheduled sync re-reads every space and restriction ... plus up to 500 page
    paths per run ..., so a move no event reported converges"; and "Cloud does not retry failed webhooks: keep
    RECONCILE_INTERVAL on". A page is moved from ENG to SEC and its `page_moved` webhook is lost. Both
    safety nets then run: the permission sync (which re-reads this page's path) and reconciliation.

    Bug: neither notices the new space. The sync re-reads the path under the stored space key (ENG), and
    reconciliation compares versions only (a move keeps the version), so no page job is queued. eve (ENG only)
    keeps finding the page's text in SEC indefinitely."""
    confluence, perms, _ = fakes
    confluence.put_page("8301", title="Pentest plan", body=f"<p>{SECRET} pentest scope</p>", space_key="ENG")
    assert (await process_page(rt, "8301")).action == "indexed"
    assert await reconcile(rt) is not None  # a first reconciliation, so the next one works from a checkpoint
    assert "8301" in await _found(rt, "eve")

    confluence.move_page("8301", space_key="SEC")  # the page_moved webhook never arrives
    assert perms.may_read("eve", "8301") is False

    report = await sync_permissions(rt)
    assert report.paths >= 1  # the sync did re-read this page's path
    queued = await _run_reconciliation(rt)

    leaked = await _hits(rt, "eve")
    assert "8301" not in leaked, (
        f"after a permission sync and a reconciliation (queued: {queued}), eve (ENG only) still finds page "
        f"8301, which is now in SEC: {leaked}"
    )
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "8301")


async def test_a_page_moved_to_another_space_with_its_webhook_leaves_its_children_readable_by_the_old_space(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """A top-level page of ENG with a child is moved, subtree and all, to the top level of SEC (Confluence lets
    pages live at a space's top level, beside the home page). Its `page_moved` webhook arrives and its job runs.
    The page itself now answers to SEC (eve, ENG only, no longer finds it: that part holds). Its child moved
    with it and is in SEC too: eve may not read it in Confluence.

    Bug: `record_page_access` rewrites the descendants' access only when the page's PATH changed
    (`moved = written and previous is not None and tuple(previous) != path`). A top-level page moved to another
    space's top level keeps the path `(itself,)`, so the descendants keep `space_key = ENG` in
    `cv_page_access`, and eve finds the child's text. The permission sync does not repair it (it re-reads paths
    under the stored space key), nor does reconciliation (same version), so it lasts until the child is next
    edited. The design says descendants follow a move without being fetched ("When the path changed (a move),
    the stored paths of the page's descendants are rewritten to match"), so no job for the child is run here."""
    confluence, perms, _ = fakes
    confluence.put_page("8401", title="Audit", body="<p>audit parent overview</p>", space_key="ENG")
    confluence.put_page(
        "8402", title="Audit findings", body=f"<p>{SECRET} audit findings</p>", space_key="ENG", parent_id="8401"
    )
    for page_id in ("8401", "8402"):
        assert (await process_page(rt, page_id)).action == "indexed"
    await reconcile(rt)
    assert "8402" in await _found(rt, "eve")

    confluence.move_page("8401", space_key="SEC")  # the subtree moves; Confluence sends page_moved for 8401
    assert confluence.page("8402").space_key == "SEC"
    assert perms.may_read("eve", "8402") is False and perms.may_read("alice", "8402") is True
    await process_page(rt, "8401", "page", event="page_moved")
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "8401")  # the moved page itself: holds

    await sync_permissions(rt)
    queued = await _run_reconciliation(rt)
    leaked = await _hits(rt, "eve")
    assert "8402" not in leaked, (
        f"page 8401 moved to SEC with its child 8402 (webhook handled, permission sync and reconciliation run, "
        f"queued: {queued}); eve (ENG only) still finds: {leaked}"
    )


async def test_a_moved_pages_children_keep_the_old_space_in_their_rows_and_page_record(
    rt: Runtime, fakes: tuple[FakeConfluence, FakePermissions, FakeOllama]
) -> None:
    """Spaces with home pages (as on real Cloud sites), so a move to another space does change the path and the
    descendants' ACCESS follows (that part holds). A page with a child moves from under ENG's home page to under
    SEC's; the `page_moved` webhook arrives and is processed. No job runs for the child (by design, see above).

    Bug (a move that never reaches the index, silently): the child's rows and its `cv_pages` row keep
    `space_key = ENG`, with status `indexed` and no error; reconciliation does not queue it (same version).

    * `search(space="SEC")` as alice, who reads SEC, misses the child (README "Querying the table": "Everything
      a reader filters on (`space_key`, ...) stays in the row metadata"), and any hit shows the wrong space;
    * MCP `list_spaces` for sam, who may read SEC but NOT ENG, names ENG ("Engineering", a page count and a
      last-modified time) from a page that now lives in SEC: a space he cannot see in Confluence."""
    from app.mcp_server import indexed_spaces

    confluence, perms, _ = fakes
    confluence.add_space("ENG", homepage="Engineering home")
    confluence.add_space("SEC", homepage="Security home")
    sec_home = confluence._spaces["SEC"].homepage_id
    confluence.put_page("8501", title="Audit", body="<p>audit parent overview</p>", space_key="ENG")
    confluence.put_page(
        "8502", title="Audit findings", body=f"<p>{SECRET} audit findings</p>", space_key="ENG", parent_id="8501"
    )
    for page_id in ("8501", "8502"):
        assert (await process_page(rt, page_id)).action == "indexed"
    await reconcile(rt)

    confluence.move_page("8501", parent_id=sec_home)  # the subtree moves under SEC's home page
    assert confluence.page("8502").space_key == "SEC"
    await process_page(rt, "8501", "page", event="page_moved")
    queued = await _run_reconciliation(rt)

    # Access followed the move (this part holds):
    assert perms.may_read("alice", "8502") and not perms.may_read("eve", "8502")
    assert await may_read(rt.pool, await _principals(rt, "alice"), "8502")
    assert not await may_read(rt.pool, await _principals(rt, "eve"), "8502")

    sam_spaces = {s.space_key: s.name for s in await indexed_spaces(rt, await _principals(rt, "sam"))}
    in_sec = await _hits(rt, "alice", space="SEC")
    assert "8502" in in_sec and "ENG" not in sam_spaces, (
        f"child 8502 moved to SEC with its parent (queued afterwards: {queued}): alice's search in SEC finds "
        f"{in_sec}; sam (SEC only) is shown the spaces {sam_spaces}"
    )


async def _run_reconciliation(rt: Runtime) -> list[str]:
    """A reconciliation, then every page job it queued, run as the worker would; returns the pages queued."""
    await reconcile(rt)
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT args->>'page_id' FROM procrastinate_jobs WHERE status = 'todo' AND args ? 'page_id'"
        )
        queued = [str(r[0]) for r in await cur.fetchall()]
        await conn.execute("DELETE FROM procrastinate_jobs WHERE status = 'todo' AND args ? 'page_id'")
    for page_id in queued:
        await process_page(rt, page_id, event="reconcile")
    return queued
