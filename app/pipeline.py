"""Reconcile one page with what Confluence says now: the worker's whole job for one event.

An event is only a hint that a page may have changed, so the pipeline never trusts the payload: it fetches
the page, and either (re)indexes it or deletes its vectors. Duplicates, retries and out-of-order deliveries
therefore all converge. Only chunks whose embedded text changed are embedded again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llama_index.core.schema import TextNode

from app.access_jobs import forget_page_access, hide_page_access, record_page_access
from app.attachments.index import attachment_nodes
from app.attachments.index import record as record_attachments
from app.chunking import chunk_page, embed_text, page_metadata
from app.comments import comment_nodes
from app.config import Settings
from app.confluence import ConfluenceClient
from app.convert import storage_to_markdown, user_refs
from app.errors import ConfluenceAuthError, PageNotFound, ServiceFault
from app.models import ContentType, Page
from app.permission_events import CONTENT_PERMISSION_EVENTS
from app.vector_store import content_hash, metadata_hash

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

Action = Literal["indexed", "unchanged", "deleted", "skipped", "stale"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing a page did (logged, counted, returned by the job)."""

    page_id: str
    action: Action
    version: int | None = None
    chunks: int = 0
    embedded: int = 0
    deleted: int = 0
    reason: str | None = None


#: Events after which what the Confluence client caches about the content (its read restriction, which its
#: descendants inherit, and its title, which their breadcrumbs show) may be stale.
CACHE_STALE_EVENTS = CONTENT_PERMISSION_EVENTS | {"page_moved", "page_updated", "blog_updated", "page_restored"}


