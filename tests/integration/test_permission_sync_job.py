"""The periodic permission sync when Postgres goes away under it (a failover, connections killed: the e2e test
tests/e2e/test_break_issue10_e2e.py drops every connection of the services, and a sync running at that moment
ended as a `failed` job)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

import app.access_jobs as access_jobs
from app.runtime import Runtime
from tests.conftest import make_settings


async def test_a_sync_interrupted_by_a_lost_connection_is_not_a_failed_job_and_stays_due(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rt = await Runtime.open(make_settings(database_url=db_url))
    try:
        assert await access_jobs.permission_sync_due(rt)

        async def killed(_rt: Any) -> Any:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")

        monkeypatch.setattr(access_jobs, "sync_permissions", killed)
        with caplog.at_level(logging.WARNING, logger="app.access_jobs"):
            result = await access_jobs.permission_sync_job(rt, 0)
        assert result == {"ran": False, "interrupted": "AdminShutdown"}
        assert any("permission sync interrupted" in r.getMessage() for r in caplog.records)
        assert await access_jobs.permission_sync_due(rt), "still due: the next minute's run starts it again"
    finally:
        await rt.close()


async def test_any_other_error_still_fails_the_job(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the loss of Postgres is expected; a bug must stay visible as a failed job."""
    rt = await Runtime.open(make_settings(database_url=db_url))
    try:

        async def broken(_rt: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(access_jobs, "sync_permissions", broken)
        with pytest.raises(RuntimeError, match="a bug"):
            await access_jobs.permission_sync_job(rt, 0)
    finally:
        await rt.close()
