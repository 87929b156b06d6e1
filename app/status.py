"""What the index holds right now: pages by status, failures, chunks, queue depth, last reconciliation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from app.queue import queue_counts
from app.runtime import Runtime


@dataclass
class StatusReport:
    pages: dict[str, int]
    chunks: int
    queue: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)
    retrying: list[dict[str, Any]] = field(default_factory=list)
    last_reconcile: dict[str, Any] | None = None
    embed_model: str = ""
    table: str = ""


async def status_report(rt: Runtime, *, limit: int = 20) -> StatusReport:
    async with rt.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT status, count(*) AS n FROM cv_pages GROUP BY status")
        pages = {row["status"]: int(row["n"]) for row in await cur.fetchall()}
        await cur.execute(sql.SQL("SELECT count(*) AS n FROM {t}").format(t=sql.Identifier(rt.settings.physical_table)))
        chunks_row = await cur.fetchone()
        await cur.execute(
            """SELECT page_id, title, last_error, attempts, updated_at::text AS updated_at FROM cv_pages
               WHERE status = 'failed' ORDER BY updated_at DESC LIMIT %s""",
            (limit,),
        )
        failed = list(await cur.fetchall())
        await cur.execute(
            """SELECT page_id, title, last_error, attempts, updated_at::text AS updated_at FROM cv_pages
               WHERE status <> 'failed' AND last_error IS NOT NULL ORDER BY updated_at DESC LIMIT %s""",
            (limit,),
        )
        retrying = list(await cur.fetchall())
        await cur.execute("SELECT value FROM cv_state WHERE key = 'reconcile'")
        reconcile_row = await cur.fetchone()
    queue = await queue_counts(rt.queue)
    for status, n in queue.items():
        rt.metrics.queue_depth.labels(status).set(n)
    for status, n in pages.items():
        rt.metrics.pages.labels(status).set(n)
    return StatusReport(
        pages=pages,
        chunks=int(chunks_row["n"]) if chunks_row else 0,
        queue=queue,
        failed=failed,
        retrying=retrying,
        last_reconcile=reconcile_row["value"] if reconcile_row else None,
        embed_model=f"{rt.settings.embed_model} ({rt.settings.embed_dim})",
        table=rt.settings.physical_table,
    )
