"""Queue choice: procrastinate (what we use) vs pgqueuer, side by side on the same embedded Postgres.

Each measurement gets its own fresh database on one server, with the queue's own schema installed. Jobs are
no-ops, so only the queue's cost is measured. Configurations:

* procrastinate: `App(PsycopgConnector)`, jobs deferred with `defer_async`, workers `run_worker_async`
  (`concurrency=CONCURRENCY`, LISTEN/NOTIFY, `delete_jobs="successful"` as in `app.tasks.run_worker`);
* pgqueuer: `Queries.enqueue` and `QueueManager.run` (`batch_size=CONCURRENCY`, unlimited in-flight),
  over psycopg (the driver we already use) and over asyncpg (pgqueuer's first-class driver).

Measured: (a) enqueue, `ENQUEUE` jobs one per call, plain and with a per-page dedupe key (as our page
jobs have: procrastinate `queueing_lock` + `lock`, pgqueuer `dedupe_key`); (b) drain of `DRAIN` prefilled no-op
jobs by 1 and by 2 worker processes (from the moment the workers are told to go until the queue is empty), the
queue table analyzed after prefilling, and once more by 1 worker without that ANALYZE; (c)
enqueue-to-start latency of `TRICKLE` jobs enqueued at `TRICKLE_RATE`/s to one idle worker (clocks are one
machine's `time.time()`); (d) the feature we rely on: a burst of `BURST` enqueues for one page collapsing into
one job, both while a job for the page is waiting and while one is running.

Run a worker alone: `python -m bench.queue_choice --worker procrastinate|pgqueuer-psycopg|pgqueuer-asyncpg
--db URL --mode drain|serve`; it prints `ready`, starts on a stdin line, stops on the next (serve mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bench.common import fresh_database, machine, postgres, show

ENQUEUE = 5_000
DRAIN = 5_000
TRICKLE = 300
TRICKLE_RATE = 50.0
BURST = 50
CONCURRENCY = 10
TASK = "noop"
QUEUE = "bench"
SYSTEMS = ("procrastinate", "pgqueuer-psycopg", "pgqueuer-asyncpg")

_latencies: list[float] = []
_record = False


def _note_start(enqueued_at: float) -> None:
    if _record:
        _latencies.append(time.time() - enqueued_at)


# --- procrastinate ----------------------------------------------------------------------------------------
def procrastinate_app(url: str, max_size: int = 4) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=max_size)
    app = procrastinate.App(connector=connector)

    @app.task(name=TASK, queue=QUEUE)
    async def noop(t: float = 0.0) -> None:
        _note_start(t)

    return app


# --- pgqueuer ---------------------------------------------------------------------------------------------
async def pgqueuer_driver(system: str, url: str) -> Any:
    if system == "pgqueuer-asyncpg":
        import asyncpg
        from pgqueuer import AsyncpgDriver

        return AsyncpgDriver(await asyncpg.connect(url))
    import psycopg
    from pgqueuer import PsycopgDriver

    return PsycopgDriver(await psycopg.AsyncConnection.connect(url, autocommit=True))


async def pgqueuer_close(driver: Any) -> None:
    connection = getattr(driver, "_connection", None)
    if connection is not None:
        await connection.close()


def _payload(t: float) -> bytes:
    return json.dumps({"t": t}).encode()


# --- a worker process -------------------------------------------------------------------------------------
async def _readline() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def run_worker(system: str, url: str, mode: str) -> None:
    """Print `ready`, start on a stdin line; drain: print `done <t0> <t1>`; serve: stop on the next line and
    print the start latencies (seconds) as JSON."""
    global _record
    _record = mode == "serve"
    if system == "procrastinate":
        app = procrastinate_app(url, max_size=CONCURRENCY + 2)
        async with app.open_async():
            print("ready", flush=True)
            await _readline()
            t0 = time.time()
            options: dict[str, Any] = {
                "queues": [QUEUE],
                "concurrency": CONCURRENCY,
                "install_signal_handlers": False,
                "delete_jobs": "successful",
                "listen_notify": True,
            }
            if mode == "drain":
                await app.run_worker_async(wait=False, **options)
            else:
                worker = asyncio.create_task(app.run_worker_async(wait=True, **options))
                await _readline()
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            t1 = time.time()
    else:
        from pgqueuer import Queries, QueueManager
        from pgqueuer.domain.types import QueueExecutionMode

        driver = await pgqueuer_driver(system, url)
        qm = QueueManager(Queries(driver))

        @qm.entrypoint(TASK)
        async def noop(job: Any) -> None:
            _note_start(json.loads(job.payload)["t"])

        print("ready", flush=True)
        await _readline()
        t0 = time.time()
        if mode == "drain":
            await qm.run(batch_size=CONCURRENCY, mode=QueueExecutionMode.drain)
        else:
            worker = asyncio.create_task(qm.run(batch_size=CONCURRENCY))
            await _readline()
            qm.shutdown.set()
            await worker
        t1 = time.time()
        await pgqueuer_close(driver)
    if mode == "drain":
        print(f"done {t0} {t1}", flush=True)
    else:
        print(json.dumps(_latencies), flush=True)


class Workers:
    """Worker subprocesses of one system, started and waited for until each says `ready`."""

    def __init__(self, system: str, url: str, mode: str, n: int) -> None:
        code = "import asyncio, sys; from bench.queue_choice import run_worker; asyncio.run(run_worker(*sys.argv[1:]))"
        args = [sys.executable, "-c", code, system, url, mode]  # not as __main__: procrastinate warns about that
        self.procs = [
            subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)
        ]
        for proc in self.procs:
            line = proc.stdout.readline().strip() if proc.stdout else ""
            if line != "ready":
                self.kill()
                raise RuntimeError(f"{system} worker did not start: {line!r}")

    def tell(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def results(self, timeout: float = 300) -> list[str]:
        out = []
        for proc in self.procs:
            stdout, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            out.append(stdout.strip().splitlines()[-1])
        return out

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# --- the parent's side ------------------------------------------------------------------------------------
async def setup(system: str, server: str, name: str) -> str:
    url = fresh_database(server, name)
    if system == "procrastinate":
        app = procrastinate_app(url)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    else:
        from pgqueuer import Queries

        driver = await pgqueuer_driver(system, url)
        await Queries(driver).install()
        await pgqueuer_close(driver)
    return url


def setup_sync(system: str, server: str, name: str) -> str:
    return asyncio.run(setup(system, server, name))


async def with_enqueuer(system: str, url: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `body(enqueue)` where `await enqueue(t, key)` stores one job (key: dedupe key or None) and returns
    False when the key collapsed it into an existing job."""
    if system == "procrastinate":
        from procrastinate import exceptions as pexc

        app = procrastinate_app(url)
        async with app.open_async():

            async def enqueue(t: float, key: str | None = None) -> bool:
                options = {"queueing_lock": key, "lock": key} if key else {}
                try:
                    await app.configure_task(TASK, queue=QUEUE, **options).defer_async(t=t)
                except pexc.AlreadyEnqueued:
                    return False
                return True

            return await body(enqueue)
    from pgqueuer import Queries
    from pgqueuer.domain.errors import DuplicateJobError

    driver = await pgqueuer_driver(system, url)
    queries = Queries(driver)

    async def enqueue(t: float, key: str | None = None) -> bool:
        try:
            await queries.enqueue(TASK, _payload(t), dedupe_key=key)
        except DuplicateJobError:
            return False
        return True

    try:
        return await body(enqueue)
    finally:
        await pgqueuer_close(driver)


