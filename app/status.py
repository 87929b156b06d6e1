"""What the index holds right now: pages by status, failures, chunks, queue depth, last reconciliation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.rows import dict_row

from app.access import unestablished
from app.attachments.index import skipped as skipped_attachments
from app.queue import PageJobRequest, defer_pages, in_deferral_transaction, queue_counts
from app.startup import data_location

if TYPE_CHECKING:
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
    #: Attachments of indexed pages that were not indexed, each with its reason (app/attachments/index.py).
    skipped_attachments: list[dict[str, Any]] = field(default_factory=list)
    #: Page jobs procrastinate ended `failed`, newest first: page, attempts, when, and the page's last error.
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)
    #: Where the data is (DATA_DIR or DATABASE_URL) and which `.env` files were read (app/startup.py).
    data: str = ""
    #: Access that could not be established, so hidden from everyone (fail closed): space keys and content
    #: ids with the error, never titles (app/access.py). Operator-level, like the rest of /status.
    access_not_established: dict[str, Any] = field(default_factory=dict)
    #: SEARCH_DATABASE_URL's standby: whether searches use it, why not, its lag (app/replica.py); None unset.
    search_standby: dict[str, Any] | None = None


#: The per-page fields of a `StatusReport`: ids, titles, errors, attachment file names.
PER_PAGE_FIELDS = ("failed", "retrying", "failed_jobs", "skipped_attachments", "access_not_established")


def without_page_details(report: StatusReport) -> dict[str, Any]:
    """`report` as `/status` shows it to a caller who is not an operator (`app.api_auth.is_operator`): the
    aggregate counts (pages by status, chunks, queue) stay; every per-page list is emptied and `details` says
    why. Those lists name pages any person may be unable to read (a restricted page's title in its error,
    its attachments' file names), and issue 12 says counts and errors never reveal a page the person cannot
    read, not even through /status. Operators read them with `OPERATOR_TOKEN` or the CLI `status`."""
    shown = dataclasses.asdict(report)
    for name in PER_PAGE_FIELDS:
        shown[name] = {} if isinstance(shown[name], dict) else []
    shown["details"] = "withheld: per-page entries need OPERATOR_TOKEN (or the CLI `status`)"
    return shown


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
        await cur.execute(
            """SELECT j.id AS job_id, j.args ->> 'page_id' AS page_id, j.attempts, p.last_error,
                      (SELECT max(e.at) FROM procrastinate_events AS e WHERE e.job_id = j.id)::text AS failed_at
               FROM procrastinate_jobs AS j LEFT JOIN cv_pages AS p ON p.page_id = j.args ->> 'page_id'
               WHERE j.status = 'failed'
                 -- a page job's failure stops mattering once its page moved on (indexed, removed, or queued
                 -- again by a follow-up or `retry-failed`): listing it would show a fixed page as broken
                 AND NOT (p.status IS NOT NULL AND p.status <> 'failed' AND p.updated_at >= COALESCE(
                     (SELECT max(e.at) FROM procrastinate_events AS e WHERE e.job_id = j.id), '-infinity'))
               ORDER BY j.id DESC LIMIT %s""",
            (limit,),
        )
        failed_jobs = list(await cur.fetchall())
        await cur.execute("SELECT value FROM cv_state WHERE key = 'reconcile'")
        reconcile_row = await cur.fetchone()
    queue = await queue_counts(rt.queue)
    skipped_files = await skipped_attachments(rt.pool, limit=max(limit, 1)) if limit else []
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
        failed_jobs=failed_jobs,
        data=data_location(rt.settings),
        skipped_attachments=skipped_files,
        access_not_established=await unestablished(rt.pool, limit=limit),
        search_standby=rt.search_db.report(),
    )


async def retry_failed(rt: Runtime) -> list[str]:
    """Queue a new job for every page marked `failed`, with its attempt count reset, so each gets
    JOB_MAX_ATTEMPTS fresh tries; the pages show as `pending` until their job runs. Returns their ids.

    Marking and deferring share one transaction (as backfill does), so a page is never `pending` without a
    job, nor queued while still shown as failed.
    """

    async def mark_and_defer(conn: Any) -> list[str]:
        cur = await conn.execute(
            """UPDATE cv_pages SET status = 'pending', attempts = 0, updated_at = now()
               WHERE status = 'failed' RETURNING page_id, content_type"""
        )
        rows = await cur.fetchall()
        await defer_pages(conn, [PageJobRequest(page_id, kind, "retry_failed") for page_id, kind in rows])
        return [page_id for page_id, _ in rows]

    return await in_deferral_transaction(rt.pool, mark_and_defer)
