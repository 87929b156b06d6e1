"""Plain data passed between the pipeline's stages (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

ContentType = Literal["page", "blogpost"]
PageStatus = Literal["current", "trashed", "deleted", "archived", "draft", "historical"]


@dataclass(frozen=True, slots=True)
class PageRef:
    """A page named by an enumeration (space listing, CQL search): enough to decide whether to fetch it."""

    id: str
    content_type: ContentType = "page"
    version: int | None = None
    last_modified: datetime | None = None
    space_key: str | None = None
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Everything we index about one Confluence page or blog post, as Confluence says it is now."""

    id: str
    title: str
    space_key: str
    version: int
    last_modified: datetime
    url: str
    body_storage: str
    status: PageStatus = "current"
    content_type: ContentType = "page"
    space_name: str | None = None
    author: str | None = None  # display name
    author_id: str | None = None  # Cloud account id / Data Center user key
    labels: tuple[str, ...] = ()
    ancestors: tuple[str, ...] = ()  # breadcrumb titles, root first
    restricted: bool = False  # read restrictions on the page or inherited from an ancestor
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_current(self) -> bool:
        return self.status == "current"


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment on a page (Cloud v2 footer/inline comments, Data Center child comments)."""

    id: str
    kind: Literal["footer", "inline"]
    body_storage: str
    version: int = 1
    author: str | None = None  # display name (or account id / username when it cannot be resolved)
    created: datetime | None = None
    highlighted: str | None = None  # inline: the page text the comment is anchored to
    resolved: bool = False  # inline: resolved (or dangling) threads are not indexed
    parent_id: str | None = None  # a reply's parent comment


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a page, as listed by Confluence (not its bytes)."""

    id: str
    title: str  # the file name
    media_type: str
    version: int
    size: int | None
    download_url: str  # absolute, on the configured Confluence origin
    comment: str | None = None
