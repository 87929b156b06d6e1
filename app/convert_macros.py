"""Confluence's own vocabulary — `ac:` macros, links, images, tasks and `ri:` resources — as Markdown.

Kept apart from `convert.py` so the HTML core stays small and this file reads as the list of Confluence
constructs we understand. Handlers get the renderer through the `Render` protocol, so this module never
imports its caller; the small Markdown helpers shared by both files (list items, quotes, fences) live here
for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

Element = Any  # lxml ships no type stubs; every element we touch is an lxml `_Element`
Rendered = str | list[str]  # a str is an inline run, a list holds finished Markdown blocks

AC_NS = "http://atlassian.com/content"
RI_NS = "http://atlassian.com/resource/identifier"
AT_NS = "http://atlassian.com/template"
_PREFIX = {AC_NS: "ac", RI_NS: "ri", AT_NS: "at"}
_NAMESPACE = {prefix: ns for ns, prefix in _PREFIX.items()}

# Blocks that may follow a list item's first line without a blank line (nested lists, fences).
_TIGHT = re.compile(r"^(?:[-*+] |\d+[.)] |`{3,}|~{3,})")
# A first line that would change meaning if a label were put in front of it.
_BLOCK_START = re.compile(r"^(?:#{1,6} |[-*+] |\d+[.)] |`{3,}|~{3,}|>|\||---$)")
_BACKTICKS = re.compile(r"`+")
_WS = re.compile(r"\s+")
# What makes a line of plain text into structure (CommonMark 0.31 §4-5, GFM tables, and `app/chunking.py`,
# which reads ATX headings, fences and `|` lines): ATX heading, block quote, bullet, ordered-list marker,
# table row, fence, thematic break, setext underline, HTML block start (not an autolink) and a link
# reference definition (which would vanish from the rendered text). The leading group is up to 3 spaces.
_LINE_START = re.compile(
    r"^( {0,3})(?:#{1,6}(?=[ \t]|$)|>|[-+*](?=[ \t]|$)|(\d{1,9})[.)](?=[ \t]|$)|\||`{3,}|~{3,}"
    r"|(?:[-*_][ \t]*){3,}$|[=-]+[ \t]*$|<(?![A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*>)[A-Za-z/!?]|\[[^\]]*\]:)"
)

_EMOTICONS = {
    "smile": "🙂", "sad": "🙁", "cheeky": "😛", "laugh": "😀", "wink": "😉",
    "thumbs-up": "👍", "thumbs-down": "👎", "information": "ℹ️", "tick": "✅", "cross": "❌",
    "warning": "⚠️", "plus": "➕", "minus": "➖", "question": "❓", "light-on": "💡", "light-off": "💡",
    "yellow-star": "⭐", "red-star": "⭐", "green-star": "⭐", "blue-star": "⭐",
    "heart": "❤️", "broken-heart": "💔",
}  # fmt: skip
_PANELS = {"info", "note", "warning", "tip", "panel"}
_DROPPED_MACROS = {"toc", "children", "pagetree", "anchor"}
#: `ac:name` Confluence Cloud writes for any emoji that has no legacy emoticon name (custom emoji included).
_CLOUD_EMOJI_PLACEHOLDER = "blue-star"
#: Parameters of an unknown macro that name what it shows (first found wins); every other parameter is a
#: setting (sizes, colours, sort orders, regexes, revisions) and is never page text.
_NAME_PARAMETERS = ("title", "name", "diagramname", "caption", "label", "filename", "page", "url")
#: Nesting levels (block quotes, panels, lists, task lists, tables) that still add their per-line prefix or
#: indent; deeper ones keep their text at the column they reached. Every level prefixes every line below it,
#: so unclamped output grows with depth x lines: 78 nested quotes made 38.8x the body, 40 panels 19x. Eight
#: levels is deeper than any page we have seen an editor make by hand, and at most ~8 x 3 columns per line.
MAX_NESTING = 8


class Render(Protocol):
    """What a handler may ask of the renderer: the user names and recursive rendering of children."""

    users: Mapping[str, str]

    def blocks(self, el: Element) -> list[str]: ...

    def inline(self, el: Element) -> str: ...

    def nest(self) -> AbstractContextManager[bool]:
        """Enter one nesting level while rendering its children; yields whether that level may still add
        its prefix or indent (False past `MAX_NESTING`)."""
        ...


Handler = Callable[[Render, Element], Rendered]


# --- element access that works for both parsers (namespaced XML and the prefix-preserving HTML fallback)


def tag(el: Element) -> str:
    """`ac:link`, `ri:page`, `p`… for an element; "" for comments, PIs and entities."""
    raw = el.tag
    if not isinstance(raw, str):
        return ""
    if raw.startswith("{"):
        ns, _, local = raw[1:].partition("}")
        prefix = _PREFIX.get(ns)
        return f"{prefix}:{local}".lower() if prefix else local.lower()
    return raw.lower()


def attr(el: Element, name: str) -> str:
    """An attribute by its storage-format name (`ac:name`, `ri:filename`, `href`), "" when absent."""
    prefix, _, local = name.rpartition(":")
    namespace = _NAMESPACE.get(prefix)
    value = el.get(f"{{{namespace}}}{local}") if namespace else None
    if value is None:
        value = el.get(name)
    return str(value) if value else ""


def child(el: Element, name: str) -> Element | None:
    """The first child called `name`, if any."""
    return next((c for c in el if tag(c) == name), None)


def raw_text(el: Element | None) -> str:
    """All text under `el` verbatim (CDATA included): for code bodies, where whitespace is content."""
    return "" if el is None else "".join(t for t in el.itertext() if isinstance(t, str))


def squash(text: str) -> str:
    """Whitespace collapsed to single spaces, ends trimmed."""
    return _WS.sub(" ", text).strip()


# --- Markdown helpers shared with convert.py


def list_item(marker: str, blocks: list[str], width: int | None = None) -> str:
    """One list item: the marker, then every further line indented to the item's content column."""
    if not blocks:
        return marker.rstrip()
    text = blocks[0]
    for block in blocks[1:]:
        text += ("\n" if _TIGHT.match(block) else "\n\n") + block
    pad = " " * (len(marker) if width is None else width)
    first, *rest = text.split("\n")
    return "\n".join([marker + first, *(pad + line if line else "" for line in rest)])


