"""The queue's tasks, the procrastinate App that registers them, and the worker that runs them.

procrastinate calls a task with the job's stored arguments (and its `JobContext` if the task asks for it);
our tasks also need the process's `Runtime` (pools, clients, settings). It is handed over explicitly: the
worker starts with `additional_context={RUNTIME_KEY: rt}` (procrastinate `App.run_worker_async`, whose
`additional_context` every job's `JobContext.additional_context` receives a copy of), and each task is
registered wrapped, with `pass_context=True`: the wrapper takes the runtime from the context and calls the
declared function as `func(rt, **job_args)` (or `func(rt, context, **job_args)`). The task names, queues,
locks and periodic ids are the declarations' (`app.queue.task`), and the job arguments are passed on as
stored, so jobs already in a database run unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import procrastinate
from procrastinate import JobContext
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_result, stop_never

from app import access_jobs, jobs
from app.config import Settings
from app.errors import ConfigurationError
from app.jobs import recover_stalled_jobs
from app.queue import MAINTENANCE_QUEUE, PAGES_QUEUE, TaskSpec, declared_tasks
from app.retry import Backoff

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

#: Every module that declares tasks with `app.queue.task`. A task declared in a module missing here is not
#: registered (its jobs would wait for ever), so tests/unit/test_imports.py checks the list against the code.
TASK_MODULES: tuple[ModuleType, ...] = (jobs, access_jobs)
#: The key of the runtime in `JobContext.additional_context`.
RUNTIME_KEY = "runtime"
#: Seconds a stopping worker lets its running jobs finish before cancelling them (they are then re-queued).
WORKER_DRAIN_SECONDS = 20.0
#: A worker that ran this long before stopping starts its restart backoff afresh.
_HEALTHY_RUN_SECONDS = 60.0


def build_queue(database_url: str, settings: Settings) -> procrastinate.App:
    """A procrastinate App on our database with every task of `TASK_MODULES` registered."""
    connector = procrastinate.PsycopgConnector(
        conninfo=database_url,
        min_size=1,
        max_size=max(4, settings.worker_concurrency + 2),
        timeout=10.0,  # like our own pool: with Postgres down a webhook gets its 503 fast, not after 30 s
        kwargs={"application_name": "confluence-vectors-queue"},
    )
    app = procrastinate.App(connector=connector)
    modules = {module.__name__ for module in TASK_MODULES}
    for spec in declared_tasks():
        if spec.func.__module__ in modules:
            registered = app.task(**spec.options, pass_context=True)(_with_runtime(spec))
            if spec.periodic is not None:
                app.periodic(**spec.periodic)(registered)
    return app


def runtime_context(rt: Runtime) -> dict[str, Any]:
    """The `additional_context` a worker running our tasks needs (`run_worker`; tests running a worker)."""
    return {RUNTIME_KEY: rt}


def _with_runtime(spec: TaskSpec) -> Callable[..., Awaitable[Any]]:
    """The function procrastinate runs for `spec`: its job arguments passed on as they are, after the runtime
    (and the context, if the task asked for it)."""
    func = spec.func

    async def run(context: JobContext, **job_args: Any) -> Any:
        rt = context.additional_context.get(RUNTIME_KEY)
        if rt is None:
            raise ConfigurationError(
                f"task {spec.options['name']} ran on a worker without a runtime: start workers with "
                "app.tasks.run_worker (or pass additional_context=runtime_context(rt))"
            )
        if spec.pass_context:
            return await func(rt, context, **job_args)
        return await func(rt, **job_args)

    run.__module__, run.__name__, run.__qualname__, run.__doc__ = (
        func.__module__,
        func.__name__,
        func.__qualname__,
        func.__doc__,
    )
    return run


async def run_worker(rt: Runtime, *, name: str = "worker") -> None:
    """Hand back stalled jobs, then run a worker on `rt.queue` until cancelled or signalled; `serve` runs one
    inside the API process."""
    settings = rt.settings
    options: dict[str, Any] = {
        "queues": [PAGES_QUEUE, MAINTENANCE_QUEUE],
        "concurrency": settings.worker_concurrency,
        "name": name,
        "install_signal_handlers": False,
        "update_heartbeat_interval": settings.worker_heartbeat_seconds,
        "stalled_worker_timeout": settings.worker_heartbeat_seconds * 3,
        "fetch_job_polling_interval": 2.0,
        "delete_jobs": "successful",
        # On SIGTERM/SIGINT the worker stops fetching and lets running jobs finish (drain) for this long; a job
        # still running then is cancelled and hands its page to a follow-up job (`app.jobs`), so a slow page
        # delays a shutdown by at most this, and an orchestrator's SIGKILL after its grace period loses
        # nothing either (stalled-job recovery).
        "shutdown_graceful_timeout": WORKER_DRAIN_SECONDS,
        "additional_context": runtime_context(rt),
    }
    await recover_stalled_jobs(rt)  # never raises
    await rt.queue.run_worker_async(**options)


async def run_worker_forever(
    rt: Runtime, *, name: str = "worker", sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Run a worker until cancelled, restarting it (with jittered backoff) whenever it stops by itself.

    Procrastinate stops its worker when Postgres goes away (its listener fails, then unregistering fails too).
    Without a restart, `serve` would keep acknowledging jobs that nobody runs once Postgres is back, and a
    `worker` process would exit on a database failover. The restarts are tenacity's (never stopping; a
    cancellation is a BaseException, not retried, so shutdown goes through): the wait is `Backoff(1 s, 30 s)`,
    at least 0.5 s, counted from the worker's last healthy run: one that ran for a minute before failing
    starts its backoff afresh. `sleep` waits between runs (tests pass their own).
    """
    backoff = Backoff(base=1.0, cap=30.0, floor=0.5)
    failures = 0
    started = time.monotonic()

    async def attempt() -> str:
        nonlocal started
        started = time.monotonic()
        await run_worker(rt, name=name)
        return "stopped"

    def wait(state: RetryCallState) -> float:
        nonlocal failures
        failures = 1 if time.monotonic() - started > _HEALTHY_RUN_SECONDS else failures + 1
        return backoff.delay(failures)

    def restarting(state: RetryCallState) -> None:
        outcome = state.outcome
        failure = outcome.exception() if outcome is not None and outcome.failed else None
        error = f"{type(failure).__name__}: {failure}" if failure is not None else "stopped"
        delay = state.next_action.sleep if state.next_action is not None else None
        log.error("worker stopped; restarting", extra={"worker": name, "error": error[:500], "retry_in": delay})

    policy = AsyncRetrying(
        retry=retry_if_exception_type(Exception) | retry_if_result(lambda _: True),
        stop=stop_never,
        wait=wait,
        sleep=sleep,
        before_sleep=restarting,
    )
    await policy(attempt)
