"""Tasks receive the worker's runtime explicitly (`app.tasks`), with procrastinate's view of them unchanged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.errors import ConfigurationError
from app.tasks import build_queue, runtime_context
from tests.conftest import make_settings

#: (queue, lock) of every task of ours, as jobs already stored in users' databases name them.
TASKS = {
    "cv:index_page": ("pages", None),
    "cv:tick": ("maintenance", None),
    "cv:reconcile": ("maintenance", None),
    "cv:refresh_folder_access": ("maintenance", None),
    "cv:refresh_space_access": ("maintenance", None),
    "cv:recheck_access": ("maintenance", "permission_sync"),
    "cv:permission_sync": ("maintenance", "permission_sync"),
}


def _queue() -> Any:
    return build_queue("postgresql://127.0.0.1:9/none", make_settings())


def test_task_names_queues_locks_and_periodic_ids_are_unchanged() -> None:
    queue = _queue()
    ours = {name: (task.queue, task.lock) for name, task in queue.tasks.items() if name.startswith("cv:")}
    assert ours == TASKS
    periodic = {(p.periodic_id, p.task.name, p.cron) for p in queue.periodic_registry.periodic_tasks.values()}
    assert periodic == {("tick", "cv:tick", "* * * * *"), ("permission_sync", "cv:permission_sync", "* * * * *")}


async def test_a_task_gets_the_runtime_from_the_job_context_and_its_stored_arguments_unchanged() -> None:
    """What the worker does for a `cv:recheck_access` job stored as {"attempt": 1}: the task function is
    called as `f(rt, attempt=1)` with the runtime the worker was started with."""
    task = _queue().tasks["cv:recheck_access"]
    calls: list[Any] = []

    class Recorded(Exception):
        pass

    class Runtime:  # the first thing the re-check touches: its pool
        @property
        def pool(self) -> Any:
            calls.append(self)
            raise Recorded

    rt = Runtime()
    context = SimpleNamespace(additional_context=runtime_context(rt), job=None)
    with pytest.raises(Recorded):
        await task.func(context, attempt=1)
    assert calls == [rt]


async def test_a_worker_started_without_the_runtime_fails_the_job_saying_so() -> None:
    task = _queue().tasks["cv:reconcile"]
    with pytest.raises(ConfigurationError, match="without a runtime"):
        await task.func(SimpleNamespace(additional_context={}, job=None))


async def test_a_worker_that_stops_is_restarted_with_backoff_until_cancelled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Procrastinate's worker stops when Postgres goes away (or raises): `run_worker_forever` logs it and
    starts it again after a jittered wait of at least 0.5 s; a cancellation (shutdown) ends it at once."""
    import asyncio
    import logging
    import time

    from app import tasks

    runs: list[str] = []

    async def run_worker(rt: Any, *, name: str) -> None:
        runs.append(name)
        if len(runs) == 1:
            raise RuntimeError("listener lost")
        if len(runs) == 2:
            return  # stopped by itself
        await asyncio.Event().wait()  # runs until cancelled

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(tasks, "run_worker", run_worker)
    caplog.set_level(logging.ERROR, logger="app.tasks")
    worker = asyncio.create_task(tasks.run_worker_forever(object(), name="w", sleep=sleep))  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while len(runs) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert runs == ["w", "w", "w"]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 0.5 <= waits[1] <= 2.0  # Backoff(1 s, 30 s), floor 0.5
    restarts = [r for r in caplog.records if r.getMessage() == "worker stopped; restarting"]
    assert [r.error for r in restarts] == ["RuntimeError: listener lost", "stopped"]  # type: ignore[attr-defined]
    assert [r.retry_in for r in restarts] == waits  # type: ignore[attr-defined]
