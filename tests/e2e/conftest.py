"""End-to-end fixtures: fake Confluence + fake Ollama on 127.0.0.1, the real service as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.harness import Api, running, service_env
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


@pytest.fixture(params=["cloud"])
def confluence(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    fake = FakeConfluence(request.param).start()
    fake.add_space("ENG", "Engineering")
    fake.add_space("OPS", "Operations")
    fake.add_user("acc-1", "Ada Lovelace")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture()
def ollama() -> Iterator[FakeOllama]:
    fake = FakeOllama(dim=1024).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture()
def env(db_url: str, confluence: FakeConfluence, ollama: FakeOllama, tmp_path: Path) -> dict[str, str]:
    return service_env(database_url=db_url, confluence=confluence, ollama=ollama, data_dir=tmp_path / "data")


@pytest.fixture()
def api(env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    with running(Api(env, tmp_path / "api.log")) as service:
        yield service  # type: ignore[misc]


class Db:
    """Read-only looks at the service's database, as a user's SQL would."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, page_id: str) -> list[tuple[str, dict[str, Any]]]:
        with psycopg.connect(self.url) as conn:
            cur = conn.execute(
                "SELECT text, metadata_ FROM data_confluence WHERE metadata_->>'ref_doc_id' = %s ORDER BY id",
                (page_id,),
            )
            return [(r[0], r[1]) for r in cur.fetchall()]

    def state(self, page_id: str) -> dict[str, Any] | None:
        with psycopg.connect(self.url) as conn:
            cur = conn.execute(
                "SELECT status, version, chunk_count, reason, last_error, attempts FROM cv_pages WHERE page_id = %s",
                (page_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return dict(zip(("status", "version", "chunk_count", "reason", "last_error", "attempts"), row, strict=True))

    def version_fields(self, page_id: str) -> dict[str, Any]:
        """The page's per-version fields, which live once in `cv_pages` rather than in every row."""
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT version, author, last_modified FROM cv_pages WHERE page_id = %s", (page_id,)
            ).fetchone()
        assert row is not None, f"no state row for page {page_id}"
        return {"version": row[0], "author": row[1], "last_modified": row[2]}

    def total_rows(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM data_confluence").fetchone()
        return int(row[0]) if row else 0

    def duplicates(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) - count(DISTINCT node_id) FROM data_confluence").fetchone()
        return int(row[0]) if row else 0


@pytest.fixture()
def db(db_url: str) -> Db:
    return Db(db_url)


def page_body(sections: int = 3, paragraphs: int = 3, *, seed: str = "") -> str:
    """Storage XHTML with headings and paragraphs, distinct per section, so chunks are stable."""
    parts = []
    for s in range(sections):
        parts.append(f"<h2>Section {s} {seed}</h2>")
        for p in range(paragraphs):
            parts.append(
                f"<p>Paragraph {p} of section {s} {seed}: the deploy pipeline runs canary checks, then promotes "
                f"the build to region {s}-{p} once the error budget allows it.</p>"
            )
    return "".join(parts)
