"""`ConfluenceClient` against the fake Confluence over real HTTP, in both deployment shapes."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.confluence import RESTRICTION_TTL, ConfluenceClient
from app.errors import ConfluenceAuthError, ConfluenceProtocolError, ConfluenceUnavailable, PageNotFound
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
    clock = overrides.pop("clock", time.monotonic)
    settings = conftest.make_settings(**(values | overrides))
    return ConfluenceClient(
        settings, sleep=sleep or RecordingSleep(), backoff=backoff, on_retry=on_retry, clock=clock
    )


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
        client.invalidate("20")  # what the job for the restriction event on 20 does
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
        if fake.deployment == "datacenter" and status != "trashed":
            # DC `status=any` is "current and trashed" only: other statuses are a 404, which also deletes.
            with pytest.raises(PageNotFound):
                await client.get_page("50")
            return
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


# --- what the spec-faithful fake catches --------------------------------------------------------------------
def chain(fake: FakeConfluence, depth: int, *, restricted_root: bool = False, start: int = 10_000) -> list[str]:
    """A root page and `depth` levels of descendants, one per level; ids root first."""
    ids = [str(start + level) for level in range(depth + 1)]
    fake.put_page(ids[0], title="Level 0", body="<p/>", restricted=restricted_root)
    for level in range(1, depth + 1):
        fake.put_page(ids[level], title=f"Level {level}", body="<p/>", parent_id=ids[level - 1])
    return ids


async def test_page_thirty_levels_under_a_restricted_root_is_restricted(fake: FakeConfluence) -> None:
    """v2 answers at most 25 ancestors by default: reading only those, the restricted root was never seen."""
    ids = chain(fake, 30, restricted_root=True)
    async with make_client(fake) as client:
        page = await client.get_page(ids[-1])
    assert page.restricted
    assert page.ancestors == tuple(f"Level {level}" for level in range(30))
    assert page.ancestors[0] == "Level 0", "the breadcrumb starts at the root"


async def test_ancestors_beyond_one_answer_are_asked_for_again_from_the_highest() -> None:
    with FakeConfluence("cloud") as fake:
        ids = chain(fake, 300, restricted_root=True)
        async with make_client(fake) as client:
            page = await client.get_page(ids[-1])
        assert page.restricted and len(page.ancestors) == 300 and page.ancestors[0] == "Level 0"
        assert fake.count("/ancestors") == 2, "250 in the first answer, the remaining 50 from the highest"


async def test_folders_stay_in_the_path_and_their_restrictions_are_inherited() -> None:
    with FakeConfluence("cloud") as fake:
        fake.add_space("ENG", "Engineering", homepage="Engineering Home")
        fake.add_container("f1", title="Team folder", kind="folder")
        fake.put_page("201", title="Plans", body="<p/>", parent_id="f1")
        fake.add_container("w1", title="Board", kind="whiteboard", parent_id="201")
        fake.put_page("202", title="Under the board", body="<p/>", parent_id="w1")
        async with make_client(fake) as client:
            page = await client.get_page("202")
            assert page.ancestors == ("Engineering Home", "Team folder", "Plans", "Board")
            assert not page.restricted
            fake.set_restricted("f1", True, to="group")
            client.invalidate("f1")
            assert (await client.get_page("202")).restricted
        assert [r.id async for r in make_client(fake).iter_pages(["ENG"])] == ["983000", "201", "202"]


async def test_breadcrumbs_start_at_the_space_homepage_as_on_real_cloud() -> None:
    with FakeConfluence("cloud") as fake:
        fake.add_space("DOC", "Docs", homepage="Docs Home")
        fake.put_page("301", title="Top level", body="<p/>", space_key="DOC")
        fake.put_page("302", title="Child", body="<p/>", space_key="DOC", parent_id="301")
        async with make_client(fake) as client:
            assert (await client.get_page("302")).ancestors == ("Docs Home", "Top level")


@pytest.mark.parametrize("to", ["user", "group"])
async def test_datacenter_restriction_to_a_named_user_or_group_is_seen(to: Any) -> None:
    """Data Center's byOperation/read expands only groups unless `restrictions.user` is asked for."""
    with FakeConfluence("datacenter") as fake:
        fake.put_page("401", title="HR", body="<p/>")
        fake.put_page("402", title="Salaries", body="<p/>", parent_id="401")
        fake.put_page("403", title="Own restriction", body="<p/>")
        fake.set_restricted("401", True, to=to)
        fake.set_restricted("403", True, to=to)
        async with make_client(fake) as client:
            assert (await client.get_page("402")).restricted, "inherited from the parent"
            assert (await client.get_page("403")).restricted, "its own"


async def test_blog_post_fetch_sends_only_statuses_blog_posts_have() -> None:
    with FakeConfluence("cloud") as fake:
        fake.put_page("501", title="News", body="<p/>", content_type="blogpost")
        fake.set_status("501", "trashed")
        async with make_client(fake) as client:
            assert (await client.get_page("501")).status == "trashed"
        blog_queries = fake.queries("/api/v2/blogposts/501")
        assert blog_queries and all("archived" not in q and "%2C" not in q for q in blog_queries)


async def test_read_restrictions_of_ancestors_are_cached_and_expire(fake: FakeConfluence) -> None:
    now = [1000.0]
    fake.put_page("600", title="Root", body="<p/>")
    for i in range(601, 611):
        fake.put_page(str(i), title=f"Child {i}", body="<p/>", parent_id="600")
    async with make_client(fake, clock=lambda: now[0]) as client:
        for i in range(601, 611):
            assert not (await client.get_page(str(i))).restricted
        assert fake.count("/600/restriction") == 1, "one ancestor, asked once for ten children"
        own = 1 if fake.deployment == "cloud" else 0  # Data Center reads a page's own inline, with the page
        assert all(fake.count(f"/{i}/restriction") == own for i in range(601, 611)), "each page's own is fresh"
        fake.set_restricted("600", True)
        now[0] += RESTRICTION_TTL + 1  # no event reached us: expiry bounds how long the old answer is used
        assert (await client.get_page("605")).restricted
        assert fake.count("/600/restriction") == 2


async def test_a_foreign_next_link_is_refused_before_anything_is_sent(fake: FakeConfluence) -> None:
    with FakeConfluence(fake.deployment) as foreign:
        fake.bulk_pages("ENG", 30)  # more than one response's worth
        fake.next_link_origin = foreign.origin
        async with make_client(fake) as client:
            with pytest.raises(ConfluenceProtocolError, match="origin"):
                _ = [ref async for ref in client.iter_pages(["ENG"])]
        assert foreign.count() == 0, "the foreign server must never see a request (nor our credentials)"


async def test_many_long_user_ids_are_asked_for_in_requests_short_enough_to_be_served() -> None:
    with FakeConfluence("cloud") as fake:
        ids = [f"712020:{n:08d}-" + "a" * 110 for n in range(450)]
        for user_id in ids:
            fake.add_user(user_id, f"Name {user_id[7:15]}")
        async with make_client(fake) as client:
            names = await client.resolve_users(ids)
        assert len(names) == 450
        assert all(len(q) < 8000 for q in fake.queries("/user/bulk"))


async def test_user_misses_expire(fake: FakeConfluence) -> None:
    now = [0.0]
    async with make_client(fake, clock=lambda: now[0]) as client:
        assert await client.resolve_users(["newcomer"]) == {}
        fake.add_user("newcomer", "New Person")
        assert await client.resolve_users(["newcomer"]) == {}, "a miss is cached for a while"
        now[0] += 3600
        assert await client.resolve_users(["newcomer"]) == {"newcomer": "New Person"}
