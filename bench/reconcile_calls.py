"""Confluence calls per reconciliation interval as the wiki grows: 5,000 vs 20,000 held pages.

Reconciliation must cost what changed, not what exists (issue 10, part 6). Each size gets a fake Cloud site
(serving 250 results per v2 response, as Cloud does) whose pages were all modified long before the last
checkpoint and are all held as indexed, then one interval's worth of changes: 10 edits, 3 pages trashed and 1
purged without a webhook. We count, with the fake's own request counter, the calls of one reconciliation
(`app.sync.reconcile`), of a second one with nothing changed, and of the previous design's existence check of
every held page (its `existing_ids` over all held ids in batches of 200, plus the same changed-content CQL),
which is what the rotating slice replaced.

    python -m bench reconcile_calls
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from bench.common import fresh_database, machine, postgres, show
from tests.conftest import make_settings
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

SIZES = (5_000, 20_000)
EDITS, TRASHED, PURGED = 10, 3, 1
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)
OLD_BATCH = 200  # the previous design's keyset batch of held ids


async def _measure(db_url: str, n: int) -> dict[str, int]:
    """Calls of: a reconciliation after one interval's changes, one after none, and the previous design."""
    from app.runtime import Runtime
    from app.sync import reconcile, set_state

    with FakeConfluence("cloud") as confluence, FakeOllama() as ollama:
        confluence.max_limit = 250
        ids = [str(1_000_000 + i) for i in range(n)]
        for page_id in ids:
            confluence.put_page(page_id, title=f"Page {page_id}", body="<p/>", last_modified=LONG_AGO)
        settings = make_settings(
            database_url=db_url,
            confluence_base_url=confluence.base_url,
            ollama_base_url=ollama.base_url,
            **confluence.credentials,
        )
        rt = await Runtime.open(settings)
        try:
            async with rt.pool.connection() as conn:
                await conn.execute(
                    """INSERT INTO cv_pages (page_id, content_type, status, version, chunk_count)
                       SELECT unnest(%s::text[]), 'page', 'indexed', 1, 2""",
                    (ids,),
                )
            checkpoint = (datetime.now(UTC) - timedelta(minutes=15)).isoformat()
            await set_state(rt, "reconcile", {"checkpoint": checkpoint, "finished_at": checkpoint})
            step = n // (EDITS + TRASHED + PURGED + 1)
            changed = ids[step::step]
            for page_id in changed[:EDITS]:
                confluence.put_page(page_id, title="Edited", body="<p>new</p>")
            for page_id in changed[EDITS : EDITS + TRASHED]:
                confluence.set_status(page_id, "trashed")
            for page_id in changed[EDITS + TRASHED : EDITS + TRASHED + PURGED]:
                confluence.delete_page(page_id)

            confluence.reset_counters()
            report = await reconcile(rt)
            with_changes = confluence.count()
            found = report.queued_modified + report.queued_gone + report.queued_vanished

            confluence.reset_counters()
            await reconcile(rt)
            quiet = confluence.count()

            confluence.reset_counters()
            since = datetime.now(UTC) - timedelta(minutes=20)
            _ = [ref async for ref in rt.confluence.iter_pages(None, since=since)]
            for start in range(0, n, OLD_BATCH):
                await rt.confluence.existing_ids(ids[start : start + OLD_BATCH])
            previous = confluence.count()
        finally:
            await rt.close()
    return {"with_changes": with_changes, "quiet": quiet, "previous": previous, "found": found}


def main() -> str:
    started = time.monotonic()
    results: dict[int, dict[str, int]] = {}
    with postgres() as server:
        for n in SIZES:
            results[n] = asyncio.run(_measure(fresh_database(server, f"b_reconcile_{n}"), n))
    small, large = results[SIZES[0]], results[SIZES[-1]]
    rows = [
        [f"{n:,}", str(r["with_changes"]), str(r["quiet"]), str(r["previous"]), str(r["found"])]
        for n, r in results.items()
    ]
    rows.append(
        [
            f"ratio {SIZES[-1]:,} / {SIZES[0]:,}",
            f"{large['with_changes'] / small['with_changes']:.2f}",
            f"{large['quiet'] / small['quiet']:.2f}",
            f"{large['previous'] / small['previous']:.2f}",
            "",
        ]
    )
    note = (
        f"{machine()}; fake Cloud serving 250 results per v2 response; one interval's changes: {EDITS} edits, "
        f"{TRASHED} trashed, {PURGED} purged without a webhook (found = jobs queued for them; the purge is found "
        "when the rotating existence slice reaches it). 'previous' is the design this replaced: an existence "
        f"check of every held page each interval. {time.monotonic() - started:.0f} s."
    )
    return show(
        "Reconciliation: Confluence calls per interval",
        ["held pages", "calls, interval with changes", "calls, quiet interval", "calls, previous design", "found"],
        rows,
        note,
    )


if __name__ == "__main__":
    main()
