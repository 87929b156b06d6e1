"""The periodic tick does not start a reconciliation that cannot succeed: with Confluence unconfigured it
skips it (start-up already said what is missing) instead of failing with a traceback every minute."""

from __future__ import annotations

from typing import Any

import pytest

from app.jobs import tick
from app.runtime import Runtime
from tests.conftest import make_settings


async def _reconcile_jobs(rt: Runtime) -> int:
    async with rt.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'cv:reconcile'")
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    ("confluence", "expected"),
    [
        ({"confluence_base_url": ""}, 0),  # nothing configured
        ({"confluence_base_url": "https://wiki.example.com"}, 0),  # a URL, no credentials
        ({"confluence_base_url": "https://wiki.example.com", "confluence_pat": "a-real-pat-value"}, 1),
    ],
)
async def test_tick_reconciles_only_when_confluence_is_configured(
    db_url: str, confluence: dict[str, Any], expected: int
) -> None:
    settings = make_settings(database_url=db_url, reconcile_interval=60, **confluence)
    rt = await Runtime.open(settings)
    try:
        await tick(rt, 0)  # the task body, as the worker runs it each minute
        assert await _reconcile_jobs(rt) == expected
    finally:
        await rt.close()