def escape_line_starts(text: str) -> str:
    """Text whose lines stay text: a backslash before a leading character that would open a heading, list,
    quote, fence, table, rule, HTML block or reference definition.

    Why: a paragraph starting `# of requests` became an H1, and the chunker then took that sentence as the
    heading path of every chunk below it instead of the real heading (issue 11). CommonMark makes any ASCII
    punctuation escapable with a backslash (spec 0.31 §2.4), so `\\#` renders as `#`; only the first marker
    of a line is escaped (`12\\.` for an ordered-list number), so the words are otherwise verbatim.
    """
    return "\n".join(_escape_line(line) for line in text.split("\n"))


def _escape_line(line: str) -> str:
    found = _LINE_START.match(line)
    if found is None:
        return line
    at = len(found.group(1)) + (len(found.group(2)) if found.group(2) else 0)
    return line[:at] + "\\" + line[at:]


def quote(blocks: list[str], *, prefix: bool = True) -> str:
    """Blocks as one block quote, every line prefixed so nested lists and code stay inside it; with
    `prefix=False` (past `MAX_NESTING`) the blocks as they are, so depth cannot multiply the output."""
    if not prefix:
        return "\n\n".join(blocks)
    lines = "\n\n".join(blocks).split("\n")
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def labelled(label: str, blocks: list[str], *, prefix: bool = True) -> list[str]:
    """A panel: `> **Label:** first paragraph…`, the label on its own line before lists, code or tables
    (not quoted when `prefix` is False, past `MAX_NESTING`)."""
    head = f"**{label}:**"
    if not blocks:
        return []
    if _BLOCK_START.match(blocks[0]):
        return [quote([head, *blocks], prefix=prefix)]
    return [quote([f"{head} {blocks[0]}", *blocks[1:]], prefix=prefix)]


