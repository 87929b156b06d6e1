"""The permission client against the fake Confluence over real HTTP, in both products' shapes: space
permissions (only `read` on the space counts; DC before 9.1 refused naming the version), restrictions with users
and groups, paths deeper than one ancestors answer and through a folder, membership cached with an expiry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.access import ANYONE, LOGGED_IN
from app.confluence import ConfluenceClient
from app.permissions_client import AccessUnavailable, PermissionsClient, UnknownPerson
from tests import conftest
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_permissions import FakePermissions


@pytest.fixture(params=["cloud", "datacenter"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    with FakeConfluence(request.param) as server:
        server.add_space("ENG", "Engineering")
        for user in ("alice", "bob", "carol"):
            server.add_user(user, user.title())
        yield server


def client(fake: FakeConfluence, ttl: float = 900.0) -> PermissionsClient:
    settings = conftest.make_settings(
        confluence_base_url=fake.base_url, confluence_deployment=fake.deployment, **fake.credentials
    )
    return PermissionsClient(ConfluenceClient(settings), membership_ttl=ttl)


def group_key(fake: FakeConfluence, group_id: str, name: str) -> str:
    """Cloud names groups by id, Data Center by name (it has no ids)."""
    return f"group:{group_id if fake.deployment == 'cloud' else name}"


async def test_space_read_permission_in_both_shapes(fake: FakeConfluence) -> None:
    perms = FakePermissions.install(fake)
    perms.add_group("g-1", "engineering")
    many = [f"u{i}" for i in range(40)]  # more than one page of assignments (25 per response)
    perms.grant_space("ENG", users=["alice", *many], groups=["g-1"], anonymous=True)
    access = await client(fake).space_access("ENG")
    expected = {"user:alice", group_key(fake, "g-1", "engineering"), ANYONE, *(f"user:{u}" for u in many)}
    assert access.principals == frozenset(expected)  # the `create` assignments listed beside them do not count


async def test_data_center_before_9_1_is_refused_naming_the_version(fake: FakeConfluence) -> None:
    if fake.deployment == "cloud":
        pytest.skip("Data Center only")
    perms = FakePermissions.install(fake)
    perms.dc_version = (8, 5)
    with pytest.raises(AccessUnavailable, match=r"older than 9\.1"):
        await client(fake).space_access("ENG")


async def test_restriction_names_users_and_groups(fake: FakeConfluence) -> None:
    perms = FakePermissions.install(fake)
    perms.add_group("g-2", "sre")
    fake.put_page("10", title="Runbook", body="<p/>")
    fake.put_page("11", title="Open", body="<p/>")
    perms.restrict("10", users=["bob"], groups=["g-2"])
    restricted = await client(fake).restriction("10")
    assert restricted.restricted is True
    user = "user:bob"  # the fake's Cloud account id and DC user key are both the id it was given
    assert restricted.principals == frozenset({user, group_key(fake, "g-2", "sre")})
    assert (await client(fake).restriction("11")).restricted is False


async def test_path_past_one_ancestors_answer(fake: FakeConfluence) -> None:
    FakePermissions.install(fake)
    parent = None
    for level in range(30):  # Cloud answers 25 ancestors per call: the path must still be complete
        fake.put_page(str(100 + level), title=f"L{level}", body="<p/>", parent_id=parent)
        parent = str(100 + level)
    path = await client(fake).path("129", "page")
    assert path == tuple(str(100 + level) for level in range(30))


async def test_path_through_a_folder(fake: FakeConfluence) -> None:
    if fake.deployment != "cloud":
        pytest.skip("folders are Cloud content")
    FakePermissions.install(fake)
    fake.put_page("1", title="Root", body="<p/>")
    fake.add_container("2", title="Folder", parent_id="1")
    fake.put_page("3", title="Leaf", body="<p/>", parent_id="2")
    assert await client(fake).path("3", "page") == ("1", "2", "3")


async def test_membership_is_cached_until_it_expires(fake: FakeConfluence) -> None:
    perms = FakePermissions.install(fake)
    perms.add_group("g-3", "leads", members=["carol"])
    reader = client(fake)
    person = await reader.person("carol")
    assert group_key(fake, "g-3", "leads") in person.principals and LOGGED_IN in person.principals
    perms.remove_member("g-3", "carol")
    assert group_key(fake, "g-3", "leads") in (await reader.person("carol")).principals  # cached
    assert group_key(fake, "g-3", "leads") not in (await reader.person("carol", fresh=True)).principals
    expiring = client(fake, ttl=0.0)
    perms.add_member("g-3", "carol")
    await expiring.person("carol")
    perms.remove_member("g-3", "carol")
    assert group_key(fake, "g-3", "leads") not in (await expiring.person("carol")).principals  # expired: re-read


async def test_unknown_person(fake: FakeConfluence) -> None:
    FakePermissions.install(fake)
    with pytest.raises(UnknownPerson):
        await client(fake).person("nobody")
