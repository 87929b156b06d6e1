"""Concurrent restriction reads: an answer to a request sent earlier must never overwrite one sent later.

A scheduled permission sync asks for a page's restriction; before its (slow) answer arrives, the page is
restricted and the permission event's job reads the new restriction and stores it. The sync's stale "open"
answer then arrives. If "newer wins" compares the time each answer was processed, the stale answer wins and
the page reads as open to everyone in its space: a leak until the next sync (issue 12, "Live")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from app.access import PageAccess, SpaceAccess, may_read, person_principals, save_page_access, save_space
from app.access_jobs import refresh_restrictions
from app.permissions_client import PermissionsClient


class SlowConfluence:
    """Cloud v1 restriction reads. The state is read when a request arrives; the first answer is held back
    until `release` is set, so a later request can overtake it."""

    is_cloud = True

    def __init__(self) -> None:
        self.restricted = False
        self.calls = 0
        self.first_asked = asyncio.Event()
        self.release = asyncio.Event()

    async def get_json(self, version: str, path: str, params: Any = None) -> Any:
        self.calls += 1
        snapshot = self.restricted
        if self.calls == 1:
            self.first_asked.set()
            await self.release.wait()
        users = [{"accountId": "boss"}] if snapshot else []
        return {"restrictions": {"user": {"results": users, "size": len(users)}, "group": {"results": [], "size": 0}}}


async def test_late_stale_restriction_answer_does_not_overwrite_newer(pool: Any) -> None:
    confluence = SlowConfluence()
    rt = SimpleNamespace(pool=pool, permissions=PermissionsClient(confluence))  # type: ignore[arg-type]
    async with pool.connection() as conn:
        await save_space(conn, SpaceAccess("ENG", frozenset({"anyone"})))
        await save_page_access(conn, PageAccess("500", "ENG", ("500",)))
    sync = asyncio.create_task(refresh_restrictions(rt, ["500"]))  # type: ignore[arg-type]
    await asyncio.wait_for(confluence.first_asked.wait(), timeout=10)  # the sync's request is out: open
    confluence.restricted = True  # the page is restricted to 'boss'; the event job reads it now
    event = await refresh_restrictions(rt, ["500"])  # type: ignore[arg-type]
    assert event[0].restricted is True
    confluence.release.set()  # the sync's stale answer ("no restriction") arrives last
    await asyncio.wait_for(sync, timeout=10)
    assert not await may_read(pool, person_principals("eve", []), "500")
