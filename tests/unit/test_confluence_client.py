"""`ConfluenceClient` against the fake Confluence over real HTTP, in both deployment shapes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.confluence import ConfluenceClient
from app.errors import ConfluenceAuthError, ConfluenceUnavailable, PageNotFound
from app.retry import Backoff
from tests import conftest
from tests.fakes.confluence import FakeConfluence


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(params=["cloud", "datacenter"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    with FakeConfluence(request.param) as server:
        server.add_space("ENG", "Engineering")
        server.add_user("acc-1", "Ada Lovelace")
        yield server


@pytest.fixture()
def sleep() -> RecordingSleep:
    return RecordingSleep()


def make_client(
    fake: FakeConfluence, sleep: RecordingSleep | None = None, **overrides: Any
) -> ConfluenceClient:
    values: dict[str, Any] = {
        "confluence_base_url": fake.base_url,
        "confluence_deployment": fake.deployment,
        "confluence_timeout": 5.0,
        **fake.credentials,
    }
    backoff = overrides.pop("backoff", None)
    on_retry = overrides.pop("on_retry", None)
    settings = conftest.make_settings(**(values | overrides))
    return ConfluenceClient(settings, sleep=sleep or RecordingSleep(), backoff=backoff, on_retry=on_retry)


def other_secret(fake: FakeConfluence) -> dict[str, Any]:
    if fake.deployment == "cloud":
        return {"confluence_api_token": "wrong-token-s3cr3t"}
    return {"confluence_pat": "wrong-pat-s3cr3t"}


# --- get_page -----------------------------------------------------------------------------------------------
async def test_get_page_reads_every_field(fake: FakeConfluence) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    fake.put_page("10", title="Root", body="<p>root</p>")
    fake.put_page("11", title="Guides", body="<p>guides</p>", parent_id="10")
    fake.put_page("12", title="Deploy", body="<p>v1</p>", parent_id="11", labels=["ops", "deploy"])
    version = fake.put_page(
        "12",
        title="Deploy guide",
        body="<p>v2</p>",
        parent_id="11",
        labels=["ops", "deploy"],
        last_modified=when,
    )
    async with make_client(fake) as client:
        page = await client.get_page("12")
    assert (page.id, page.title, page.version, version) == ("12", "Deploy guide", 2, 2)
    assert page.body_storage == "<p>v2</p>"
    assert (page.space_key, page.space_name) == ("ENG", "Engineering")
    assert (page.author, page.author_id) == ("Ada Lovelace", "acc-1")
    assert page.last_modified == when and page.last_modified.tzinfo is not None
    assert page.labels == ("ops", "deploy")
    assert page.ancestors == ("Root", "Guides")
    assert page.url == f"{fake.base_url}/spaces/ENG/pages/12/Deploy+guide"
    assert (page.status, page.content_type, page.restricted) == ("current", "page", False)


async def test_restriction_on_an_ancestor_is_inherited(fake: FakeConfluence) -> None:
    fake.put_page("20", title="Secret root", body="<p/>", restricted=True)
    fake.put_page("21", title="Leaf", body="<p/>", parent_id="20")
    fake.put_page("22", title="Open", body="<p/>")
    async with make_client(fake) as client:
        assert (await client.get_page("21")).restricted
        assert (await client.get_page("20")).restricted
        assert not (await client.get_page("22")).restricted
        fake.set_restricted("20", False)
        assert not (await client.get_page("21")).restricted


@pytest.mark.parametrize("content_type", [None, "blogpost"])
async def test_blogpost(fake: FakeConfluence, content_type: Any) -> None:
    fake.add_user("acc-2", "Grace Hopper")
    fake.put_page(
        "30", title="News", body="<p>n</p>", content_type="blogpost", author_id="acc-2", labels=["x"]
    )
    async with make_client(fake) as client:
        post = await client.get_page("30", content_type)
    assert (post.content_type, post.title, post.author, post.labels) == (
        "blogpost",
        "News",
        "Grace Hopper",
        ("x",),
    )
    assert post.ancestors == () and post.url.startswith(f"{fake.base_url}/spaces/ENG/blog/")


async def test_missing_or_purged_page_is_page_not_found(fake: FakeConfluence) -> None:
    fake.put_page("40", title="Soon gone", body="<p/>")
    async with make_client(fake) as client:
        with pytest.raises(PageNotFound):
            await client.get_page("999")
        fake.delete_page("40")
        with pytest.raises(PageNotFound):
            await client.get_page("40")
        with pytest.raises(PageNotFound):
            await client.get_page("40", "page")


@pytest.mark.parametrize("status", ["trashed", "archived", "deleted"])
async def test_non_current_page_comes_back_with_its_status(fake: FakeConfluence, status: str) -> None:
    fake.put_page("50", title="Old", body="<p/>")
    fake.set_status("50", status)
    async with make_client(fake) as client:
        page = await client.get_page("50")
        assert (page.status, page.is_current, page.space_key) == (status, False, "ENG")
        fake.set_status("50", "current")
        assert (await client.get_page("50")).is_current


async def test_move_keeps_the_version_and_changes_the_space(fake: FakeConfluence) -> None:
    fake.put_page("60", title="Mover", body="<p/>")
    fake.add_space("OPS", "Operations")
    async with make_client(fake) as client:
        before = await client.get_page("60")
        fake.move_page("60", space_key="OPS")
        after = await client.get_page("60")
    assert (after.version, after.space_key, after.space_name) == (before.version, "OPS", "Operations")


async def test_more_than_fifty_labels_are_all_read(fake: FakeConfluence) -> None:
    labels = [f"l{i:02d}" for i in range(60)]
    fake.put_page("70", title="Tagged", body="<p/>", labels=labels)
    async with make_client(fake) as client:
        assert list((await client.get_page("70")).labels) == labels


async def test_lookups_are_cached_across_pages(fake: FakeConfluence) -> None:
    fake.put_page("80", title="Root", body="<p/>")
    for i in range(81, 85):
        fake.put_page(str(i), title=f"Child {i}", body="<p/>", parent_id="80")
    async with make_client(fake) as client:
        await client.get_page("81")
        fake.reset_counters()
        for i in range(82, 85):
            await client.get_page(str(i))
    assert fake.count("/spaces") == 0 and fake.count("/user") == 0


# --- auth ---------------------------------------------------------------------------------------------------
async def test_bad_credentials_fail_fast_naming_the_setting(fake: FakeConfluence) -> None:
    fake.put_page("90", title="P", body="<p/>")
    client = make_client(fake, **other_secret(fake))
    async with client:
        with pytest.raises(ConfluenceAuthError) as caught:
            await client.get_page("90")
    message = str(caught.value)
    assert ("CONFLUENCE_API_TOKEN" if fake.deployment == "cloud" else "CONFLUENCE_PAT") in message
    assert "s3cr3t" not in message and "s3cr3t" not in repr(client) and "s3cr3t" not in repr(caught.value)
    assert fake.count() == 1, "401 must not be retried"


async def test_forbidden_is_an_auth_error_not_a_missing_page(fake: FakeConfluence) -> None:
    fake.put_page("91", title="P", body="<p/>")
    fake.fail_next(1, status=403)
    async with make_client(fake) as client:
        with pytest.raises(ConfluenceAuthError, match="403"):
            await client.get_page("91")


async def test_check_credentials(fake: FakeConfluence) -> None:
    async with make_client(fake) as client:
        await client.check_credentials()
    async with make_client(fake, **other_secret(fake)) as client:
        with pytest.raises(ConfluenceAuthError):
            await client.check_credentials()


async def test_no_credentials_configured_sends_nothing(fake: FakeConfluence) -> None:
    settings = conftest.make_settings(
        confluence_base_url=fake.base_url, confluence_deployment=fake.deployment
    )
    async with ConfluenceClient(settings) as client:
        with pytest.raises(ConfluenceAuthError, match="CONFLUENCE_"):
            await client.check_credentials()
    assert fake.count() == 0


# --- retries ------------------------------------------------------------------------------------------------
async def test_429_retry_after_is_honoured(fake: FakeConfluence, sleep: RecordingSleep) -> None:
    fake.put_page("100", title="P", body="<p/>")
    retries: list[tuple[int, float]] = []
    fake.fail_next(2, status=429, retry_after=7, path_contains="/100")
    async with make_client(
        fake, sleep, on_retry=lambda status, wait: retries.append((status, wait))
    ) as client:
        page = await client.get_page("100")
    assert page.id == "100"
    assert sleep.waits == [7.0, 7.0]
    assert retries == [(429, 7.0), (429, 7.0)]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_backoff_with_full_jitter_then_success(
    fake: FakeConfluence, sleep: RecordingSleep, status: int
) -> None:
    fake.put_page("101", title="P", body="<p/>")
    fake.fail_next(3, status=status)
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(42))
    expected = Backoff(base=1.0, cap=30.0, rng=random.Random(42))
    async with make_client(fake, sleep, backoff=backoff) as client:
        await client.check_credentials()
    assert sleep.waits == [expected.delay(1), expected.delay(2), expected.delay(3)]
    assert all(0 <= wait <= backoff.ceiling(n) for n, wait in enumerate(sleep.waits, start=1))
    assert fake.count() == 4


async def test_exhausted_retries_raise_unavailable(fake: FakeConfluence, sleep: RecordingSleep) -> None:
    fake.fail_next(10, status=503, retry_after=2)
    async with make_client(fake, sleep, confluence_max_retries=2) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.check_credentials()
    assert caught.value.retry_after == 2.0
    assert fake.count() == 3 and sleep.waits == [2.0, 2.0]


async def test_retry_after_beyond_the_cap_is_left_to_the_queue(
    fake: FakeConfluence, sleep: RecordingSleep
) -> None:
    fake.fail_next(1, status=429, retry_after=600)
    async with make_client(fake, sleep, confluence_max_backoff=60) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.check_credentials()
    assert caught.value.retry_after == 600.0 and sleep.waits == [] and fake.count() == 1


async def test_timeouts_are_retried_then_unavailable(fake: FakeConfluence, sleep: RecordingSleep) -> None:
    fake.slowness = 0.5
    retries: list[int] = []
    client = make_client(
        fake,
        sleep,
        confluence_timeout=0.05,
        confluence_max_retries=1,
        on_retry=lambda s, w: retries.append(s),
    )
    async with client:
        with pytest.raises(ConfluenceUnavailable, match="timed out"):
            await client.check_credentials()
    assert retries == [0]


async def test_unreachable_server_is_unavailable(sleep: RecordingSleep) -> None:
    with FakeConfluence("cloud") as stopped:
        url = stopped.base_url
    settings = conftest.make_settings(
        confluence_base_url=url,
        confluence_email="bot@example.com",
        confluence_api_token="t",
        confluence_max_retries=2,
    )
    async with ConfluenceClient(settings, sleep=sleep) as client:
        with pytest.raises(ConfluenceUnavailable, match="unreachable"):
            await client.check_credentials()
    assert len(sleep.waits) == 2


async def test_concurrency_limit_is_respected(fake: FakeConfluence) -> None:
    for i in range(8):
        fake.put_page(str(200 + i), title=f"P{i}", body="<p/>")
    fake.slowness = 0.05
    async with make_client(fake, confluence_max_concurrency=3) as client:
        await asyncio.gather(*(client.check_credentials() for _ in range(12)))
        assert fake.max_in_flight == 3
        fake.reset_counters()
        pages = await asyncio.gather(*(client.get_page(str(200 + i)) for i in range(8)))
    assert len(pages) == 8 and fake.max_in_flight <= 3


# --- enumeration --------------------------------------------------------------------------------------------
def populate(fake: FakeConfluence) -> dict[str, str]:
    """120 current items over two spaces (pages and blog posts), plus a trashed page; id → content type."""
    fake.add_space("OPS", "Operations")
    expected = dict.fromkeys(fake.bulk_pages("ENG", 50), "page") | dict.fromkeys(
        fake.bulk_pages("OPS", 55), "page"
    )
    for i in range(15):
        page_id = str(5000 + i)
        fake.put_page(page_id, title=f"Post {i}", body="<p/>", space_key="ENG" if i % 2 else "OPS",
                      content_type="blogpost")  # fmt: skip
        expected[page_id] = "blogpost"
    fake.put_page("6000", title="Binned", body="<p/>")
    fake.set_status("6000", "trashed")
    return expected


async def test_iter_pages_paginates_over_everything(fake: FakeConfluence) -> None:
    expected = populate(fake)
    async with make_client(fake) as client:
        refs = [ref async for ref in client.iter_pages()]
    assert len(refs) == 120 and {r.id: r.content_type for r in refs} == expected
    assert all(r.version == 1 and r.space_key in {"ENG", "OPS"} and r.title for r in refs)
    assert all(r.last_modified is not None and r.last_modified.tzinfo is not None for r in refs)
    list_path = "/api/v2/pages" if fake.deployment == "cloud" else "/content/search"
    assert fake.count(list_path) >= 3, "25 per response: pagination must have been followed"


async def test_iter_pages_of_some_spaces(fake: FakeConfluence) -> None:
    expected = populate(fake)
    fake.add_space("EMPTY")
    async with make_client(fake) as client:
        ops = [ref async for ref in client.iter_pages(["OPS"])]
        assert [ref async for ref in client.iter_pages(["EMPTY", "NOPE"])] == []
        assert [ref async for ref in client.iter_pages([])] == []
    assert {r.id for r in ops} == {i for i in expected if fake.page(i).space_key == "OPS"}
    assert {r.space_key for r in ops} == {"OPS"}


async def test_iter_pages_since(fake: FakeConfluence) -> None:
    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    fake.put_page("300", title="Old", body="<p/>", last_modified=since - timedelta(days=30))
    fake.put_page("301", title="Just before", body="<p/>", last_modified=since - timedelta(minutes=5))
    fake.put_page("302", title="At", body="<p/>", last_modified=since)
    fake.put_page("303", title="After", body="<p/>", last_modified=since + timedelta(days=2))
    fake.put_page(
        "304", title="Post", body="<p/>", last_modified=since + timedelta(hours=1), content_type="blogpost"
    )
    fake.add_space("OPS")
    fake.put_page(
        "305", title="Elsewhere", body="<p/>", space_key="OPS", last_modified=since + timedelta(hours=1)
    )
    async with make_client(fake) as client:
        recent = {ref.id async for ref in client.iter_pages(since=since)}
        recent_eng = {ref.id async for ref in client.iter_pages(["ENG"], since=since)}
    assert recent == {"302", "303", "304", "305"}
    assert recent_eng == {"302", "303", "304"}


async def test_existing_ids_after_deletes_and_trash(fake: FakeConfluence) -> None:
    ids = fake.bulk_pages("ENG", 40)
    fake.put_page("400", title="Post", body="<p/>", content_type="blogpost")
    fake.delete_page(ids[0])
    fake.set_status(ids[1], "trashed")
    fake.set_status(ids[2], "archived")
    async with make_client(fake) as client:
        alive = await client.existing_ids([*ids, "400", "404404"])
        assert await client.existing_ids([]) == set()
    assert alive == set(ids[3:]) | {"400"}


async def test_resolve_users_is_cached(fake: FakeConfluence) -> None:
    fake.add_user("acc-2", "Grace Hopper")
    async with make_client(fake) as client:
        first = await client.resolve_users(["acc-1", "acc-2", "ghost"])
        calls = fake.count("/user")
        second = await client.resolve_users(["acc-2", "ghost", "acc-1"])
    assert first == second == {"acc-1": "Ada Lovelace", "acc-2": "Grace Hopper"}
    assert calls >= 1 and fake.count("/user") == calls


async def test_list_space_keys(fake: FakeConfluence) -> None:
    for i in range(30):
        fake.add_space(f"S{i:02d}")
    async with make_client(fake) as client:
        keys = await client.list_space_keys()
    assert sorted(keys) == sorted(["ENG", *(f"S{i:02d}" for i in range(30))])
