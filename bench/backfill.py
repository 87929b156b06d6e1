"""Backfill: pages/s and peak RSS of `confluence-vectors sync` and of a worker for 5,000 and 20,000 pages.

The requirement: memory must not grow with space size. Everything runs as its own process on loopback:

* the fake Confluence Cloud (`python -m tests.fakes.confluence --pages N`, one-paragraph pages, one chunk
  each), listing up to `MAX_LIMIT` results per response like Confluence Cloud's v2 API;
* the fake Ollama (`python -m tests.fakes.ollama`) with zero cost per input (it still computes its
  hashing-trick vectors, a few hundred microseconds per input);
* first `confluence-vectors sync --space ENG` alone, the real backfill: streamed enumeration, one version
  lookup per batch, then one transaction per batch marks its changed pages pending and inserts their jobs;
* then one `confluence-vectors worker` (WORKER_CONCURRENCY=`CONCURRENCY`) draining that backlog until every
  page is `indexed` in cv_pages (or `DRAIN_TIMEOUT` passes).

The two run one after the other so each rate is its own (on a 2-core machine they slow each other down when
overlapped, and so does Postgres serving both). Whether the planner had statistics for `procrastinate_jobs`
when the worker started is shown: without them (a table never analyzed, e.g. a fresh database whose first
backfill enqueued the jobs within autovacuum's naptime) procrastinate's job fetch checks every waiting job's
lock before picking one, hundreds of ms per job with thousands waiting, so the indexing rate collapses until
autovacuum analyzes the table. Enumeration +
enqueue rate: pages / the `seconds` the sync reports (process start-up excluded; the wall time including
start-up is shown too). Peak RSS of each process is its own VmHWM, polled
until it exits (`tests.e2e.harness.PeakRss`; `ru_maxrss` would include the benchmark process's own size).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.common import fresh_database, machine, postgres, show
from tests.e2e.harness import PeakRss

SIZES = (5_000, 20_000)
MAX_LIMIT = 250  # Confluence Cloud v2 lists at most 250 results per response
CONCURRENCY = 4
DRAIN_TIMEOUT = 240.0  # seconds the worker gets per size; if it has not indexed every page by then, the rate
# reached is reported (the indexing rate does not depend on space size; memory is what must not grow)
_REPORT = re.compile(r"Enqueued (\d+) pages \((\d+) seen\) in ([\d.]+)s")


@dataclass
class Run:
    pages: int
    sync_wall: float = 0.0
    sync_seconds: float = 0.0
    seen: int = 0
    queued: int = 0
    indexed: int = 0
    drain_seconds: float = 0.0
    sync_rss_mb: float = 0.0
    worker_rss_mb: float = 0.0
    worker_rss_started_mb: float = 0.0
    jobs_analyzed: bool = False  # planner statistics for procrastinate_jobs existed when the worker started


class FakeServers:
    """The fake Confluence (N pages in ENG) and the fake Ollama, each its own process on 127.0.0.1."""

    def __init__(self, pages: int) -> None:
        self.confluence = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.confluence", "--pages", str(pages), "--max-limit", str(MAX_LIMIT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ollama = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.ollama", "--per-input-delay", "0"], stdout=subprocess.PIPE, text=True
        )
        assert self.confluence.stdout is not None and self.ollama.stdout is not None
        self.confluence_url = self.confluence.stdout.readline().strip()
        credentials = self.confluence.stdout.readline().split()
        self.credentials = dict(item.split("=", 1) for item in credentials)
        self.ollama_url = self.ollama.stdout.readline().strip()
        if not self.confluence_url.startswith("http://127.0.0.1") or not self.ollama_url.startswith("http://127.0.0.1"):
            self.close()
            raise RuntimeError("fake servers did not start")

    def close(self) -> None:
        for proc in (self.confluence, self.ollama):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def cli() -> str:
    return str(Path(sys.executable).parent / "confluence-vectors")


def environment(database_url: str, fakes: FakeServers, data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFLUENCE_", "OLLAMA_", "EMBED_", "WEBHOOK_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": data_dir,
            "CONFLUENCE_BASE_URL": fakes.confluence_url,
            "OLLAMA_BASE_URL": fakes.ollama_url,
            "WORKER_CONCURRENCY": str(CONCURRENCY),
            "RECONCILE_INTERVAL": "0",
            "DEDUPE_WINDOW_SECONDS": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            **fakes.credentials,
        }
    )
    return env


def reap(proc: subprocess.Popen[bytes], peak: PeakRss) -> float:
    """Wait for `proc` to exit; its own peak RSS in MB (see `PeakRss` for why not `ru_maxrss`)."""
    proc.wait()
    return peak.result()


def vm_hwm_mb(pid: int) -> float:
    """Peak RSS so far of a running process (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def count(db_url: str, query: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def analyzed(db_url: str) -> bool:
    """Whether procrastinate_jobs has planner statistics (reltuples is -1 until the first ANALYZE)."""
    return count(db_url, "SELECT (reltuples >= 0)::int FROM pg_class WHERE relname = 'procrastinate_jobs'") == 1


def wait_worker_ready(db_url: str, worker: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}: {log.read_text()[-2000:]}")
        try:
            if count(db_url, "SELECT count(*) FROM procrastinate_workers"):
                return
        except psycopg.Error:  # not migrated yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready after {timeout}s: {log.read_text()[-2000:]}")


def run_size(server: str, n: int, tmp: Path) -> Run:
    """Sync alone (the enumeration rate is the sync's own, not shared with a busy worker on a small machine),
    then a worker drains the backlog."""
    run = Run(pages=n)
    fakes = FakeServers(n)
    try:
        db_url = fresh_database(server, f"b_backfill_{n}")
        env = environment(db_url, fakes, str(tmp / "data"))
        started = time.monotonic()
        sync = subprocess.Popen(
            [cli(), "sync", "--space", "ENG"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert sync.stdout is not None
        sync_peak = PeakRss(sync.pid)
        output = sync.stdout.read()  # until it exits (the progress bar is not live on a pipe)
        run.sync_rss_mb = reap(sync, sync_peak)
        run.sync_wall = time.monotonic() - started
        text = output.decode(errors="replace")
        match = _REPORT.search(text)
        if sync.returncode != 0 or match is None:
            raise RuntimeError(f"sync failed ({sync.returncode}): {text[-3000:]}")
        run.queued, run.seen, run.sync_seconds = int(match[1]), int(match[2]), float(match[3])

        run.jobs_analyzed = analyzed(db_url)
        worker_log = tmp / f"worker-{n}.log"
        drain_started = time.monotonic()
        with worker_log.open("wb") as log:
            worker = subprocess.Popen([cli(), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        worker_peak = PeakRss(worker.pid)
        try:
            wait_worker_ready(db_url, worker, worker_log)
            run.worker_rss_started_mb = vm_hwm_mb(worker.pid)
            query = "SELECT count(*) FROM cv_pages WHERE status = 'indexed'"
            while True:
                run.indexed = count(db_url, query)
                if run.indexed >= n or time.monotonic() - drain_started >= DRAIN_TIMEOUT:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited: {worker_log.read_text()[-2000:]}")
                time.sleep(0.5)
            run.drain_seconds = time.monotonic() - drain_started
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            run.worker_rss_mb = reap(worker, worker_peak)
    finally:
        fakes.close()
    return run


def main() -> str:
    sizes = [int(s) for s in os.environ.get("BENCH_BACKFILL_SIZES", ",".join(map(str, SIZES))).split(",")]
    runs: list[Run] = []
    with postgres() as server, tempfile.TemporaryDirectory(prefix="cv-bench-backfill-") as tmp:
        for n in sizes:
            runs.append(run_size(server, n, Path(tmp)))
    rows = []
    for r in runs:
        complete = r.indexed >= r.pages
        rows.append(
            [
                f"{r.pages:,}",
                f"{r.seen / r.sync_seconds:,.0f}",
                f"{r.sync_seconds:.1f} ({r.sync_wall:.1f})",
                f"{r.indexed / r.drain_seconds:,.0f}"
                + ("" if complete else f" ({r.indexed:,} in {r.drain_seconds:.0f} s)"),
                "yes" if r.jobs_analyzed else "no",
                f"{r.sync_wall + r.drain_seconds:.0f}" if complete else "—",
                f"{r.sync_rss_mb:.0f}",
                f"{r.worker_rss_started_mb:.0f} → {r.worker_rss_mb:.0f}",
            ]
        )
    notes = [f"{machine()}."]
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        notes.append(
            f"Peak RSS({large.pages:,}) / peak RSS({small.pages:,}): sync {large.sync_rss_mb / small.sync_rss_mb:.2f}, "
            f"worker {large.worker_rss_mb / small.worker_rss_mb:.2f} (target ≈ 1.0; "
            f"{large.sync_rss_mb - small.sync_rss_mb:+.0f} MB and {large.worker_rss_mb - small.worker_rss_mb:+.0f} MB "
            f"for {large.pages / small.pages:.0f}x the pages)."
        )
    incomplete = [r for r in runs if r.indexed < r.pages]
    if incomplete:
        notes.append(
            f"Indexing stopped after {DRAIN_TIMEOUT:.0f} s to bound the run time for "
            + ", ".join(f"{r.pages:,} pages ({r.indexed:,} indexed)" for r in incomplete)
            + ": its rate is over the pages indexed by then, and the worker's peak RSS covers that part."
        )
    notes.append(
        f"Real `confluence-vectors sync --space ENG`, then a `confluence-vectors worker` (WORKER_CONCURRENCY="
        f"{CONCURRENCY}) draining the backlog, against a fake Confluence Cloud process ({MAX_LIMIT} results per "
        "list response, one-chunk pages) and a zero-cost fake Ollama process; Postgres and the fakes share the "
        "machine's cores. Enumerate + enqueue = pages / the sync's own reported seconds (start-up excluded; "
        "the wall time with start-up in brackets). Indexing = pages / seconds from starting the worker until all "
        "are `indexed` in cv_pages. End to end = sync wall time + indexing time. Peak RSS = VmHWM of each "
        "process, polled to its exit (worker: once started → at exit). Jobs table analyzed: whether Postgres had "
        "statistics for procrastinate_jobs when the worker started; without them each job fetch checks the "
        "lock of every waiting job before picking one, until autovacuum analyzes the table."
    )
    return show(
        "Backfill: enumeration, indexing rate and peak memory by space size",
        [
            "pages",
            "enumerate + enqueue pages/s",
            "sync s (with start-up)",
            "indexing pages/s",
            "jobs table analyzed",
            "end to end s",
            "sync peak RSS MB",
            "worker peak RSS MB",
        ],
        rows,
        note=" ".join(notes),
    )


if __name__ == "__main__":
    main()