async def enqueue_rate(system: str, url: str, keyed: bool = True) -> float:
    async def body(enqueue: Any) -> float:
        for i in range(20):  # warm-up: connections, prepared statements
            await enqueue(0.0, f"warm:{i}" if keyed else None)
        started = time.perf_counter()
        for i in range(ENQUEUE):
            await enqueue(0.0, f"page:{i}" if keyed else None)
        return ENQUEUE / (time.perf_counter() - started)

    return float(await with_enqueuer(system, url, body))


async def prefill(system: str, url: str, n: int) -> None:
    """Store `n` jobs in batches (not timed)."""
    if system == "procrastinate":
        app = procrastinate_app(url)
        async with app.open_async():
            task = app.tasks[TASK]
            for start in range(0, n, 1000):
                await task.batch_defer_async(*({"t": 0.0} for _ in range(start, min(n, start + 1000))))
        return
    from pgqueuer import Queries

    driver = await pgqueuer_driver(system, url)
    queries = Queries(driver)
    for start in range(0, n, 1000):
        size = min(n, start + 1000) - start
        await queries.enqueue([TASK] * size, [_payload(0.0)] * size, [0] * size)
    await pgqueuer_close(driver)


def remaining(system: str, url: str) -> int:
    import psycopg

    query = (
        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        if system == "procrastinate"
        else "SELECT count(*) FROM pgqueuer"
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def analyze(system: str, url: str) -> None:
    """Planner statistics for the queue table, as autovacuum would have gathered on a long-lived queue."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE procrastinate_jobs" if system == "procrastinate" else "ANALYZE pgqueuer")


def drain_rate(system: str, server: str, name: str, workers: int, *, analyzed: bool = True) -> float:
    url = setup_sync(system, server, name)
    asyncio.run(prefill(system, url, DRAIN))
    if analyzed:
        analyze(system, url)
    group = Workers(system, url, "drain", workers)
    try:
        group.tell()
        spans = [line.split()[1:] for line in group.results()]
    finally:
        group.kill()
    left = remaining(system, url)
    if left:
        raise RuntimeError(f"{system}: {left} jobs left after draining")
    t0 = min(float(s[0]) for s in spans)
    t1 = max(float(s[1]) for s in spans)
    return DRAIN / (t1 - t0)


def trickle_latency(system: str, server: str, name: str) -> tuple[float, float]:
    url = setup_sync(system, server, name)
    group = Workers(system, url, "serve", 1)
    try:
        group.tell()
        time.sleep(1.0)  # the worker is listening

        async def body(enqueue: Any) -> None:
            for _ in range(TRICKLE):
                await enqueue(time.time())
                await asyncio.sleep(1 / TRICKLE_RATE)

        asyncio.run(with_enqueuer(system, url, body))
        deadline = time.monotonic() + 30
        while remaining(system, url) and time.monotonic() < deadline:
            time.sleep(0.1)
        group.tell()
        latencies = sorted(json.loads(group.results()[0]))
    finally:
        group.kill()
    if len(latencies) != TRICKLE:
        raise RuntimeError(f"{system}: {len(latencies)} of {TRICKLE} trickled jobs ran")
    return statistics.median(latencies) * 1000, latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))] * 1000


async def collapse(system: str, url: str) -> tuple[int, int]:
    """Jobs waiting for one page after a burst of BURST enqueues: (while one waits, while one runs)."""
    import psycopg

    async def burst(enqueue: Any, key: str) -> int:
        await asyncio.gather(*(enqueue(0.0, key) for _ in range(BURST)))
        with psycopg.connect(url) as conn:
            if system == "procrastinate":
                query = "SELECT count(*) FROM procrastinate_jobs WHERE queueing_lock = %s AND status = 'todo'"
            else:
                query = "SELECT count(*) FROM pgqueuer WHERE dedupe_key = %s AND status = 'queued'"
            row = conn.execute(query, (key,)).fetchone()
        return int(row[0]) if row else 0

    async def start_one() -> None:
        """Take the waiting job as a worker does: it is now running."""
        if system == "procrastinate":
            app = procrastinate_app(url)
            async with app.open_async():
                worker_id = await app.job_manager.register_worker()
                job = await app.job_manager.fetch_job(queues=[QUEUE], worker_id=worker_id)
                assert job is not None
            return
        from pgqueuer import Queries
        from pgqueuer.ports.repository import EntrypointExecutionParameter

        driver = await pgqueuer_driver(system, url)
        jobs = await Queries(driver).dequeue(
            batch_size=1,
            entrypoints={TASK: EntrypointExecutionParameter(concurrency_limit=0)},  # type: ignore[dict-item]
            queue_manager_id=uuid.uuid4(),  # type: ignore[arg-type]
            global_concurrency_limit=None,
            heartbeat_timeout=timedelta(minutes=5),
        )
        await pgqueuer_close(driver)
        assert len(jobs) == 1

    async def body(enqueue: Any) -> tuple[int, int]:
        await enqueue(0.0, "page:1")
        waiting = await burst(enqueue, "page:1")
        await start_one()
        running = await burst(enqueue, "page:1")
        return waiting, running

    result: tuple[int, int] = await with_enqueuer(system, url, body)
    return result


FEATURES = [
    (
        "collapse key scope",
        "`queueing_lock`: waiting jobs only; a running job does not block the next one",
        "`dedupe_key`: queued and picked (running) jobs",
    ),
    (
        "one job per key running at a time",
        "`lock` (per key, any worker)",
        "no per-key lock; `concurrency_limit` per entrypoint (1 serialises every page)",
    ),
    (
        "retries with backoff",
        "`RetryStrategy` (fixed/linear/exponential wait, exception filter) or any `BaseRetryStrategy` "
        "(ours: full jitter + Retry-After)",
        "`DatabaseRetryEntrypointExecutor` (exponential, max attempts/delay, no jitter) or raise "
        "`RetryRequested(delay)`",
    ),
    (
        "periodic tasks",
        "`@app.periodic(cron=...)`, deferred once per tick across workers",
        "`@pgq.schedule(name, cron)` via `SchedulerManager`, one per name across processes",
    ),
    (
        "stalled-job recovery",
        "worker heartbeats; `get_stalled_jobs` + `retry_job` is the app's call (we do it at worker start)",
        "automatic: a picked job whose heartbeat is older than `heartbeat_timeout` is re-picked",
    ),
]


def main() -> str:
    from importlib.metadata import version

    measured: dict[str, dict[str, Any]] = {s: {} for s in SYSTEMS}
    timings = dict.fromkeys(SYSTEMS, 0.0)
    measurements: list[tuple[str, Callable[[str, str, str], Any]]] = [
        (
            "enqueue",
            lambda system, server, db: asyncio.run(enqueue_rate(system, setup_sync(system, server, db), False)),
        ),
        ("enqueue_keyed", lambda system, server, db: asyncio.run(enqueue_rate(system, setup_sync(system, server, db)))),
        ("drain1", lambda system, server, db: drain_rate(system, server, db, 1)),
        ("drain2", lambda system, server, db: drain_rate(system, server, db, 2)),
        ("drain_fresh", lambda system, server, db: drain_rate(system, server, db, 1, analyzed=False)),
        ("latency", trickle_latency),
        ("collapse", lambda system, server, db: asyncio.run(collapse(system, setup_sync(system, server, db)))),
    ]
    with postgres() as server:
        # measurement by measurement, the systems back to back: whatever else the machine is doing affects
        # each side of a ratio alike
        for key, measure in measurements:
            for n, system in enumerate(SYSTEMS):
                started = time.perf_counter()
                measured[system][key] = measure(system, server, f"q_{key}_{n}")
                timings[system] += time.perf_counter() - started

    def rate(key: str) -> list[str]:
        values = [measured[s][key] for s in SYSTEMS]
        return [f"{v:,.0f}" for v in values] + [f"{values[1] / values[0]:.2f}", f"{values[2] / values[0]:.2f}"]

    def lat(i: int) -> list[str]:
        values = [measured[s]["latency"][i] for s in SYSTEMS]
        return [f"{v:.1f}" for v in values] + [f"{values[1] / values[0]:.2f}", f"{values[2] / values[0]:.2f}"]

    def collapsed(i: int) -> list[str]:
        counts = [measured[s]["collapse"][i] for s in SYSTEMS]
        return [f"{n} job" + ("" if n == 1 else "s") for n in counts] + ["", ""]

    rows = [
        [f"enqueue jobs/s, {ENQUEUE:,} one per call", *rate("enqueue")],
        [f"enqueue jobs/s, {ENQUEUE:,} one per call, per-page dedupe key", *rate("enqueue_keyed")],
        [f"drain jobs/s, {DRAIN:,} no-ops, 1 worker process", *rate("drain1")],
        [f"drain jobs/s, {DRAIN:,} no-ops, 2 worker processes", *rate("drain2")],
        [f"drain jobs/s, {DRAIN:,} no-ops, 1 worker, queue table never analyzed", *rate("drain_fresh")],
        [f"enqueue → start p50 ms ({TRICKLE} jobs at {TRICKLE_RATE:.0f}/s)", *lat(0)],
        ["enqueue → start p99 ms", *lat(1)],
        [f"jobs waiting after {BURST} enqueues for one page, one waiting", *collapsed(0)],
        [f"jobs waiting after {BURST} enqueues for one page, one running", *collapsed(1)],
    ]
    note = (
        f"{machine()}. procrastinate {version('procrastinate')}, pgqueuer {version('pgqueuer')}; one embedded "
        f"Postgres, a fresh database per measurement; {CONCURRENCY} jobs at once per worker (procrastinate "
        f"`concurrency`, pgqueuer `batch_size`). Ratios are pgqueuer / procrastinate (> 1: pgqueuer faster for "
        "rates, slower for latencies). The queue table is analyzed after prefilling, as autovacuum would have "
        "done on a long-lived queue, except in the 'never analyzed' row (a fresh database that received its "
        "jobs within autovacuum's naptime, as in a first backfill). Minutes per system: "
        + ", ".join(f"{s} {t / 60:.1f}" for s, t in timings.items())
        + "."
    )
    measures = show(
        "Queue choice: procrastinate vs pgqueuer (same Postgres, no-op jobs)",
        ["measure", "procrastinate", "pgqueuer (psycopg)", "pgqueuer (asyncpg)", "psycopg ratio", "asyncpg ratio"],
        rows,
        note=note,
    )
    features = show(
        "Queue choice: the features we rely on (from each library's source and docs)",
        ["feature", "procrastinate", "pgqueuer"],
        [list(f) for f in FEATURES],
        note=(
            "A page edited while its job runs needs exactly one follow-up job (the running job may have fetched "
            "the old version). procrastinate's `queueing_lock` gives that; pgqueuer's `dedupe_key` rejects every "
            "enqueue while the job runs (the burst above leaves 0 jobs), so such an edit would wait for the next "
            "reconciliation, and with no per-key lock two jobs of one page could run at once."
        ),
    )
    return measures + "\n" + features


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=SYSTEMS)
    parser.add_argument("--db")
    parser.add_argument("--mode", choices=["drain", "serve"], default="drain")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(run_worker(args.worker, args.db, args.mode))
    else:
        main()
