"""Who a search answers as: the person a trusted caller names, resolved to their principal set.

The API token authenticates the calling application, not a person; the application names the person it acts
for (header `X-Confluence-User`, a Cloud account id or a Data Center username). Without one, a search is
refused unless the operator set `SEARCH_SERVICE_IDENTITY`: a person's id (every unnamed search answers as
them), or `service-account`, the indexing account's own, unfiltered view (everything indexed; only for
deployments whose every caller may see all of it). That view is reachable only through the operator's setting:
a caller naming `service-account` is looked up as a person (unknown: refused).
"""

from __future__ import annotations

from app.errors import ConfluenceVectorsError, PermanentError, RetryableError
from app.permissions_client import AccessUnavailable, UnknownPerson
from app.runtime import Runtime

HEADER = "X-Confluence-User"
SERVICE_ACCOUNT = "service-account"
MAX_IDENTITY_CHARS = 255


class PersonRequired(PermanentError):
    """No person named, and no SEARCH_SERVICE_IDENTITY configured."""


class PersonUnknown(PermanentError):
    """The named person is not known to Confluence."""


class PersonUnavailable(RetryableError):
    """The person's group membership cannot be read from Confluence now."""


async def viewer_principals(
    rt: Runtime, identity: str | None, *, named_by: str = f"the {HEADER} header"
) -> frozenset[str] | None:
    """The principal set to search with; None only when the operator configured SEARCH_SERVICE_IDENTITY as
    `service-account` and the caller named nobody. `identity` (a caller's header, an MCP header, the CLI's
    `--as`) is always a person resolved through Confluence, whatever it says.

    `named_by` is how this caller names a person (the header, the CLI's `--as`), for the refusal's advice.

    Raises PersonRequired (no identity), PersonUnknown, PersonUnavailable (Confluence refused or is down:
    we cannot know what they may read, so we answer nothing rather than guess).
    """
    named = (identity or "").strip()
    if not named:
        # Only the operator's own configuration may choose the unfiltered view: the literal is compared here,
        # on the configured value, and never on what a caller sent (a caller naming `service-account` is a
        # person called that, looked up in Confluence like any other).
        configured = (rt.settings.search_service_identity or "").strip()
        if configured == SERVICE_ACCOUNT:
            return None
        named = configured
    if not named:
        raise PersonRequired(
            f"name the person this search is for with {named_by} (Cloud account id or Data Center "
            "username), or configure SEARCH_SERVICE_IDENTITY"
        )
    if len(named) > MAX_IDENTITY_CHARS or "\x00" in named:
        raise PersonUnknown("the person's identity is not a valid Confluence user id")
    try:
        person = await rt.permissions.person(named)
    except UnknownPerson as exc:
        raise PersonUnknown(str(exc)) from exc
    except (AccessUnavailable, ConfluenceVectorsError) as exc:
        raise PersonUnavailable(f"cannot read the person's groups from Confluence: {exc}") from exc
    return person.principals
