"""Permission faults that must fail closed, end to end (issue 12; security review findings F1-F3): the real
service, real Postgres, the fake Confluence Cloud wiki of `test_permissions_e2e` and its oracle.

- A caller naming `service-account` gets no unfiltered view (only the operator's SEARCH_SERVICE_IDENTITY can).
- One refused ancestors read leaves a path that is not complete (a new page's, or the old one after a move):
  the page stays hidden, and the permission sync reads the path again before showing it to anyone.
- A restriction that excludes the service account makes Confluence answer 404 for the page: its indexed
  subtree is hidden (the page's restriction is not established), not left visible under its old access.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.harness import Api, cli_path, running, service_env, wait_until
from tests.e2e.test_permissions_e2e import PEOPLE, QUERY, Wiki, _body, build_wiki, found, index_all
from tests.fakes.confluence import FakeConfluence, _Fault
from tests.fakes.ollama import FakeOllama

Service = tuple[Api, dict[str, str]]


@pytest.fixture()
def wiki() -> Iterator[Wiki]:
    fake = FakeConfluence("cloud").start()
    try:
        yield build_wiki(fake)
    finally:
        fake.stop()


@pytest.fixture()
def service(db_url: str, wiki: Wiki, tmp_path: Path) -> Iterator[Service]:
    ollama = FakeOllama(dim=1024).start()
    env = service_env(database_url=db_url, confluence=wiki.fake, ollama=ollama, data_dir=tmp_path / "data")
    env.update({"SEARCH_SERVICE_IDENTITY": "", "PERMISSION_SYNC_INTERVAL": "3600"})
    try:
        with running(Api(env, tmp_path / "api.log")) as api:
            index_all(api, wiki, db_url)
            yield api, env
    finally:
        ollama.stop()


def refuse_nth(fake: FakeConfluence, needle: str, nth: int, status: int) -> None:
    """Answer `status` to the `nth` request whose path contains `needle`, and only to it (the page fetch
    reads the breadcrumb first; the permission client's path read is the 2nd ancestors request)."""
    seen = 0
    original: Callable[[str], _Fault | None] = fake._fault_for

    def refuse(path: str) -> _Fault | None:
        nonlocal seen
        if needle in path:
            seen += 1
            if seen == nth:
                return _Fault(1, status, None, None)
        return original(path)

    fake._fault_for = refuse  # type: ignore[method-assign]


def refuse_from(fake: FakeConfluence, needle: str, nth: int, status: int) -> Callable[[], None]:
    """Answer `status` to the `nth` request whose path contains `needle` and every later one, until the
    returned function is called (Confluence refusing for a while, then answering again)."""
    seen = 0
    refusing = True
    original: Callable[[str], _Fault | None] = fake._fault_for

    def refuse(path: str) -> _Fault | None:
        nonlocal seen
        if needle in path:
            seen += 1
            if refusing and seen >= nth:
                return _Fault(1, status, None, None)
        return original(path)

    def release() -> None:
        nonlocal refusing
        refusing = False

    fake._fault_for = refuse  # type: ignore[method-assign]
    return release


def page_jobs_idle(db_url: str) -> bool:
    """No page job waiting or running (access re-checks may still wait for their backoff)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND task_name = 'cv:index_page'"
        ).fetchone()
    return row is not None and row[0] == 0


def stored_path(db_url: str, page_id: str) -> list[str] | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT path FROM cv_page_access WHERE page_id = %s", (page_id,)).fetchone()
    return list(row[0]) if row else None


def queue_idle(db_url: str) -> bool:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND task_name NOT LIKE "
            "'%permission_sync'"
        ).fetchone()
    return row is not None and row[0] == 0


def sync_permissions(env: dict[str, str]) -> None:
    out = subprocess.run([cli_path(), "sync-permissions"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def readers(api: Api, wiki: Wiki, page_id: str) -> tuple[set[str], set[str]]:
    """(people whose search finds `page_id`, people the rule lets read it)."""
    return {p for p in PEOPLE if page_id in found(api, p)}, {p for p in PEOPLE if wiki.perms.may_read(p, page_id)}


def test_a_caller_naming_the_service_account_is_refused(service: Service) -> None:
    api, _ = service
    for value in ("service-account", "Service-Account"):
        response = httpx.get(
            f"{api.url}/search", params={"q": QUERY, "k": 100}, headers={"X-Confluence-User": value}, timeout=30
        )
        assert response.status_code == 403, (value, response.status_code, response.text[:200])


@pytest.mark.parametrize("status", [403, 404])
def test_a_path_not_read_in_full_hides_the_page_until_it_is_read_again(
    service: Service, wiki: Wiki, db_url: str, status: int
) -> None:
    api, env = service
    # A new page under 210, whose root 200 is restricted to p-named and g-sre.
    wiki.fake.put_page("2999", title="ENG page 2999", body=_body("2999", "new"), space_key="ENG", parent_id="210")
    wiki.pages["2999"] = "page"
    # The page fetch reads the breadcrumb (1st ancestors request); the permission client's path read (2nd) and
    # every later one are refused until released.
    release = refuse_from(wiki.fake, "/pages/2999/ancestors", 2, status)
    assert api.webhook({"event": "page_created", "page": {"id": 2999}}).status_code == 202
    wait_until(
        lambda: stored_path(db_url, "2999") is not None and page_jobs_idle(db_url), timeout=60, what="2999 job"
    )
    assert readers(api, wiki, "2999")[0] == set()  # hidden from everyone, the service cannot know the path
    # Confluence answers again: the access re-check (queued by the failure, with backoff) reads the path,
    # without waiting for the scheduled sync.
    release()
    wait_until(lambda: "200" in (stored_path(db_url, "2999") or []), timeout=60, what="2999 path re-read")
    got, allowed = readers(api, wiki, "2999")
    assert got == allowed and "p-space" not in got
    sync_permissions(env)  # and the sync agrees
    got, allowed = readers(api, wiki, "2999")
    assert got == allowed and "p-space" not in got


def test_a_move_whose_path_read_fails_hides_the_page_and_its_subtree(
    service: Service, wiki: Wiki, db_url: str
) -> None:
    api, env = service
    assert {"130", "131", "132"} <= found(api, "p-space")
    wiki.fake.move_page("130", parent_id="210")  # 130 and its children 131, 132 into the tree restricted at 200
    refuse_nth(wiki.fake, "/pages/130/ancestors", 2, 404)
    assert api.webhook({"event": "page_moved", "page": {"id": 130}}).status_code == 202
    wait_until(lambda: queue_idle(db_url) and "130" not in found(api, "p-space"), timeout=60, what="130 hidden")
    assert not {"130", "131", "132"} & found(api, "p-space")
    sync_permissions(env)
    for page_id in ("130", "131", "132"):
        assert "200" in (stored_path(db_url, page_id) or []), page_id
        got, allowed = readers(api, wiki, page_id)
        assert got == allowed and "p-space" not in got, page_id


def test_a_restriction_excluding_the_service_account_hides_the_subtree(
    service: Service, wiki: Wiki, db_url: str
) -> None:
    api, _ = service
    assert {"131", "132"} <= found(api, "p-space")
    wiki.perms.restrict("130", groups=["g-leads"])  # the service account is not in it: Confluence answers 404
    for page_id in ("130", "131", "132"):
        wiki.fake.fail_next(10**6, status=404, path_contains=f"/{page_id}")
    body = {"eventType": "avi:confluence:permissions_updated:page", "content": {"id": "130", "type": "page"}}
    assert api.webhook(body).status_code == 202
    wait_until(lambda: queue_idle(db_url) and stored_path(db_url, "130") is None, timeout=60, what="130 job")
    assert not {"130", "131", "132"} & found(api, "p-space")
    assert not {"130", "131", "132"} & found(api, "p-lead")  # the service can no longer read them for anyone


def test_folder_restriction_and_move_events_reach_the_pages_below(
    service: Service, wiki: Wiki, db_url: str
) -> None:
    api, _ = service
    # An open folder under the ENG root with a page below it (indexed), beside the wiki's restricted folder 900.
    wiki.fake.add_container("7000", title="Open folder", space_key="ENG", parent_id="100")
    wiki.fake.put_page("7001", title="ENG page 7001", body=_body("7001", "in a folder"), space_key="ENG",
                       parent_id="7000")
    wiki.pages["7001"] = "page"
    assert api.webhook({"event": "page_created", "page": {"id": 7001}}).status_code == 202
    wait_until(lambda: "7001" in found(api, "p-space"), timeout=60, what="7001 indexed")
    assert {"901", "902"} <= found(api, "p-sre")

    # The folder 900's restriction narrows to g-sec (Connect and Forge event shapes); folder 7000 moves under
    # 210, in the tree restricted at 200 (Forge `avi:confluence:moved:folder`).
    wiki.perms.restrict("900", groups=["g-sec"])
    connect = api.webhook({"event": "content_permissions_updated", "content": {"id": 900, "type": "folder"}})
    forge = {"eventType": "avi:confluence:permissions_updated:folder", "content": {"id": "900", "type": "folder"}}
    assert (connect.status_code, api.webhook(forge).status_code) == (202, 202)
    wiki.fake.move_page("7000", parent_id="210")
    assert api.webhook({"eventType": "avi:confluence:moved:folder", "folder": {"id": "7000"}}).status_code == 202

    wait_until(lambda: queue_idle(db_url) and "7001" not in found(api, "p-space"), timeout=60, what="events done")
    assert "200" in (stored_path(db_url, "7001") or [])
    for page_id in ("901", "902", "7001"):
        got, allowed = readers(api, wiki, page_id)
        assert got == allowed, page_id
