"""The fake Confluence itself: its CQL slice, its raw HTTP shape, and its command line."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_cql import CqlError, CqlItem, parse_cql

ITEM = CqlItem(
    id="7", type="page", space_key="ENG", last_modified=datetime(2024, 5, 1, 12, 30, 59, tzinfo=UTC)
)


@pytest.mark.parametrize(
    ("cql", "matches"),
    [
        ("type in (page, blogpost)", True),
        ('type = "blogpost"', False),
        ('type in (page, blogpost) and space in ("OPS", "ENG") order by created asc', True),
        ('space = "OPS"', False),
        ('lastmodified >= "2024-05-01 12:30"', True),
        ('lastmodified >= "2024-05-01 12:31"', False),
        ('id in ("1", "7")', True),
        ("id in (1, 2)", False),
    ],
)
def test_cql_slice(cql: str, matches: bool) -> None:
    assert parse_cql(cql)(ITEM) is matches


@pytest.mark.parametrize("cql", ["", "title ~ deploy", "type in page", 'lastmodified >= "last week"'])
def test_cql_outside_the_slice_is_refused(cql: str) -> None:
    with pytest.raises(CqlError):
        parse_cql(cql)


def test_auth_faults_and_counters() -> None:
    with FakeConfluence("datacenter") as fake:
        fake.put_page("1", title="T", body="<p/>")
        url = f"{fake.base_url}/rest/api/content/1"
        assert httpx.get(url).status_code == 401
        good = {"Authorization": "Bearer dc-pat"}
        fake.fail_next(1, status=429, retry_after=3, path_contains="/content/1")
        limited = httpx.get(url, headers=good)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
        assert httpx.get(url, headers=good).json()["version"]["number"] == 1
        assert fake.count("/content/1") == 3 and fake.requests[0] == ("GET", "/rest/api/content/1")
        fake.reset_counters()
        assert fake.requests == []


def test_runs_as_a_process() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.confluence",
            "--port",
            "0",
            "--deployment",
            "cloud",
            "--pages",
            "30",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/wiki")
        response = httpx.get(f"{base_url}/api/v2/pages", auth=("bot@example.com", "cloud-token"), timeout=5)
        assert response.status_code == 200 and len(response.json()["results"]) == 25
        assert response.json()["_links"]["next"].startswith("/wiki/api/v2/pages?")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
