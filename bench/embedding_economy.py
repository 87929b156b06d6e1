"""Embedding economy: inputs sent to Ollama by our pipeline vs a naive one that re-embeds every chunk.

Runs the real pipeline in process (`app.runtime.Runtime` + `app.pipeline.process_page`) against the fake
Confluence and the fake Ollama on loopback and a throwaway embedded Postgres; the fake Ollama counts the inputs
it embeds. The naive count is the number of chunks of the page(s) after the change, computed independently
with `app.chunking.chunk_page` on the page as Confluence serves it: a pipeline without content-derived chunk
ids and a stored-state diff embeds all of them on every event.

Chunking uses the service defaults (CHUNK_SIZE=512, CHUNK_OVERLAP=64), so an edit can also touch the chunk
that overlaps it. A title rename is listed too: the title is part of every chunk's embedded text (it helps
retrieval), so a rename re-embeds the whole page by design.

Beside embedding inputs it counts the vector rows each event writes (inserted / updated / deleted, from the rows'
`xmin`): an edit should write the rows of the chunks it changed and nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import fresh_database, machine, postgres, show

N_PAGES = 100


def page_body(sections: int, paragraphs: int, *, seed: str = "", edit: tuple[int, int] | None = None) -> str:
    """Storage XHTML: distinct paragraphs under h2 headings; `edit=(s, p)` rewrites one paragraph."""
    parts = []
    for s in range(sections):
        parts.append(f"<h2>Section {s} {seed}</h2>")
        for p in range(paragraphs):
            text = (
                f"Paragraph {p} of section {s} {seed}: the deploy pipeline runs canary checks, then promotes "
                f"the build to region {s}-{p} once the error budget allows it, and pages the on-call "
                f"engineer if latency in region {s}-{p} regresses."
            )
            if edit == (s, p):
                text = f"Edited paragraph {p} of section {s}: rollbacks now need two approvals and a ticket."
            parts.append(f"<p>{text}</p>")
    return "".join(parts)


BIG = (12, 12)  # sections × paragraphs: 38 chunks (about 3 per section) at the default chunk size


async def _naive(rt: Any, page_ids: list[str]) -> int:
    """Chunks of the pages as they are now: what re-embedding everything costs."""
    from app.chunking import chunk_page
    from app.convert import storage_to_markdown, user_refs

    total = 0
    s = rt.settings
    for page_id in page_ids:
        page = await rt.confluence.get_page(page_id)
        users = await rt.confluence.resolve_users(user_refs(page.body_storage))
        markdown = storage_to_markdown(page.body_storage, users=users, title=page.title)
        total += len(
            chunk_page(
                page, markdown, chunk_size=s.chunk_size, chunk_overlap=s.chunk_overlap, max_tokens=s.embed_max_tokens
            )
        )
    return total


async def _row_versions(rt: Any, page_ids: list[str]) -> dict[str, int]:
    """node_id -> xmin of the live row version for the pages: any UPDATE (metadata only too) gives a new xmin."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT node_id, xmin::text::bigint FROM {rt.settings.physical_table} "
            "WHERE metadata_ ->> 'ref_doc_id' = ANY(%s)",
            (page_ids,),
        )
        return {row[0]: int(row[1]) for row in await cur.fetchall()}


def _rows_written(before: dict[str, int], after: dict[str, int]) -> tuple[int, int, int]:
    """Vector rows (inserted, updated, deleted) between two snapshots."""
    updated = sum(1 for node, xmin in after.items() if node in before and before[node] != xmin)
    return len(after.keys() - before.keys()), updated, len(before.keys() - after.keys())


async def run(url: str) -> list[list[str]]:
    from app.pipeline import process_page
    from app.runtime import Runtime
    from tests.conftest import make_settings
    from tests.fakes.confluence import FakeConfluence
    from tests.fakes.ollama import FakeOllama

    confluence = FakeConfluence("cloud").start()
    ollama = FakeOllama(dim=1024).start()
    confluence.add_space("ENG", "Engineering")
    confluence.add_space("OPS", "Operations")
    rows: list[list[str]] = []
    settings = make_settings(
        database_url=url,
        confluence_base_url=confluence.base_url,
        ollama_base_url=ollama.base_url,
        chunk_size=512,
        chunk_overlap=64,
        **confluence.credentials,
    )
    rt = await Runtime.open(settings)

    async def measure(name: str, page_ids: list[str]) -> None:
        ollama.reset()
        before = await _row_versions(rt, page_ids)
        for page_id in page_ids:
            await process_page(rt, page_id)
        written = _rows_written(before, await _row_versions(rt, page_ids))
        ours = ollama.inputs
        naive = await _naive(rt, page_ids)
        saved = 1 - ours / naive if naive else 0.0
        rows.append([name, str(naive), str(ours), f"{saved:.1%}", "/".join(map(str, written)), str(len(before))])

    try:
        ids = confluence.bulk_pages("ENG", N_PAGES, lambda i: page_body(3 + i % 5, 4))
        for page_id in ids:
            await process_page(rt, page_id)
        await measure(f"(a) re-delivery of {N_PAGES} unchanged pages", ids)

        big = "900001"
        confluence.put_page(big, title="Deploy runbook", body=page_body(*BIG), space_key="ENG")
        await measure("first index of the ~40-chunk page (both embed all)", [big])
        middle = (BIG[0] // 2, BIG[1] // 2)
        confluence.put_page(big, title="Deploy runbook", body=page_body(*BIG, edit=middle), space_key="ENG")
        await measure("(b) one-paragraph edit in the ~40-chunk page", [big])
        confluence.put_page(
            big, title="Deploy runbook", body=page_body(*BIG, edit=middle), space_key="ENG", author_id="acc-2"
        )
        await measure("(b') new version, same text, another editor", [big])
        await measure("(b'') no-op: the same version delivered again", [big])
        confluence.move_page(big, space_key="OPS")
        await measure("(c) page moved to another space", [big])
        parent = "900002"
        confluence.put_page(parent, title="Runbooks", body=page_body(1, 1), space_key="OPS")
        confluence.move_page(big, parent_id=parent)
        await measure("(c') page moved under a new parent (breadcrumb changes)", [big])
        confluence.put_page(
            big, title="Deploy runbook v2", body=page_body(*BIG, edit=middle), space_key="OPS", parent_id=parent
        )
        await measure("title rename (title is embedded: all re-embedded by design)", [big])
    finally:
        await rt.close()
        confluence.stop()
        ollama.stop()
    return rows


def main() -> str:
    with postgres() as server:
        rows = asyncio.run(run(fresh_database(server, "b_economy")))
    return show(
        "Embedding economy: inputs embedded per event, ours vs re-embed-everything",
        ["event", "naive inputs (= chunks)", "ours", "saved", "rows ins/upd/del", "rows before"],
        rows,
        note=(
            f"{machine()}. Real pipeline in process against fake Confluence/Ollama; counts from the fake Ollama. "
            "CHUNK_SIZE=512, CHUNK_OVERLAP=64 (service defaults). Unchanged pages cost a fetch and no embedding; "
            "a move refreshes the rows' metadata in place. Rows inserted/updated/deleted in the vector table per "
            "event, from each row's xmin before and after (an UPDATE, metadata only too, writes a new row version "
            "and HNSW entry); per-version fields (version, last_modified, author) live in cv_pages, not the rows."
        ),
    )


if __name__ == "__main__":
    main()