async def process_page(
    rt: Runtime, page_id: str, content_type: ContentType | None = None, event: str | None = None
) -> Outcome:
    """Fetch `page_id` and make the index agree with it (`event`: the webhook's name, when there was one)."""
    if event in CACHE_STALE_EVENTS:
        rt.confluence.invalidate(page_id)
    started = time.perf_counter()
    try:
        page = await rt.confluence.get_page(page_id, content_type)
    except PageNotFound:
        removed = await rt.store.delete_page(page_id, status="deleted", reason="not found in Confluence")
        await forget_page_access(rt, page_id)
        return _done(rt, Outcome(page_id, "deleted", deleted=removed, reason="not found"))
    except ConfluenceAuthError as exc:
        # Refused for this page (403): it may have become restricted; hide it and its subtree. Refused our
        # credentials (401, a ServiceFault) says nothing about the page: it keeps its last known access, as
        # through any Confluence outage, so its old version stays searchable until the token is fixed.
        if not isinstance(exc, ServiceFault):
            await hide_page_access(rt, page_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        rt.metrics.stage_seconds.labels("fetch").observe(time.perf_counter() - started)

    reason = await admit_page(rt, page)
    if reason is not None:
        removed = await rt.store.delete_page(page_id, status="deleted", reason=reason, page=page)
        await forget_page_access(rt, page_id)
        return _done(rt, Outcome(page_id, "deleted", page.version, deleted=removed, reason=page.status))
    return await index_page(rt, page)


async def admit_page(rt: Runtime, page: Page) -> str | None:
    """The checks a fetched page passes before any of its rows is written, by every writer (this pipeline and
    `app.reindex`): returns why it must have no rows (not current: trashed, archived, draft...), or None once
    who may read it is recorded. Access is recorded before the rows change, so new rows are never readable
    under old access; restricted pages are indexed like any other and filtered per person at query time
    (app.access)."""
    if not page.is_current:
        return f"status {page.status}"
    await record_page_access(rt, page)
    return None


async def page_nodes(client: ConfluenceClient, settings: Settings, page: Page) -> list[TextNode]:
    """The page as the chunks we embed: mentions resolved, storage format → Markdown → heading-aware chunks.

    Conversion and chunking are pure CPU (tens of ms for a big page) and run in a thread: under `serve` the
    worker shares its event loop with the webhook endpoint, whose acknowledgements must not wait behind them.
    """
    users = await client.resolve_users(user_refs(page.body_storage)) if page.body_storage else {}

    def convert_and_chunk() -> list[TextNode]:
        markdown = storage_to_markdown(page.body_storage, users=users, title=page.title)
        return chunk_page(
            page,
            markdown,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            max_tokens=settings.embed_max_tokens,
        )

    return await asyncio.to_thread(convert_and_chunk)


async def document_nodes(rt: Runtime, page: Page) -> tuple[list[TextNode], str]:
    """Every chunk stored under the page (its body, then its comments and attachments, each a document of its
    own: app/subdocuments.py) and the digest of their non-embedded metadata, for every writer (this pipeline
    and `app.reindex`). Attachment records (versions read, skips and their reasons) are stored here."""
    nodes = await page_nodes(rt.confluence, rt.settings, page)
    comments = await comment_nodes(rt.confluence, rt.settings, page)
    files = await attachment_nodes(rt.confluence, rt.settings, rt.pool, page)
    await record_attachments(rt.pool, page.id, files.records)
    extra = [*comments, *files.nodes]
    documents = [node.metadata for node in extra]  # a new file version or comment author: refresh, no re-embed
    meta = {"page": page_metadata(page), "documents": documents} if extra else page_metadata(page)
    return [*nodes, *extra], metadata_hash(meta)


async def index_page(rt: Runtime, page: Page) -> Outcome:
    """Chunk, embed what is new, and swap the page's rows in one transaction."""
    nodes, meta_hash = await document_nodes(rt, page)
    ids = [node.node_id for node in nodes]

    state = await rt.store.page_state(page.id)
    if state is not None and state.status == "indexed":
        if (state.version or 0) > page.version:
            return _done(rt, Outcome(page.id, "stale", page.version, reason=f"holding v{state.version}"))
        # The version too: it is kept only in the state row, so a new version with the same chunks and
        # metadata still goes through the write (which then touches no vector row, only the state row).
        same = state.version == page.version and state.meta_hash == meta_hash
        if same and state.content_hash == content_hash(ids):
            rt.metrics.chunks.labels("reused").inc(len(ids))
            return _done(rt, Outcome(page.id, "unchanged", page.version, chunks=len(ids)))

    stored = await rt.store.node_ids(page.id)
    to_embed = [node for node in nodes if node.node_id not in stored]
    started = time.perf_counter()
    vectors = await rt.embedder.aembed_many([embed_text(node) for node in to_embed]) if to_embed else []
    rt.metrics.stage_seconds.labels("embed").observe(time.perf_counter() - started)

    started = time.perf_counter()
    result = await rt.store.replace_page(
        page,
        nodes,
        {node.node_id: vector for node, vector in zip(to_embed, vectors, strict=True)},
        page_meta_hash=meta_hash,
    )
    rt.metrics.stage_seconds.labels("write").observe(time.perf_counter() - started)
    if not result.written:
        return _done(rt, Outcome(page.id, "stale", page.version, reason="a newer version is stored"))
    rt.metrics.chunks.labels("embedded").inc(len(to_embed))
    rt.metrics.chunks.labels("reused").inc(result.kept)
    rt.metrics.chunks.labels("deleted").inc(result.deleted)
    return _done(
        rt,
        Outcome(page.id, "indexed", page.version, chunks=len(ids), embedded=len(to_embed), deleted=result.deleted),
    )


def _done(rt: Runtime, outcome: Outcome) -> Outcome:
    rt.metrics.jobs.labels(outcome.action).inc()
    log.info(
        "page %s",
        outcome.action,
        extra={
            "page_id": outcome.page_id,
            "action": outcome.action,
            "version": outcome.version,
            "chunks": outcome.chunks,
            "embedded": outcome.embedded,
            "deleted": outcome.deleted,
            "reason": outcome.reason,
        },
    )
    return outcome
