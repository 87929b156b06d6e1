"""'Why can't Alice see page X?': the rule's decision for one person and one page, from the stored access
records (what searches use now) and from Confluence now, side by side, so a stale record shows up as a
difference. Operator-level: the answer names spaces, content ids and principals (never page text)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app import access
from app.access import Decision, PageAccess, Restriction
from app.errors import ConfluenceVectorsError
from app.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Explanation:
    person: str
    page_id: str
    principals: list[str]
    stored: dict[str, Any]
    live: dict[str, Any]
    differs: bool


def _as_dict(decision: Decision) -> dict[str, Any]:
    return asdict(decision)


async def explain(rt: Runtime, person: str, page_id: str) -> Explanation:
    """Decide from the stored records and from Confluence now. Membership is re-read (not cached) for both.

    Raises the permission client's errors (UnknownPerson, AccessUnavailable) when Confluence cannot say who
    the person is; a live part that cannot be read is reported as `unknown` with its error.
    """
    client = rt.permissions
    who = await client.person(person, fresh=True)
    stored_access, stored_space, stored_restrictions = await access.load(rt.pool, page_id)
    stored = access.decide(who.principals, stored_access, stored_space, stored_restrictions)
    live = await _live(rt, who.principals, page_id, stored_access)
    return Explanation(
        person=person,
        page_id=page_id,
        principals=sorted(who.principals),
        stored=_as_dict(stored),
        live=_as_dict(live),
        differs=(stored.allowed, stored.part, stored.content_id) != (live.allowed, live.part, live.content_id),
    )


async def _live(rt: Runtime, principals: frozenset[str], page_id: str, stored: PageAccess | None) -> Decision:
    client = rt.permissions
    try:
        page = await rt.confluence.get_page(page_id, None)
        path = await client.path(page.id, page.content_type)
        space = await client.space_access(page.space_key)
    except ConfluenceVectorsError as exc:
        return Decision(False, "unknown", None, f"from Confluence now: {type(exc).__name__}: {exc}")
    restrictions: dict[str, Restriction] = {}
    for content_id in path:
        try:
            restrictions[content_id] = await client.restriction(content_id)
        except ConfluenceVectorsError as exc:
            restrictions[content_id] = Restriction(content_id, None, frozenset(), f"{type(exc).__name__}: {exc}")
    del stored  # the live decision is independent of what we hold
    return access.decide(principals, PageAccess(page.id, page.space_key, path), space, restrictions)
