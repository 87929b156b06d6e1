"""What could not be read is read again soon, not at the next scheduled sync.

Seen in CI (issue 12, fail closed): the permission APIs refused us (403) for a while; the scheduled sync that ran
meanwhile recorded every restriction it read as not established, hiding those pages from everyone (correct).
When Confluence answered again, only the page that had an event was re-read: every other page stayed hidden
until the next sync, PERMISSION_SYNC_INTERVAL later (15 minutes by default), though nothing was wrong any more.

Now whatever leaves access not established queues a re-check with backoff (at most RETRY_MAX_SECONDS and
PERMISSION_SYNC_INTERVAL away), which re-reads only what is not established and comes back while anything still
is. Real Postgres, the fake Confluence over HTTP, procrastinate's own job rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.access import may_read, person_principals
from app.access_jobs import (
    RECHECK_ACCESS,
    PageKey,
    recheck_access_job,
    recheck_delay,
    record_page_access,
    sync_permissions,
)
from app.runtime import Runtime
from tests.conftest import make_settings, open_runtime
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_permissions import FakePermissions

READER = person_principals("reader", [])


@pytest.fixture()
def fake() -> Iterator[tuple[FakeConfluence, FakePermissions]]:
    with FakeConfluence("cloud") as confluence:
        perms = FakePermissions.install(confluence)
        perms.grant_space("ENG", users=["reader"])
        confluence.put_page("700", title="Runbook", body="<p>root</p>", space_key="ENG")
        confluence.put_page("701", title="Child", body="<p>child</p>", space_key="ENG", parent_id="700")
        yield confluence, perms


@pytest.fixture()
async def rt(db_url: str, fake: tuple[FakeConfluence, FakePermissions]) -> AsyncIterator[Runtime]:
    confluence, _ = fake
    async with open_runtime(
        database_url=db_url,
        confluence_base_url=confluence.base_url,
        job_max_attempts=4,
        retry_base_seconds=1.0,
        retry_max_seconds=30.0,
        permission_sync_interval=900,
        **confluence.credentials,
    ) as runtime:
        yield runtime


async def _rechecks(rt: Runtime) -> list[tuple[str, int, datetime]]:
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status::text, (args->>'attempt')::int, scheduled_at FROM procrastinate_jobs "
            "WHERE task_name = %s ORDER BY id",
            (RECHECK_ACCESS,),
        )
        return [(str(r[0]), int(r[1]), r[2]) for r in await cur.fetchall()]


async def _clear_rechecks(rt: Runtime) -> None:
    async with rt.pool.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs WHERE task_name = %s", (RECHECK_ACCESS,))


async def test_a_sync_refused_by_confluence_is_rechecked_soon_and_converges(
    rt: Runtime, fake: tuple[FakeConfluence, FakePermissions]
) -> None:
    confluence, _ = fake
    for page_id in ("700", "701"):
        outcome = await record_page_access(rt, PageKey(page_id, "ENG", "page"))
        assert outcome.established
    assert await may_read(rt.pool, READER, "701")
    assert await _rechecks(rt) == []  # nothing failed: nothing queued

    confluence.fail_next(10_000, status=403, path_contains="/restriction/")
    before = datetime.now(UTC)
    report = await sync_permissions(rt)
    assert report.not_established >= 2
    assert not await may_read(rt.pool, READER, "700") and not await may_read(rt.pool, READER, "701")  # closed

    # One re-check waits, due within the backoff's first ceiling (RETRY_BASE_SECONDS), not the sync interval.
    [(status, attempt, due)] = await _rechecks(rt)
    assert (status, attempt) == ("todo", 1)
    assert due <= before + timedelta(seconds=rt.settings.retry_base_seconds + 5)

    # While Confluence still refuses, the re-check comes back with the next attempt (coalesced: one waits).
    await _clear_rechecks(rt)
    result = await recheck_access_job(rt, attempt=1)
    assert result["not_established"] >= 2
    assert [(s, a) for s, a, _ in await _rechecks(rt)] == [("todo", 2)]
    assert not await may_read(rt.pool, READER, "701")

    # Confluence answers again: the next re-check opens both pages, and queues nothing more.
    with confluence._lock:
        confluence._faults.clear()
    await _clear_rechecks(rt)
    result = await recheck_access_job(rt, attempt=2)
    assert result["not_established"] == 0
    assert await may_read(rt.pool, READER, "700") and await may_read(rt.pool, READER, "701")
    assert await _rechecks(rt) == []


async def test_a_page_whose_restriction_is_refused_queues_a_recheck(
    rt: Runtime, fake: tuple[FakeConfluence, FakePermissions]
) -> None:
    confluence, _ = fake
    confluence.fail_next(1, status=403, path_contains="/restriction/")
    outcome = await record_page_access(rt, PageKey("700", "ENG", "page"))
    assert not outcome.established
    assert [(s, a) for s, a, _ in await _rechecks(rt)] == [("todo", 1)]
    # A second failure meanwhile joins the waiting re-check rather than queueing another.
    confluence.fail_next(1, status=403, path_contains="/restriction/")
    await record_page_access(rt, PageKey("701", "ENG", "page"))
    assert len(await _rechecks(rt)) == 1


async def test_rechecks_back_off_and_hand_over_to_the_sync(rt: Runtime) -> None:
    ceilings: list[float] = []
    for attempt in range(1, rt.settings.job_max_attempts + 1):
        delays = [recheck_delay(rt, attempt) for _ in range(200)]
        assert all(d is not None and 0 < d <= rt.settings.retry_max_seconds for d in delays)
        ceilings.append(max(d for d in delays if d is not None))
    assert ceilings[-1] > ceilings[0]  # grows (full jitter: compare the largest of many draws)
    assert recheck_delay(rt, rt.settings.job_max_attempts + 1) is None  # the scheduled sync takes over


def test_recheck_never_waits_longer_than_the_sync_interval() -> None:
    settings: Any = make_settings(retry_base_seconds=100.0, retry_max_seconds=10_000.0, permission_sync_interval=60)
    rt: Any = type("Rt", (), {"settings": settings})()
    assert all((recheck_delay(rt, a) or 0) <= 60 for a in range(1, 10) for _ in range(50))
