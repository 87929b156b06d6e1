"""Backfill and reconciliation: the index converges on the wiki even when webhooks do not arrive.

Both feed the same queue and pipeline as webhooks, so a page is processed one way only. Enumeration is
streamed (bounded memory whatever the space size), and a page whose listed version we already hold is not even
enqueued, so re-running a sync over an unchanged space costs listing calls only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.comments import pages_with_changed_children
from app.errors import ServiceFault
from app.models import PageRef
from app.queue import (
    EnqueueOutcome,
    PageJobRequest,
    defer_pages,
    enqueue_pages,
    in_deferral_transaction,
    refresh_queue_statistics,
)
from app.vector_store import WORKER_LOST_ERROR, VectorStore

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

_BATCH = 200


@dataclass
class BackfillReport:
    seen: int = 0
    queued: int = 0
    skipped_unchanged: int = 0
    seconds: float = 0.0


@dataclass
class ReconcileReport:
    since: str | None = None
    modified_seen: int = 0
    queued_modified: int = 0
    gone_seen: int = 0
    queued_gone: int = 0
    queued_children: int = 0
    failed_rechecked: int = 0
    held_checked: int = 0
    queued_vanished: int = 0
    seconds: float = 0.0
    finished_at: str = ""


# --- small state store ------------------------------------------------------------------------------------
async def get_state(rt: Runtime, key: str) -> dict[str, Any] | None:
    async with rt.pool.connection() as conn:
        row = await (await conn.execute("SELECT value FROM cv_state WHERE key = %s", (key,))).fetchone()
    return row[0] if row else None


async def set_state(rt: Runtime, key: str, value: dict[str, Any] | None) -> None:
    async with rt.pool.connection() as conn:
        if value is None:
            await conn.execute("DELETE FROM cv_state WHERE key = %s", (key,))
        else:
            await conn.execute(
                """INSERT INTO cv_state (key, value) VALUES (%s, %s::jsonb)
                   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
                (key, json.dumps(value)),
            )


