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
