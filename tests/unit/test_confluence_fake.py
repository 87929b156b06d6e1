"""The fake Confluence itself: its CQL slice, its raw HTTP shape, and its command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_cql import CqlError, CqlItem, parse_cql

ITEM = CqlItem(id="7", type="page", space_key="ENG", last_modified=datetime(2024, 5, 1, 12, 30, 59, tzinfo=UTC))


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


# --- the documented rules the fake enforces (each cited in tests/fakes/confluence_api.py) -------------------
CLOUD_AUTH = ("bot@example.com", "cloud-token")
DC_AUTH = {"Authorization": "Bearer dc-pat"}


@pytest.fixture()
def cloud() -> Iterator[FakeConfluence]:
    with FakeConfluence("cloud") as fake:
        yield fake


def test_v2_status_is_a_repeated_enum_parameter(cloud: FakeConfluence) -> None:
    cloud.put_page("1", title="P", body="<p/>")
    cloud.put_page("2", title="B", body="<p/>", content_type="blogpost")
    cloud.set_status("2", "trashed")

    def get(path: str, params: Any) -> httpx.Response:
        return httpx.get(f"{cloud.base_url}/api/v2/{path}", params=params, auth=CLOUD_AUTH)

    assert get("pages/1", [("status", "current"), ("status", "archived")]).status_code == 200
    assert get("pages/1", {"status": "current,archived"}).status_code == 400  # comma-joined: not an enum value
    assert get("blogposts/2", [("status", "current"), ("status", "trashed")]).json()["status"] == "trashed"
    assert get("blogposts/2", [("status", "current"), ("status", "archived")]).status_code == 400
    assert get("blogposts", {"status": "archived"}).status_code == 400
    assert get("blogposts/2", {}).status_code == 404, "default status is current only"


def test_v2_limits_and_ids_per_request(cloud: FakeConfluence) -> None:
    cloud.bulk_pages("ENG", 3)
    url = f"{cloud.base_url}/api/v2/pages"
    assert httpx.get(url, params={"limit": "251"}, auth=CLOUD_AUTH).status_code == 400
    assert httpx.get(url, params={"limit": "0"}, auth=CLOUD_AUTH).status_code == 400
    ids = ",".join(str(i) for i in range(251))
    assert httpx.get(url, params={"id": ids}, auth=CLOUD_AUTH).status_code == 400
    assert httpx.get(url, params={"id": ",".join(str(i) for i in range(250))}, auth=CLOUD_AUTH).status_code == 200


def test_v2_ancestors_nearest_limit_without_cursor_and_any_node_type(cloud: FakeConfluence) -> None:
    cloud.add_space("ENG", homepage="Home")
    cloud.add_container("f", title="Folder")
    cloud.put_page("p0", title="P0", body="<p/>", parent_id="f")
    for level in range(1, 30):
        cloud.put_page(f"p{level}", title=f"P{level}", body="<p/>", parent_id=f"p{level - 1}")
    url = f"{cloud.base_url}/api/v2/pages/p29/ancestors"
    default = httpx.get(url, auth=CLOUD_AUTH).json()
    assert [a["id"] for a in default["results"]] == [f"p{level}" for level in range(4, 29)]  # nearest 25
    assert "next" not in default["_links"]
    everything = httpx.get(url, params={"limit": "250"}, auth=CLOUD_AUTH).json()["results"]
    assert [(a["id"], a["type"]) for a in everything[:2]] == [("983000", "page"), ("f", "folder")]
    assert httpx.get(url, params={"limit": "251"}, auth=CLOUD_AUTH).status_code == 400
    above = httpx.get(f"{cloud.base_url}/api/v2/folders/f/ancestors", auth=CLOUD_AUTH).json()["results"]
    assert above == [{"id": "983000", "type": "page"}]
    assert httpx.get(f"{cloud.base_url}/api/v2/pages/f", auth=CLOUD_AUTH).status_code == 404, "a folder is no page"


def test_datacenter_restrictions_expand_groups_only_by_default() -> None:
    with FakeConfluence("datacenter") as fake:
        fake.put_page("1", title="P", body="<p/>", restricted=True)
        url = f"{fake.base_url}/rest/api/content/1/restriction/byOperation/read"
        default = httpx.get(url, headers=DC_AUTH).json()["restrictions"]
        assert "user" not in default and default["_expandable"]["user"] and default["group"]["size"] == 0
        both = httpx.get(url, params={"expand": "restrictions.user,restrictions.group"}, headers=DC_AUTH).json()
        assert both["restrictions"]["user"]["size"] == 1


def test_datacenter_status_any_is_current_and_trashed_only() -> None:
    with FakeConfluence("datacenter") as fake:
        for page_id, status in (("1", "trashed"), ("2", "archived")):
            fake.put_page(page_id, title="P", body="<p/>")
            fake.set_status(page_id, status)

        def get(page_id: str) -> httpx.Response:
            return httpx.get(f"{fake.base_url}/rest/api/content/{page_id}", params={"status": "any"}, headers=DC_AUTH)

        assert get("1").json()["status"] == "trashed"
        assert get("2").status_code == 404


def test_user_bulk_answers_200_ids_and_long_urls_are_refused(cloud: FakeConfluence) -> None:
    ids = [f"a{i}" for i in range(250)]
    for user_id in ids:
        cloud.add_user(user_id, user_id)
    url = f"{cloud.base_url}/rest/api/user/bulk"
    answer = httpx.get(url, params=[("accountId", i) for i in ids], auth=CLOUD_AUTH).json()
    assert len(answer["results"]) == 200
    long_ids: list[tuple[str, str | int | float | bool | None]] = [("accountId", "x" * 120 + str(i)) for i in range(80)]
    assert httpx.get(url, params=long_ids, auth=CLOUD_AUTH).status_code == 414


def test_cql_context_content_statuses(cloud: FakeConfluence) -> None:
    cloud.put_page("1", title="P", body="<p/>")
    cloud.put_page("2", title="Q", body="<p/>")
    cloud.set_status("2", "trashed")
    url = f"{cloud.base_url}/rest/api/content/search"
    cql = {"cql": "type in (page, blogpost)"}
    assert [r["id"] for r in httpx.get(url, params=cql, auth=CLOUD_AUTH).json()["results"]] == ["1"]
    trashed = cql | {"cqlcontext": '{"contentStatuses":["trashed","deleted"]}'}
    assert [r["id"] for r in httpx.get(url, params=trashed, auth=CLOUD_AUTH).json()["results"]] == ["2"]
    assert httpx.get(url, params=cql | {"cqlcontext": "nope"}, auth=CLOUD_AUTH).status_code == 400


def test_foreign_next_links_on_request(cloud: FakeConfluence) -> None:
    cloud.bulk_pages("ENG", 30)
    cloud.next_link_origin = "http://127.0.0.1:9"
    page = httpx.get(f"{cloud.base_url}/api/v2/pages", auth=CLOUD_AUTH).json()
    assert page["_links"]["next"].startswith("http://127.0.0.1:9/wiki/api/v2/pages?")
