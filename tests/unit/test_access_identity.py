"""Who a search answers as (app.viewer): only the operator's SEARCH_SERVICE_IDENTITY may choose the service
account's unfiltered view; whatever a caller names (header, MCP header, CLI `--as`) is a person looked up in
Confluence, and an unknown one is refused. Against the fake Confluence over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.access import user_principal
from app.confluence import ConfluenceClient
from app.permissions_client import PermissionsClient
from app.viewer import SERVICE_ACCOUNT, PersonRequired, PersonUnknown, viewer_principals
from tests import conftest
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_permissions import FakePermissions


@pytest.fixture(params=["cloud", "datacenter"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    with FakeConfluence(request.param) as server:
        server.add_space("ENG", "Engineering")
        server.add_user("alice", "Alice")
        FakePermissions.install(server)
        yield server


def runtime(fake: FakeConfluence, configured: str | None) -> Any:
    settings = conftest.make_settings(
        confluence_base_url=fake.base_url,
        confluence_deployment=fake.deployment,
        search_service_identity=configured,
        **fake.credentials,
    )
    client = PermissionsClient(ConfluenceClient(settings))
    return SimpleNamespace(settings=settings, permissions=client)


@pytest.mark.parametrize("configured", [None, "", SERVICE_ACCOUNT, "alice"])
@pytest.mark.parametrize("sent", [SERVICE_ACCOUNT, "Service-Account", f" {SERVICE_ACCOUNT} "])
async def test_a_caller_naming_the_service_account_is_an_unknown_person(
    fake: FakeConfluence, configured: str | None, sent: str
) -> None:
    with pytest.raises(PersonUnknown):
        await viewer_principals(runtime(fake, configured), sent)


async def test_only_the_operators_setting_chooses_the_unfiltered_view(fake: FakeConfluence) -> None:
    assert await viewer_principals(runtime(fake, SERVICE_ACCOUNT), None) is None
    assert await viewer_principals(runtime(fake, SERVICE_ACCOUNT), "  ") is None
    with pytest.raises(PersonRequired):
        await viewer_principals(runtime(fake, None), None)


async def test_a_named_person_wins_over_the_configured_identity(fake: FakeConfluence) -> None:
    principals = await viewer_principals(runtime(fake, SERVICE_ACCOUNT), "alice")
    assert principals is not None and any(p.startswith("user:") for p in principals)
    if fake.deployment == "cloud":  # Cloud names people by account id; Data Center by a user key it assigns
        assert user_principal("alice") in principals
    configured = await viewer_principals(runtime(fake, "alice"), None)
    assert configured == principals


async def test_the_refusal_says_how_this_caller_names_a_person(fake: FakeConfluence) -> None:
    """The API's refusal names the header; the CLI's names its `--as` option (a terminal user has no header)."""
    with pytest.raises(PersonRequired, match="X-Confluence-User header"):
        await viewer_principals(runtime(fake, None), None)
    with pytest.raises(PersonRequired, match="with --as") as refused:
        await viewer_principals(runtime(fake, None), None, named_by="--as")
    assert "header" not in str(refused.value)
