"""Text stays text (issue 11): plain words never become Markdown structure, macro settings never become prose.

A paragraph that starts `# of requests` used to come out as an H1; the chunker then took that sentence as
the heading path of every chunk below it and the real heading above it vanished. Each kind of fault found in
peer converters' bug reports has a case here, and a hypothesis property covers the kind: any paragraph text
re-parses (CommonMark, via markdown-it-py, and the chunker's own block reader) as that text in one paragraph,
and heading paths come only from real headings.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from app.chunking import chunk_page
from app.convert import storage_to_markdown
from app.models import Page

COMMONMARK = MarkdownIt("commonmark").enable("table")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def page(body: str = "") -> Page:
    return Page(
        id="77",
        title="Limits",
        space_key="OPS",
        version=1,
        last_modified=datetime(2024, 5, 1, tzinfo=UTC),
        url="https://wiki.example.com/wiki/spaces/OPS/pages/77",
        body_storage=body,
    )


def header_paths(markdown: str) -> set[str]:
    nodes = chunk_page(page(), markdown, chunk_size=512, chunk_overlap=0, max_tokens=8192)
    return {str(node.metadata["header_path"]) for node in nodes}


def block_types(markdown: str) -> list[str]:
    return [token.type for token in COMMONMARK.parse(markdown) if token.nesting != -1]


def rendered_text(inline: Token) -> str:
    """The text a reader sees in an inline token (escapes resolved, soft breaks as newlines)."""
    parts = []
    for token in inline.children or []:
        if token.type == "text":
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts)


def assert_one_paragraph(markdown: str, text: str) -> None:
    tokens = COMMONMARK.parse(markdown)
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], markdown
    assert rendered_text(tokens[1]) == text


STARTS = [
    ("# of requests per minute", "atx-heading"),
    ("## twice", "atx-heading-2"),
    ("> not a quote", "block-quote"),
    ("- not a bullet", "dash-bullet"),
    ("+ not a bullet", "plus-bullet"),
    ("* not a bullet", "star-bullet"),
    ("1. not a list", "ordered-dot"),
    ("2024) not a list", "ordered-paren"),
    ("| not | a table |", "pipe-table-row"),
    ("```not a fence", "backtick-fence"),
    ("~~~ not a fence", "tilde-fence"),
    ("---", "thematic-break-dashes"),
    ("***", "thematic-break-stars"),
    ("___", "thematic-break-underscores"),
    ("- - -", "thematic-break-spaced"),
    ("<div> is the tag to use", "html-block"),
    ("[note]: https://e.x/read", "link-reference-definition"),
]


@pytest.mark.parametrize(("text", "kind"), STARTS, ids=[kind for _, kind in STARTS])
def test_paragraph_starting_with_markdown_syntax_stays_a_paragraph(text: str, kind: str) -> None:
    markdown = storage_to_markdown(f"<p>{text.replace('<', '&lt;')}</p>")
    assert_one_paragraph(markdown, text)
    assert header_paths(markdown) == {""}


@pytest.mark.parametrize("underline", ["===", "--", "-"])
def test_a_line_under_a_line_is_not_a_setext_heading(underline: str) -> None:
    markdown = storage_to_markdown(f"<p>Totals<br/>{underline}</p>")
    assert_one_paragraph(markdown, f"Totals\n{underline}")


def test_hash_sentence_under_a_real_heading_keeps_the_real_heading_path() -> None:
    body = "<h2>Rate limits</h2><p># of requests is capped at 100 per minute.</p><p>Bursts are queued.</p>"
    markdown = storage_to_markdown(body)
    assert markdown.startswith("## Rate limits\n\n\\# of requests")
    assert header_paths(markdown) == {"Rate limits"}


def test_escapes_reach_list_items_quotes_and_wide_tables() -> None:
    assert storage_to_markdown("<ul><li><p># items</p></li></ul>") == "- \\# items"
    assert storage_to_markdown("<blockquote><p>&gt; quoted</p></blockquote>") == "> \\> quoted"
    cells = "".join(f"<th>h{i}</th>" for i in range(10))
    values = "<td><p>x</p><p># y</p></td>" + "<td>v</td>" * 9
    wide = storage_to_markdown(f"<table><tr>{cells}</tr><tr>{values}</tr></table>")
    assert "  \\# y" in wide and header_paths(wide) == {""}


def test_gfm_table_cells_are_not_escaped_twice() -> None:
    markdown = storage_to_markdown("<table><tr><th>k</th></tr><tr><td>| piped</td></tr><tr><td># n</td></tr></table>")
    assert markdown.splitlines()[2:] == ["| \\| piped |", "| # n |"]


def test_our_own_inline_markup_at_a_line_start_is_not_escaped() -> None:
    body = '<p><strong>Bold</strong> start</p><p><a href="https://e.x/a">https://e.x/a</a></p>'
    assert storage_to_markdown(body) == "**Bold** start\n\n<https://e.x/a>"


def test_title_fallback_is_escaped_too() -> None:
    assert storage_to_markdown('<ac:structured-macro ac:name="toc"/>', title="# Hashtags") == "\\# Hashtags"


# The property. Text is drawn from characters that are block syntax at a line start but inert inline, so the
# reader sees exactly the drawn text; inline emphasis, code and links are the converter's to write, not ours.
LEADS = st.sampled_from(["#", "##", "######", ">", "-", "+", "*", "1.", "7)", "|", "```", "~~~", "---", "===", "<p"])
BODY = st.text(alphabet="abcXYZ019 #>-+.|=:)", max_size=20)


@given(lead=LEADS, space=st.sampled_from(["", " "]), body=BODY, heading=st.booleans())
@SETTINGS
def test_property_any_paragraph_text_reparses_as_that_text(lead: str, space: str, body: str, heading: bool) -> None:
    text = " ".join((lead + space + body).split())
    escaped = text.replace("<", "&lt;").replace(">", "&gt;")
    source = ("<h3>Real heading</h3>" if heading else "") + f"<p>{escaped}</p>"
    markdown = storage_to_markdown(source)
    tokens = COMMONMARK.parse(markdown)
    if heading:
        assert [t.type for t in tokens[:3]] == ["heading_open", "inline", "heading_close"]
        tokens = tokens[3:]
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], markdown
    assert rendered_text(tokens[1]) == text
    assert header_paths(markdown) == {"Real heading" if heading else ""}


# --- macros we do not know: keep the body and one name, drop settings


def macro(macro_name: str, body: str = "", /, **params: str) -> str:
    rendered = "".join(f'<ac:parameter ac:name="{k}">{v}</ac:parameter>' for k, v in params.items())
    return f'<ac:structured-macro ac:name="{macro_name}">{rendered}{body}</ac:structured-macro>'


def test_diagram_macro_keeps_its_name_not_its_settings() -> None:
    drawio = macro("drawio", diagramName="edge-network", simple="auto", lbox="top", width="731", revision="4", zoom="1")
    assert storage_to_markdown(f"<p>See {drawio} below.</p>") == "See edge-network below."


def test_attachments_macro_settings_are_not_prose() -> None:
    assert storage_to_markdown("<p>Files:</p>" + macro("attachments", patterns=".*pdf", sortBy="name")) == "Files:"


def test_unknown_macro_keeps_a_referenced_file_name_only() -> None:
    view = macro("view-pdf", name='<ri:attachment ri:filename="runbook.pdf"/>', height="250", page="")
    assert storage_to_markdown(f"<p>{view}</p>") == "runbook.pdf"


def test_unknown_macro_with_a_body_keeps_the_body_and_not_its_settings() -> None:
    body = macro("ui-tab", "<ac:rich-text-body><p>Tab body</p></ac:rich-text-body>", colour="#ffee00", width="40")
    assert storage_to_markdown(body) == "Tab body"


def test_numbers_alone_are_not_a_name() -> None:
    assert storage_to_markdown("<p>x " + macro("gadget", width="450", height="300", name="42") + "</p>") == "x"


# --- emoticons: the emoji the author picked, never an invented glyph


@pytest.mark.parametrize(
    ("xhtml", "expected"),
    [
        pytest.param(
            '<ac:emoticon ac:name="blue-star" ac:emoji-shortname=":partyparrot:" '
            'ac:emoji-id="a1b2c3d4-0000" ac:emoji-fallback=":partyparrot:"/>',
            ":partyparrot:",
            id="cloud-custom-emoji-shortname-not-star",
        ),
        pytest.param(
            '<ac:emoticon ac:name="blue-star" ac:emoji-shortname=":grinning:" ac:emoji-id="1f600" '
            'ac:emoji-fallback="😀"/>',
            "😀",
            id="cloud-unicode-emoji-fallback-glyph",
        ),
        pytest.param(
            '<ac:emoticon ac:name="blue-star" ac:emoji-id="custom-9"/>', "", id="cloud-placeholder-nothing-known"
        ),
        pytest.param('<ac:emoticon ac:name="blue-star"/>', "⭐", id="legacy-blue-star"),
        pytest.param(
            '<ac:emoticon ac:name="tick" ac:emoji-shortname=":check_mark:" ac:emoji-id="atlassian-check_mark" '
            'ac:emoji-fallback=":check_mark:"/>',
            "✅",
            id="legacy-name-with-atlassian-shortname",
        ),
        pytest.param(
            '<ac:emoticon ac:name="mystery" ac:emoji-fallback=":meow_party:"/>', ":meow_party:", id="unknown-name"
        ),
    ],
)
def test_emoticon(xhtml: str, expected: str) -> None:
    assert storage_to_markdown(f"<p>ok {xhtml}</p>") == f"ok {expected}".strip()


def test_template_placeholders_are_not_content() -> None:
    body = (
        "<h2>Owner</h2><p><ac:placeholder>Type the owning team here</ac:placeholder></p>"
        '<p>Team: <ac:placeholder ac:type="mention">@mention a person</ac:placeholder>Ops</p>'
    )
    assert storage_to_markdown(body) == "## Owner\n\nTeam: Ops"


@pytest.mark.parametrize("text", ["<p0:>", "see <p0:x> here", "mail <ops@example.com> now", "<https://e.x/a>"])
def test_text_shaped_like_an_autolink_stays_text(text: str) -> None:
    """Page text `<p0:>` is text, not a link reading "p0:" (hypothesis found it at a line start; the same holds
    mid-line). The converter's own autolinks (a link whose text is its URL) are unaffected (test above)."""
    escaped = text.replace("<", "&lt;").replace(">", "&gt;")
    assert_one_paragraph(storage_to_markdown(f"<p>{escaped}</p>"), text)
