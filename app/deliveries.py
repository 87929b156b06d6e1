"""Recognising re-deliveries: a fixed-size key per delivery, and the window in which a key counts as seen.

Confluence re-sends a webhook it thinks failed (Data Center retries; a proxy may too). The key is the same
for a delivery and its re-deliveries and different for distinct ones; the intake checks and records keys in
the same transaction that stores the job, so a delivery is marked seen exactly when its job is committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.credentials import as_bytes
from app.webhook_auth import header

#: Atlassian Cloud's delivery id: unique per delivery and unchanged across its retries. Data Center sends
#: none. `X-Request-Id` is deliberately not used: proxies stamp a fresh one on every hop and retry, which
#: would make every re-delivery look new.
DELIVERY_ID_HEADERS = ("X-Atlassian-Webhook-Identifier",)
#: Digests are kept at least this long, whatever the dedupe window, so pruning never outruns a check.
MIN_RETENTION_SECONDS = 86_400


def delivery_digest(body: bytes, headers: Mapping[str, str], event: str | None = None) -> str:
    """A key that is the same for a delivery and its re-deliveries: Atlassian's delivery id when sent, else
    the body's SHA-256 (Data Center bodies carry the event's timestamp, so distinct events differ).

    `event` is the event named by the URL (`?event=`, Cloud REST hooks: one registered hook per event, and
    their bodies do not name it). It is part of the key, so the same body delivered to two hooks (say
    `page_updated` and `page_moved`) is two deliveries, not a duplicate. Shape: `id:` or `body:` followed by
    64 hex digits, whatever the input sizes; the prefix keeps an id from ever colliding with a body.
    """
    scoped = as_bytes(event or "")
    scope = b"%d:" % len(scoped) + scoped  # length-prefixed: no event/body split can be read two ways
    for name in DELIVERY_ID_HEADERS:
        value = header(headers, name)
        if value and value.strip():
            return "id:" + hashlib.sha256(scope + as_bytes(value.strip())).hexdigest()
    return "body:" + hashlib.sha256(scope + body).hexdigest()


async def recently_seen(conn: AsyncConnection[Any], digests: Sequence[str], window_seconds: int) -> set[str]:
    """Which of `digests` were accepted within the last `window_seconds` (0 disables deduplication).

    Takes the caller's connection: the webhook intake checks, defers and remembers a whole batch in one
    transaction, so a delivery is marked seen exactly when its job is committed.
    """
    if window_seconds <= 0 or not digests:
        return set()
    cur = await conn.execute(
        """SELECT digest FROM cv_deliveries
           WHERE digest = ANY(%s) AND received_at > now() - make_interval(secs => %s)""",
        (list(digests), window_seconds),
    )
    return {row[0] for row in await cur.fetchall()}


async def remember_deliveries(conn: AsyncConnection[Any], digests: Sequence[str]) -> None:
    """Record accepted deliveries: one upsert per batch, all the webhook path pays (pruning is the tick's)."""
    if not digests:
        return
    await conn.execute(
        """INSERT INTO cv_deliveries (digest) SELECT DISTINCT d FROM unnest(%s::text[]) AS d ORDER BY d
           ON CONFLICT (digest) DO UPDATE SET received_at = now()""",
        (sorted(digests),),  # one lock order for every batch: concurrent batches wait, never deadlock
    )


async def prune_deliveries(pool: AsyncConnectionPool, *, window_seconds: int = 0) -> None:
    """Drop digests past retention so the table stays small; run by the periodic tick, not per webhook.

    Retention is the longer of `window_seconds` and a day: a range delete on the `received_at` index.
    """
    retention = max(window_seconds, MIN_RETENTION_SECONDS)
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM cv_deliveries WHERE received_at < now() - make_interval(secs => %s)", (retention,)
        )
