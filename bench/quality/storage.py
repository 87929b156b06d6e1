"""Tiny builders for Confluence storage format (XHTML with `ac:`/`ri:` elements), for the labelled page set.

Why builders rather than literal XHTML: the set has ~45 pages, and hand-escaped XHTML is where typos hide. Each
function returns one storage-format fragment; the element and macro names follow Atlassian's "Confluence
Storage Format" page (structured macros with `ac:parameter`, `ac:rich-text-body`, `ac:plain-text-body` as
CDATA; page links as `ac:link` + `ri:page`).
"""

from __future__ import annotations

from html import escape


def h(level: int, text: str) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def p(html: str) -> str:
    """A paragraph; `html` may hold inline markup (`<code>`, `<strong>`, links) and is not escaped."""
    return f"<p>{html}</p>"


def c(text: str) -> str:
    """Inline code."""
    return f"<code>{escape(text)}</code>"


def ul(*items: str) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def ol(*items: str) -> str:
    return "<ol>" + "".join(f"<li>{item}</li>" for item in items) + "</ol>"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A table with a header row; cells may hold inline markup."""
    head = "<tr>" + "".join(f"<th>{escape(x)}</th>" for x in headers) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tbody>{head}{body}</tbody></table>"


def code(body: str, language: str = "bash", title: str | None = None) -> str:
    """The `code` macro: the body is CDATA, kept verbatim."""
    params = f'<ac:parameter ac:name="language">{language}</ac:parameter>'
    if title:
        params += f'<ac:parameter ac:name="title">{escape(title)}</ac:parameter>'
    safe = body.replace("]]>", "]]]]><![CDATA[>")
    return (
        f'<ac:structured-macro ac:name="code">{params}<ac:plain-text-body><![CDATA[{safe}]]>'
        "</ac:plain-text-body></ac:structured-macro>"
    )


def macro(name: str, *children: str, title: str | None = None) -> str:
    """A rich-text-body macro: info, note, warning, tip, panel, expand."""
    params = f'<ac:parameter ac:name="title">{escape(title)}</ac:parameter>' if title else ""
    return (
        f'<ac:structured-macro ac:name="{name}">{params}<ac:rich-text-body>{"".join(children)}'
        "</ac:rich-text-body></ac:structured-macro>"
    )


def info(*children: str, title: str | None = None) -> str:
    return macro("info", *children, title=title)


def warning(*children: str, title: str | None = None) -> str:
    return macro("warning", *children, title=title)


def note(*children: str, title: str | None = None) -> str:
    return macro("note", *children, title=title)


def expand(title: str, *children: str) -> str:
    return macro("expand", *children, title=title)


def panel(title: str, *children: str) -> str:
    return macro("panel", *children, title=title)


def link(title: str, label: str | None = None) -> str:
    """A link to another page by title (what the editor stores)."""
    body = f"<ac:plain-text-link-body><![CDATA[{label}]]></ac:plain-text-link-body>" if label else ""
    return f'<ac:link><ri:page ri:content-title="{escape(title)}" />{body}</ac:link>'


def jira(key: str) -> str:
    return (
        '<ac:structured-macro ac:name="jira"><ac:parameter ac:name="server">Larkspur Jira</ac:parameter>'
        f'<ac:parameter ac:name="key">{escape(key)}</ac:parameter></ac:structured-macro>'
    )


def status(text: str, colour: str = "Green") -> str:
    return (
        f'<ac:structured-macro ac:name="status"><ac:parameter ac:name="colour">{colour}</ac:parameter>'
        f'<ac:parameter ac:name="title">{escape(text)}</ac:parameter></ac:structured-macro>'
    )


def page(*blocks: str) -> str:
    return "".join(blocks)
