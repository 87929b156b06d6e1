"""The process's long-lived resources, opened once and closed once.

The API, the worker and the CLI all build the same `Runtime`, so they share one code path for migrations,
pools and clients. Whoever opens it passes it on: the worker hands it to every task (`app.tasks`), the API
keeps it in `app.state.runtime`, a CLI command passes it to what it calls.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import procrastinate
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.confluence import ConfluenceClient
from app.db import database_url, make_pool, migrate
from app.embeddings import OllamaBgeM3Embedding
from app.intake import WebhookIntake
from app.metrics import Metrics
from app.permissions_client import PermissionsClient
from app.replica import SearchDatabase, standby_pool
from app.tasks import build_queue
from app.vector_store import VectorStore


@dataclass
class Runtime:
    settings: Settings
    database_url: str
    pool: AsyncConnectionPool
    store: VectorStore
    queue: procrastinate.App
    confluence: ConfluenceClient
    embedder: OllamaBgeM3Embedding
    metrics: Metrics
    intake: WebhookIntake
    #: Who may read what, read through `confluence`; one per runtime, so its membership cache is shared.
    permissions: PermissionsClient
    #: Where searches run: the primary `pool`, or SEARCH_DATABASE_URL's standby while it is close enough behind.
    search_db: SearchDatabase

    @classmethod
    async def open(cls, settings: Settings, *, metrics: Metrics | None = None) -> Runtime:
        """Migrate, open pools and clients; the caller closes the runtime (`close`)."""
        url = database_url(settings)
        await migrate(url, settings)
        pool = make_pool(url, max_size=settings.db_pool_size)
        await pool.open(wait=True, timeout=30)
        queue = build_queue(url, settings)
        await queue.open_async()
        metrics = metrics or Metrics()
        confluence = ConfluenceClient(settings, on_retry=metrics.confluence_retry)
        standby_url = settings.search_database_url
        search_db = SearchDatabase(
            pool,
            None if standby_url is None else standby_pool(standby_url.get_secret_value(), settings.db_pool_size),
            max_lag=settings.search_replica_max_lag,
            on_fallback=lambda reason: metrics.search_fallbacks.labels(reason).inc(),
            primary_url=url,
        )
        await search_db.open()
        runtime = cls(
            settings=settings,
            database_url=url,
            pool=pool,
            store=VectorStore(pool, settings.vector_table, embed_model=settings.embed_model),
            queue=queue,
            confluence=confluence,
            embedder=OllamaBgeM3Embedding.from_settings(settings),
            metrics=metrics,
            intake=WebhookIntake(pool, dedupe_window_seconds=settings.dedupe_window_seconds, metrics=metrics),
            permissions=PermissionsClient(
                confluence,
                membership_ttl=float(settings.permission_sync_interval),
                max_people=settings.permission_people_cache,
            ),
            search_db=search_db,
        )
        freeze_startup_objects()
        return runtime

    async def close(self) -> None:
        await self.intake.aclose()
        await self.confluence.aclose()
        await self.embedder.aclose()
        await self.queue.close_async()
        await self.search_db.close()
        await self.pool.close()


def freeze_startup_objects() -> None:
    """Move everything allocated so far (modules, LlamaIndex, pools) out of the garbage collector's sight.

    Why: a full collection walks every tracked object, and this process starts with ~180k of them, none of
    them garbage. Measured: each full collection took ~95-160 ms, and under a webhook burst the allocation rate
    triggered one every second or so, stalling every in-flight request for that long (the p99 of
    acknowledgement latency was these stalls). Frozen objects are never scanned, so collections only walk what
    requests and jobs allocate. The cost is that startup garbage is never freed: `collect()` first.
    """
    gc.collect()
    gc.freeze()
