"""What every benchmark shares: a throwaway embedded Postgres, timing, and table output."""

from __future__ import annotations

import contextlib
import platform
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

console = Console()
RESULTS = Path(__file__).with_name("RESULTS.md")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh embedded PostgreSQL (pgvector) for one benchmark, removed afterwards; set up as the service's
    embedded server is (`app.embedded.start_embedded`: shared_buffers a quarter of the machine's memory), so a
    benchmark measures what `make run` gets."""
    from app.embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="cv-bench-") as tmp:
        pgdata = Path(tmp) / "pg"
        pgdata.mkdir()
        server = start_embedded(pgdata)
        try:
            yield str(server.get_uri())
        finally:  # before the directory goes: pgserver's exit hook needs its files to know it is the last user
            server.cleanup()


def fresh_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> str:
    import os

    day = f"{datetime.now(UTC):%Y-%m-%d}"
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {day}"


def show(title: str, columns: list[str], rows: list[list[str]], note: str = "") -> str:
    """Print a rich table and return the same as Markdown (for bench/RESULTS.md)."""
    table = Table(title=title, caption=note or None)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    md = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if note:
        md += ["", note]
    return "\n".join(md) + "\n"
