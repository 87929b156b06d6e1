"""Answers of a shape we did not ask for fail closed (app.permissions_client): a read restriction whose user or
group list was not expanded, or with no `restrictions` object, is "not established", never "open"; a Data
Center space permission entry without a `subject` grants nobody, never anonymous access."""

from __future__ import annotations

from typing import Any

import pytest

from app.access import ANYONE
from app.permissions_client import AccessUnavailable, PermissionsClient


class Answering:
    """A ConfluenceClient stand-in that answers every read with one body (the shape under test)."""

    def __init__(self, cloud: bool, answer: Any) -> None:
        self.is_cloud, self.answer = cloud, answer

    async def get_json(self, *args: Any, **kwargs: Any) -> Any:
        return self.answer

    async def get_any_json(self, *args: Any, **kwargs: Any) -> Any:
        return self.answer


def client(cloud: bool, answer: Any) -> PermissionsClient:
    return PermissionsClient(Answering(cloud, answer))  # type: ignore[arg-type]


EMPTY = {"results": [], "start": 0, "limit": 100, "size": 0}
LINK = "/rest/api/content/5/restriction/byOperation/read/"


@pytest.mark.parametrize("cloud", [True, False])
@pytest.mark.parametrize(
    "restrictions",
    [
        {"group": EMPTY, "_expandable": {"user": LINK + "user"}},  # a user-only restriction, users not expanded
        {"user": EMPTY, "_expandable": {"group": LINK + "group"}},
        {"user": EMPTY, "group": {"size": 2}},  # a bucket without its results
        None,  # no `restrictions` object at all
    ],
)
async def test_unexpected_restriction_shapes_are_not_established(cloud: bool, restrictions: Any) -> None:
    answer: dict[str, Any] = {"operation": "read"}
    if restrictions is not None:
        answer["restrictions"] = restrictions
    with pytest.raises(AccessUnavailable):
        await client(cloud, answer).restriction("5")


@pytest.mark.parametrize("cloud", [True, False])
async def test_expanded_empty_buckets_read_as_unrestricted(cloud: bool) -> None:
    answer = {"operation": "read", "restrictions": {"user": EMPTY, "group": EMPTY}}
    found = await client(cloud, answer).restriction("5")
    assert found.restricted is False and found.principals == frozenset()


async def test_data_center_entry_without_subject_grants_nobody() -> None:
    read = {"operationKey": "read", "targetType": "space"}
    answer = [
        {"operation": read, "spaceKey": "HR"},
        {"operation": read, "subject": {"type": "group", "name": "hr"}, "spaceKey": "HR"},
    ]
    found = await client(False, answer).space_access("HR")
    assert found.principals == frozenset({"group:hr"})
    anonymous = [{"operation": read, "subject": {"type": "anonymous"}, "spaceKey": "HR"}]
    assert ANYONE in ((await client(False, anonymous).space_access("HR")).principals or ())