def fence(body: str, info: str = "") -> str:
    """A fenced code block; the fence outgrows any backtick run inside so the body cannot close it."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return "\n".join([ticks + info, *lines, ticks])


# --- resources, links, images, emoticons


def user_name(users: Mapping[str, str], el: Element) -> str:
    """Display name of a `ri:user` (Cloud account id, or Data Center username / userkey)."""
    keys = [attr(el, "ri:account-id"), attr(el, "ri:username"), attr(el, "ri:userkey")]
    for key in keys:
        if key and users.get(key):
            return users[key]
    return attr(el, "ri:username") or "@unknown-user"


def resource(r: Render, el: Element) -> str:
    """The human-readable name of a `ri:` reference: page title, file name, user, space key or URL."""
    kind = tag(el)
    if kind == "ri:user":
        return user_name(r.users, el)
    if kind == "ri:shortcut":
        return f"{attr(el, 'ri:key')}:{attr(el, 'ri:parameter')}".strip(":")
    for name in ("ri:content-title", "ri:filename", "ri:space-key", "ri:value", "ri:content-id"):
        if value := attr(el, name):
            return value
    return ""


def _resource_child(el: Element) -> Element | None:
    return next((c for c in el if tag(c).startswith("ri:")), None)


def link(r: Render, el: Element) -> str:
    """`ac:link`: the text the reader saw, else what it points to; external URLs stay Markdown links."""
    body = ""
    for c in el:
        if tag(c) == "ac:link-body":
            body = squash(r.inline(c))
        elif tag(c) == "ac:plain-text-link-body":
            body = squash(raw_text(c))
    target = _resource_child(el)
    name = resource(r, target) if target is not None else ""
    text = body or name or attr(el, "ac:anchor")
    if target is not None and tag(target) == "ri:url" and name and text != name:
        return f"[{text}]({name})"
    return text


def image(r: Render, el: Element) -> str:
    """`![alt or filename]`, with the caption (often a menu path worth finding) in italics below."""
    target = _resource_child(el)
    name = resource(r, target) if target is not None else ""
    alt = (attr(el, "ac:alt").strip() or name or attr(el, "ac:title")).replace("]", "\\]")
    caption_el = child(el, "ac:caption")
    caption = squash(r.inline(caption_el)) if caption_el is not None else ""
    shown = f"![{alt}]" if alt else ""
    return "\n".join(part for part in (shown, f"_{caption}_" if caption else "") if part)


def emoticon(r: Render, el: Element) -> str:
    """The emoji itself (`ac:emoji-fallback` when it is a glyph); else the legacy name's glyph; else the
    `:shortname:` the author picked.

    Confluence Cloud stores emoji outside the legacy set (custom ones above all) as `ac:name="blue-star"`
    with `ac:emoji-shortname`/`ac:emoji-id`/`ac:emoji-fallback` carrying the real emoji, so when those are
    present the name is a placeholder and its glyph would be invented (issue 11); the shortname is what a
    reader saw spelled out and what they would search for.
    """
    fallback = attr(el, "ac:emoji-fallback").strip()
    shortname = attr(el, "ac:emoji-shortname").strip()
    if fallback and not _is_shortname(fallback):
        return fallback
    name = attr(el, "ac:name").lower()
    placeholder = name == _CLOUD_EMOJI_PLACEHOLDER and bool(shortname or attr(el, "ac:emoji-id") or fallback)
    if name in _EMOTICONS and not placeholder:
        return _EMOTICONS[name]
    return next((text for text in (shortname, fallback) if _is_shortname(text)), "")


def _is_shortname(text: str) -> bool:
    return len(text) > 2 and text.startswith(":") and text.endswith(":") and not any(c.isspace() for c in text)


def task_list(r: Render, el: Element) -> list[str]:
    """`- [x]` / `- [ ]` per task, nested task lists indented under their task."""
    items = []
    with r.nest() as indent:
        for task in el:
            if tag(task) != "ac:task":
                continue
            done = raw_text(child(task, "ac:task-status")).strip().lower() == "complete"
            body = child(task, "ac:task-body")
            blocks = r.blocks(body) if body is not None else []
            items.append(list_item("- [x] " if done else "- [ ] ", blocks, width=2 if indent else 0))
    return ["\n".join(items)] if items else []


def adf_extension(r: Render, el: Element) -> list[str]:
    """Render the ADF node once; `ac:adf-fallback` repeats the same content and is read only if it is all."""
    blocks = [b for c in el if tag(c) == "ac:adf-node" for b in _adf_node(r, c)]
    if blocks:
        return blocks
    fallback = child(el, "ac:adf-fallback")
    return r.blocks(fallback) if fallback is not None else []


def _adf_node(r: Render, node: Element) -> list[str]:
    blocks: list[str] = []
    kind = attr(node, "type").lower()
    attributes = {attr(c, "key").lower(): raw_text(c).strip() for c in node if tag(c) == "ac:adf-attribute"}
    with r.nest() if kind == "panel" else nullcontext(True) as indent:
        for c in node:
            if tag(c) == "ac:adf-node":
                blocks.extend(_adf_node(r, c))
            elif tag(c) == "ac:adf-content":
                blocks.extend(r.blocks(c))
    if kind == "panel":
        panel_type = attributes.get("panel-type", "")
        label = panel_type.capitalize() if panel_type not in ("", "custom") else "Panel"
        return labelled(label, blocks, prefix=indent)
    return blocks


# --- structured macros


def macro(r: Render, el: Element) -> Rendered:
    """`ac:structured-macro` (and the older `ac:macro`) by `ac:name`; unknown ones keep their content."""
    name = attr(el, "ac:name").lower()
    if name in _DROPPED_MACROS:
        return ""
    params = {attr(p, "ac:name").lower(): squash(r.inline(p)) for p in el if tag(p) == "ac:parameter"}
    if name in ("code", "noformat"):
        return _code(el, params)
    if name in _PANELS:
        body = child(el, "ac:rich-text-body")
        with r.nest() as indent:
            blocks = r.blocks(body) if body is not None else []
        return labelled(params.get("title") or name.capitalize(), blocks, prefix=indent)
    if name == "expand":
        body = child(el, "ac:rich-text-body")
        return [f"**{params.get('title') or 'Expand'}**", *(r.blocks(body) if body is not None else [])]
    if name == "status":
        return f"[{params['title'].upper()}]" if params.get("title") else ""
    if name == "jira":
        return params.get("key") or params.get("jqlquery", "")
    if name == "excerpt":
        body = child(el, "ac:rich-text-body")
        return r.blocks(body) if body is not None else []
    return _other_macro(r, el, params)


def _code(el: Element, params: dict[str, str]) -> list[str]:
    """Fenced code: the language as info string, the title as a bold line right above the fence."""
    body = raw_text(child(el, "ac:plain-text-body"))
    title = params.get("title", "")
    if not body.strip() and not title:
        return []
    language = params.get("language", "").split(" ")[0].replace("`", "")
    block = fence(body, "" if language.lower() == "none" else language)
    return [f"**{title}**\n{block}" if title else block]


def _other_macro(r: Render, el: Element, params: dict[str, str]) -> Rendered:
    """A macro we do not know: its body if it has one, else at most one name for what it shows.

    Its other parameter values are settings, and joined as prose they were noise that got embedded: a
    draw.io macro became `edge-network auto top 731 4`, an attachments macro `.*pdf name` (issue 11). The
    name is a title-like parameter (`_NAME_PARAMETERS`) or else a resource a parameter points at (a file,
    page or user), whose rendered name is already in `params`.
    """
    rich = child(el, "ac:rich-text-body")
    if rich is not None:
        return r.blocks(rich)
    plain = child(el, "ac:plain-text-body")
    if plain is not None:
        body = raw_text(plain)
        return [fence(body)] if body.strip() else []
    resources = [
        params.get(attr(p, "ac:name").lower(), "")
        for p in el
        if tag(p) == "ac:parameter" and any(tag(c).startswith("ri:") for c in p.iter())
    ]
    names = [params.get(key, "") for key in _NAME_PARAMETERS] + resources
    text = next((name for name in names if any(ch.isalpha() for ch in name)), "")
    return f" {text} " if text else ""


HANDLERS: dict[str, Handler] = {
    "ac:structured-macro": macro, "ac:macro": macro, "ac:adf-extension": adf_extension, "ac:link": link,
    "ac:image": image, "ac:emoticon": emoticon, "ac:task-list": task_list,
    **{f"ri:{name}": resource for name in ("user", "page", "blog-post", "attachment", "space", "url")},
}  # fmt: skip