async def _held_versions(rt: Runtime, ids: Sequence[str]) -> dict[str, int]:
    """Versions we hold as indexed, for a batch of ids (one query per batch, not per page)."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT page_id, version FROM cv_pages WHERE page_id = ANY(%s) AND status = 'indexed'",
            (list(ids),),
        )
        return {row[0]: int(row[1]) for row in await cur.fetchall() if row[1] is not None}


async def _enqueue_changed(rt: Runtime, refs: list[PageRef], *, event: str, force: bool = False) -> tuple[int, int]:
    """Enqueue the refs whose version differs from what we hold. Returns (queued, skipped)."""
    held = {} if force else await _held_versions(rt, [r.id for r in refs])
    changed = [ref for ref in refs if ref.version is None or held.get(ref.id) != ref.version]

    async def mark_and_defer(conn: AsyncConnection[Any]) -> list[EnqueueOutcome]:
        await VectorStore.mark_pending(conn, [(ref.id, ref.content_type) for ref in changed])
        return await defer_pages(conn, [PageJobRequest(ref.id, ref.content_type, event) for ref in changed])

    outcomes = await in_deferral_transaction(rt.pool, mark_and_defer) if changed else []
    return outcomes.count("queued"), len(refs) - len(changed)


async def _batches(refs: AsyncIterator[PageRef], size: int = _BATCH) -> AsyncIterator[list[PageRef]]:
    batch: list[PageRef] = []
    async for ref in refs:
        batch.append(ref)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- backfill ----------------------------------------------------------------------------------------------
async def backfill(
    rt: Runtime,
    space_keys: Sequence[str] | None,
    console: Console | None = None,
    *,
    restart: bool = False,
    force: bool = False,
) -> BackfillReport:
    """Enqueue every page and blog post of `space_keys` (None: all spaces), resumably.

    Progress is saved per space after each batch; an interrupted run resumes at the space and position it
    reached, skipping (without enqueueing) what it had already passed.
    """
    started = time.monotonic()
    keys = list(space_keys) if space_keys else await rt.confluence.list_space_keys()
    state_key = "backfill:" + (",".join(sorted(keys)) if space_keys else "*")
    saved = None if restart else await get_state(rt, state_key)
    done_spaces: list[str] = list(saved.get("done", [])) if saved else []
    resume_space, resume_at = (saved.get("space"), int(saved.get("position", 0))) if saved else (None, 0)
    report = BackfillReport()
    total = await _count(rt, keys)
    analyzed_at = 100  # queued jobs at the last ANALYZE of the jobs table (see refresh_queue_statistics)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f} pages/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=console is None,
        transient=False,
    )
    with progress:
        task = progress.add_task("sync", total=total, rate=0.0)
        for key in keys:
            if key in done_spaces:
                continue
            skip = resume_at if key == resume_space else 0
            position = 0
            async for batch in _batches(rt.confluence.iter_pages([key])):
                if position + len(batch) <= skip:
                    position += len(batch)
                    progress.advance(task, len(batch))
                    continue
                queued, skipped = await _enqueue_changed(rt, batch, event="backfill", force=force)
                if queued and report.queued + queued >= analyzed_at * 2:  # at 200, 400, 800... queued jobs
                    await refresh_queue_statistics(rt.pool)
                    analyzed_at = report.queued + queued
                report.queued += queued
                report.skipped_unchanged += skipped
                report.seen += len(batch)
                position += len(batch)
                await set_state(rt, state_key, {"done": done_spaces, "space": key, "position": position})
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(task, advance=len(batch), description=f"sync {key}", rate=report.seen / elapsed)
            done_spaces.append(key)
            await set_state(rt, state_key, {"done": done_spaces, "space": None, "position": 0})
    await set_state(rt, state_key, None)  # complete: the next run starts fresh
    report.seconds = time.monotonic() - started
    log.info("backfill done", extra={"spaces": ",".join(keys), **report.__dict__})
    return report


async def _count(rt: Runtime, keys: Sequence[str]) -> int | None:
    counter = getattr(rt.confluence, "count_pages", None)
    if counter is None:
        return None
    try:
        return int(await counter(keys))
    except Exception:  # a progress total is a nicety; never fail a sync over it
        return None


# --- reconciliation ----------------------------------------------------------------------------------------
async def reconcile_due(rt: Runtime) -> bool:
    state = await get_state(rt, "reconcile")
    if not state or "finished_at" not in state:
        return True
    finished = datetime.fromisoformat(state["finished_at"])
    return datetime.now(UTC) - finished >= timedelta(seconds=rt.settings.reconcile_interval)


#: Held pages whose existence is checked per reconciliation, a rotating slice whose cursor is kept in
#: `cv_state`: an interval costs the same whatever the wiki's size (2 v2 calls per 250 ids on Cloud), and every
#: held page is checked once every held/RECONCILE_SLICE intervals. Only purges that sent no webhook need it.
RECONCILE_SLICE = 500
#: Failed pages still holding rows re-processed per reconciliation (a permanent failure should delete them).
RECONCILE_FAILED_CAP = 200


async def reconcile(rt: Runtime) -> ReconcileReport:
    """Make the index catch up with what webhooks did not tell us, at a cost proportional to the changes.

    Per run: content modified since the last checkpoint (minus an overlap for clock skew), by CQL; content
    trashed, deleted or archived since then that we hold, by the same CQL over those statuses; failed pages
    that still hold rows (defensive: they must not stay searchable); and a rotating slice of held pages whose
    existence is checked in bulk, for purges nothing announced. Every page found goes through the queue, whose
    job decides from what Confluence says now. The first run (no checkpoint) lists everything once.
    """
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    state = await get_state(rt, "reconcile") or {}
    since: datetime | None = None
    if "checkpoint" in state:
        since = datetime.fromisoformat(state["checkpoint"]) - timedelta(seconds=rt.settings.reconcile_overlap)
    report = ReconcileReport(since=since.isoformat() if since else None)

    async for batch in _batches(rt.confluence.iter_pages(None, since=since)):
        queued, _ = await _enqueue_changed(rt, batch, event="reconcile")
        report.modified_seen += len(batch)
        report.queued_modified += queued

    if since is not None:
        async for batch in _batches(rt.confluence.iter_gone(since)):
            report.gone_seen += len(batch)
            held = await _held_among(rt, [ref.id for ref in batch])
            gone = [PageJobRequest(ref.id, ref.content_type, "reconcile_gone") for ref in batch if ref.id in held]
            if gone:
                report.queued_gone += (await enqueue_pages(rt.pool, gone)).count("queued")
        # Comments and attachments change no page version: pages we hold whose children did are re-read.
        children = await pages_with_changed_children(rt.confluence, since)
        held = await _held_among(rt, [page_id for page_id, _ in children])
        again = [PageJobRequest(i, kind, "reconcile_children") for i, kind in children if i in held]
        if again:
            report.queued_children += (await enqueue_pages(rt.pool, again)).count("queued")

    failed = await _failed_to_recheck(rt, RECONCILE_FAILED_CAP)
    if failed:
        report.failed_rechecked = len(failed)
        requests = [PageJobRequest(page_id, content_type, "reconcile_failed") for page_id, content_type in failed]
        await enqueue_pages(rt.pool, requests)

    held_slice, slice_after = await _held_slice(rt, str(state.get("slice_after", "")), RECONCILE_SLICE)
    report.held_checked = len(held_slice)
    if held_slice:
        present = await rt.confluence.existing_ids(held_slice)
        vanished = [PageJobRequest(i, event="reconcile_vanished") for i in held_slice if i not in present]
        if vanished:
            report.queued_vanished += (await enqueue_pages(rt.pool, vanished)).count("queued")

    report.seconds = time.monotonic() - started
    report.finished_at = datetime.now(UTC).isoformat()
    await set_state(
        rt,
        "reconcile",
        {
            "checkpoint": started_wall.isoformat(),
            "finished_at": report.finished_at,
            "slice_after": slice_after,
            **_summary(report),
        },
    )
    log.info("reconciliation done", extra=_summary(report))
    return report


def _summary(report: ReconcileReport) -> dict[str, Any]:
    return {k: v for k, v in report.__dict__.items() if k not in {"finished_at"}}


_HELD = "status IN ('indexed', 'skipped') OR (status = 'failed' AND chunk_count > 0)"


async def _held_among(rt: Runtime, ids: Sequence[str]) -> set[str]:
    """Which of `ids` we hold: indexed, skipped, or failed with rows left."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(f"SELECT page_id FROM cv_pages WHERE page_id = ANY(%s) AND ({_HELD})", (list(ids),))
        return {row[0] for row in await cur.fetchall()}


