"""The process's long-lived resources, opened once and closed once.

The API, the worker and the CLI all build the same `Runtime`, so they share one code path for migrations,
pools and clients. Tasks find it through `current()`: procrastinate calls plain functions, and a process runs
one runtime.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.confluence import ConfluenceClient
from app.db import database_url, make_pool, migrate
from app.embeddings import OllamaBgeM3Embedding
from app.errors import ConfigurationError
from app.intake import WebhookIntake
from app.metrics import Metrics
from app.queue import build_queue
from app.vector_store import VectorStore

log = logging.getLogger(__name__)

_current: Runtime | None = None


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
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def open(cls, settings: Settings, *, metrics: Metrics | None = None) -> Runtime:
        """Migrate, open pools and clients, and make this the process's current runtime."""
        global _current
        url = database_url(settings)
        await migrate(url, settings)
        pool = make_pool(url, max_size=settings.db_pool_size)
        await pool.open(wait=True, timeout=30)
        queue = build_queue(url, settings)
        await queue.open_async()
        metrics = metrics or Metrics()
        runtime = cls(
            settings=settings,
            database_url=url,
            pool=pool,
            store=VectorStore(pool, settings.vector_table, embed_model=settings.embed_model),
            queue=queue,
            confluence=ConfluenceClient(settings, on_retry=metrics.confluence_retry),
            embedder=OllamaBgeM3Embedding.from_settings(settings),
            metrics=metrics,
            intake=WebhookIntake(pool, dedupe_window_seconds=settings.dedupe_window_seconds, metrics=metrics),
        )
        _current = runtime
        freeze_startup_objects()
        return runtime

    async def close(self) -> None:
        global _current
        await self.intake.aclose()
        await self.confluence.aclose()
        await self.embedder.aclose()
        await self.queue.close_async()
        await self.pool.close()
        if _current is self:
            _current = None


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


def current() -> Runtime:
    if _current is None:
        raise ConfigurationError("no runtime is open in this process")
    return _current
