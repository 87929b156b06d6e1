"""`/status` never names a page to a caller holding only the API token (issue 12: results, counts and errors
never reveal a page the person cannot read, not even through /status). Person-scoped apps hold that token,
so the per-page entries (ids, titles, errors, attachment file names) need `OPERATOR_TOKEN`; the counts stay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.harness import Api, running, service_env
from tests.fakes import ollama
from tests.fakes.confluence import FakeConfluence

API_TOKEN = "app-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
SECRET = "HR layoffs plan Q3"


@pytest.fixture()
def env(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    with FakeConfluence("cloud").start() as confluence, ollama.FakeOllama() as fake_ollama:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO cv_pages (page_id, title, status, last_error, attempts, updated_at) VALUES
                   ('631', %s, 'failed', 'ConfluenceError: 500 on /pages/631', 12, now()),
                   ('632', %s, 'pending', 'ConfluenceError: 500 on /pages/632', 2, now())""",
                (SECRET, SECRET),
            )
        yield service_env(database_url=db_url, confluence=confluence, ollama=fake_ollama, data_dir=tmp_path / "data")


def _status(api: Api, token: str) -> httpx.Response:
    return httpx.get(f"{api.url}/status", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.mark.parametrize("operator_configured", [False, True])
def test_api_token_sees_counts_but_no_page(env: dict[str, str], tmp_path: Path, operator_configured: bool) -> None:
    extra = {"API_TOKEN": API_TOKEN, "SEARCH_SERVICE_IDENTITY": ""}
    if operator_configured:
        extra["OPERATOR_TOKEN"] = OPERATOR_TOKEN
    with running(Api(env | extra, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        answer = _status(api, API_TOKEN)
        assert answer.status_code == 200, answer.text
        shown = answer.json()
        assert shown["pages"].get("failed") == 1 and shown["pages"].get("pending") == 1  # aggregates stay
        assert "631" not in answer.text and "632" not in answer.text and SECRET not in answer.text
        assert shown["failed"] == [] and shown["retrying"] == [] and "OPERATOR_TOKEN" in shown["details"]
        assert _status(api, "wrong-token-0123456789abcdef").status_code == 401
        if operator_configured:
            full = _status(api, OPERATOR_TOKEN)
            assert full.status_code == 200, full.text
            assert [row["page_id"] for row in full.json()["failed"]] == ["631"]
            assert [row["title"] for row in full.json()["retrying"]] == [SECRET]
            assert "details" not in full.json()