async def _failed_to_recheck(rt: Runtime, limit: int) -> list[tuple[str, str]]:
    """(id, content type) of failed pages to re-check, longest-failed first, at most `limit`: those that still
    hold vector rows; those whose last error is a `ServiceFault` (401, the model missing...) whatever their
    rows (a service fault no longer ends a page, `app.queue.plan_retry`, but one ended by it before that
    would otherwise never be retried once the operator fixed the fault); and those that ran out of attempts
    on transient errors (an outage: `VectorStore.record_failure`), rows or not, so a page first seen during
    an outage is indexed once it ends. Not re-checked: a permanent failure without rows (403/404 for the
    page: its next event brings it back) and a page whose attempts died with their worker (it kills
    workers; `retry-failed` is the operator's call)."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT page_id, content_type FROM cv_pages
               WHERE status = 'failed'
                 AND (chunk_count > 0 OR split_part(last_error, ':', 1) = ANY(%s)
                      OR (starts_with(reason, 'gave up after ') AND NOT starts_with(last_error, %s)))
               ORDER BY updated_at LIMIT %s""",
            (sorted(_service_fault_names()), WORKER_LOST_ERROR, limit),
        )
        return [(row[0], row[1]) for row in await cur.fetchall()]


def _service_fault_names(kind: type[ServiceFault] = ServiceFault) -> set[str]:
    """Class names of every `ServiceFault`, as `last_error` starts with them (`app.jobs`: "Name: message")."""
    names = {kind.__name__}
    for sub in kind.__subclasses__():
        names |= _service_fault_names(sub)
    return names


async def _held_slice(rt: Runtime, after: str, size: int) -> tuple[list[str], str]:
    """Up to `size` held ids following `after` in id order, wrapping to the start; and the next cursor."""
    forward = f"SELECT page_id FROM cv_pages WHERE ({_HELD}) AND page_id > %s ORDER BY page_id LIMIT %s"
    wrap = f"SELECT page_id FROM cv_pages WHERE ({_HELD}) AND page_id <= %s ORDER BY page_id LIMIT %s"
    async with rt.pool.connection() as conn:
        ids = [row[0] for row in await (await conn.execute(forward, (after, size))).fetchall()]
        if len(ids) < size and after:
            ids += [row[0] for row in await (await conn.execute(wrap, (after, size - len(ids)))).fetchall()]
    return ids, (ids[-1] if ids else "")
