"""One small storage-format case per conversion rule, so a regression names the rule it broke."""

from __future__ import annotations

import pytest

from app.convert import storage_to_markdown, user_refs


def md(xhtml: str, **kwargs: object) -> str:
    return storage_to_markdown(xhtml, **kwargs)  # type: ignore[arg-type]


def code(name: str, body: str, **params: str) -> str:
    """A code-like macro as Confluence stores it."""
    rendered = "".join(f'<ac:parameter ac:name="{k}">{v}</ac:parameter>' for k, v in params.items())
    return (
        f'<ac:structured-macro ac:name="{name}">{rendered}'
        f"<ac:plain-text-body><![CDATA[{body}]]></ac:plain-text-body></ac:structured-macro>"
    )


def macro(name: str, body: str = "", **params: str) -> str:
    """A rich-text macro as Confluence stores it."""
    rendered = "".join(f'<ac:parameter ac:name="{k}">{v}</ac:parameter>' for k, v in params.items())
    rich = f"<ac:rich-text-body>{body}</ac:rich-text-body>" if body else ""
    return f'<ac:structured-macro ac:name="{name}">{rendered}{rich}</ac:structured-macro>'


BLOCKS = [
    *(pytest.param(f"<h{n}>Title</h{n}>", "#" * n + " Title", id=f"h{n}") for n in range(1, 7)),
    pytest.param("<h3><strong>(GET) List</strong></h3>", "### (GET) List", id="heading-unwraps-full-bold"),
    pytest.param("<h2></h2><p>x</p>", "x", id="empty-heading-dropped"),
    pytest.param("<p>a</p><p>b</p>", "a\n\nb", id="paragraphs-blank-line"),
    pytest.param("<p>a</p><p/><p>&nbsp;</p><p>b</p>", "a\n\nb", id="empty-paragraphs-dropped"),
    pytest.param("<p>  a\n   b  </p>\n\n\n<p>c</p>", "a b\n\nc", id="source-whitespace-collapsed"),
    pytest.param("<p>a<br/>b</p>", "a\nb", id="br-line-break"),
    pytest.param("<p>a<br/><br/><br/><br/>b</p>", "a\n\nb", id="br-runs-capped"),
    pytest.param("<blockquote><p>a</p><p>b</p></blockquote>", "> a\n>\n> b", id="blockquote"),
    pytest.param("<p>a</p><hr/><p>b</p>", "a\n\n---\n\nb", id="hr"),
    pytest.param("<pre>  x = 1\n  y = 2</pre>", "```\n  x = 1\n  y = 2\n```", id="pre-fenced-verbatim"),
    pytest.param("<ul><li>a</li><li>b</li></ul>", "- a\n- b", id="ul"),
    pytest.param("<ol><li>a</li><li>b</li></ol>", "1. a\n2. b", id="ol"),
    pytest.param('<ol start="3"><li>a</li><li>b</li></ol>', "3. a\n4. b", id="ol-start"),
    pytest.param("<ul><li><p>a</p><ul><li><p>b</p></li></ul></li></ul>", "- a\n  - b", id="nested-ul-2"),
    pytest.param(
        "<ol><li>a<ol><li>b<ul><li>c</li></ul></li></ol></li></ol>",
        "1. a\n   1. b\n      - c",
        id="nested-ol-3",
    ),
    pytest.param("<ul><li>a</li><ul><li>b</li></ul></ul>", "- a\n  - b", id="list-directly-in-list"),
    pytest.param("<ul><li><p>a</p><p>b</p></li><li>c</li></ul>", "- a\n\n  b\n- c", id="item-paragraphs"),
    pytest.param("<ol><li><p>a</p></li><li><p/></li><li>c</li></ol>", "1. a\n2.\n3. c", id="empty-item-kept"),
    pytest.param(
        "<ul><li>x" + code("code", "a\nb") + "</li></ul>",
        "- x\n  ```\n  a\n  b\n  ```",
        id="code-in-item-indented",
    ),
    pytest.param("<div><section><p>a</p></section><span>b</span></div>", "a\n\nb", id="containers"),
]

INLINE = [
    pytest.param("<p><strong>b</strong> <b>c</b></p>", "**b** **c**", id="bold"),
    pytest.param("<p><em>i</em> <i>j</i></p>", "_i_ _j_", id="italic"),
    pytest.param("<p><code>x = 1</code></p>", "`x = 1`", id="inline-code"),
    pytest.param("<p><code>x &gt; `10`</code></p>", "`` x > `10` ``", id="inline-code-with-backticks"),
    pytest.param("<p><s>a</s> <del>b</del> <strike>c</strike></p>", "~~a~~ ~~b~~ ~~c~~", id="strike"),
    pytest.param("<p><strong>Task Name </strong>: x</p>", "**Task Name** : x", id="emphasis-space-outside"),
    pytest.param("<p><strong><strong>x</strong></strong></p>", "**x**", id="nested-bold-once"),
    pytest.param("<p>a<strong> </strong>b</p>", "a b", id="empty-emphasis-dropped"),
    pytest.param(
        "<p><u>under</u> <span style='color: red'>span</span> <sup>1</sup></p>",
        "under span 1",
        id="presentational-tags-text",
    ),
    pytest.param('<p><a href="https://x.y/a">X</a></p>', "[X](https://x.y/a)", id="link"),
    pytest.param('<p><a href="https://x.y">https://x.y</a></p>', "<https://x.y>", id="link-text-is-url"),
    pytest.param('<p><a href="a b">t</a></p>', "[t](<a b>)", id="link-href-with-space"),
    pytest.param('<p>see <a href="">here</a></p>', "see here", id="link-without-href"),
    pytest.param('<p>x <a href="https://x.y"></a></p>', "x <https://x.y>", id="link-without-text"),
    pytest.param('<p>on <time datetime="2024-05-01" /></p>', "on 2024-05-01", id="time"),
    pytest.param(
        "<p>a&nbsp;b &rarr; &lsquo;c&rsquo; &amp; &lt;d&gt; &#160;&#x263A;</p>",
        "a b → ‘c’ & <d> ☺",
        id="entities",
    ),
    pytest.param("<p>R&D & co &bogus;</p>", "R&D & co &bogus;", id="stray-ampersands-kept"),
    pytest.param(
        "<p>쿼리파이 접근 제어 <strong>정책</strong>입니다.</p>",
        "쿼리파이 접근 제어 **정책**입니다.",
        id="korean",
    ),
    pytest.param(
        "<p><foo>unknown</foo> <bar:baz>element</bar:baz></p>", "unknown element", id="unknown-elements"
    ),
    pytest.param('<p><img src="x.png" alt="Alt"/></p>', "![Alt]", id="html-img"),
]

TABLES = [
    pytest.param(
        "<table><tbody><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></tbody></table>",
        "| A | B |\n| --- | --- |\n| 1 | 2 |",
        id="th-header",
    ),
    pytest.param(
        "<table><tr><td>k</td><td>v</td></tr><tr><td>1</td><td>2</td></tr></table>",
        "| k | v |\n| --- | --- |\n| 1 | 2 |",
        id="first-row-header-without-th",
    ),
    pytest.param(
        "<table><colgroup><col/><col/></colgroup><thead><tr><th>A</th><th>B</th></tr></thead>"
        "<tbody><tr><td>1</td><td>2</td></tr></tbody></table>",
        "| A | B |\n| --- | --- |\n| 1 | 2 |",
        id="thead-and-colgroup",
    ),
    pytest.param(
        '<table><tr><th>A</th><th colspan="2">C</th></tr><tr><td rowspan="2">R</td><td>a</td><td>b</td></tr>'
        '<tr><td colspan="2">D</td></tr></table>',
        "| A | C | C |\n| --- | --- | --- |\n| R | a | b |\n| R | D | D |",
        id="colspan-repeats-rowspan-carries",
    ),
    pytest.param(
        "<table><tr><th>A</th><th>B</th></tr><tr><td>1</td></tr></table>",
        "| A | B |\n| --- | --- |\n| 1 |  |",
        id="ragged-row-padded",
    ),
    pytest.param(
        "<table><tr><th>A</th></tr><tr><td><p>x|y</p><p>z</p></td></tr></table>",
        "| A |\n| --- |\n| x\\|y<br>z |",
        id="pipes-escaped-newlines-br",
    ),
    pytest.param(
        "<table><tr><th>A</th></tr><tr><td><ul><li>a</li><li>b</li></ul></td></tr></table>",
        "| A |\n| --- |\n| - a<br>- b |",
        id="list-in-cell",
    ),
    pytest.param(
        "<table><tr>"
        + "".join(f"<th>h{i}</th>" for i in range(9))
        + "</tr><tr>"
        + "".join(f"<td>v{i}</td>" for i in range(9))
        + "</tr><tr><td>w0</td></tr></table>",
        "\n".join(f"h{i}: v{i}" for i in range(9)) + "\n\nh0: w0",
        id="wide-table-records",
    ),
    pytest.param(
        "<table><tr><th>Key</th><th>Text</th></tr><tr><td>k</td><td>" + "word " * 70 + "</td></tr></table>",
        "Key: k\nText: " + ("word " * 70).strip(),
        id="long-row-records",
    ),
    pytest.param(
        "<table><tr><th>K</th><th></th></tr><tr><td>a</td><td><p>l1</p><p>l2</p></td></tr></table>"
        + "<p>x</p>",
        "| K |  |\n| --- | --- |\n| a | l1<br>l2 |\n\nx",
        id="empty-header-cell",
    ),
    pytest.param(
        "<table><tr><th>Outer</th></tr><tr><td><table><tr><th>k</th></tr><tr><td>v</td></tr></table></td></tr>"
        "</table>",
        "| Outer |\n| --- |\n| k: v |",
        id="nested-table-as-records",
    ),
    pytest.param("<table><tr><td></td></tr></table><p>x</p>", "x", id="empty-table-dropped"),
]

MACROS = [
    pytest.param(
        code("code", "print(1)", language="python", title="Demo"),
        "**Demo**\n```python\nprint(1)\n```",
        id="code-language-title",
    ),
    pytest.param(code("code", "x", language="none"), "```\nx\n```", id="code-language-none"),
    pytest.param(code("noformat", "\n  keep\n indent\n"), "```\n  keep\n indent\n```", id="noformat"),
    pytest.param(code("code", "a && b <x> &nbsp;"), "```\na && b <x> &nbsp;\n```", id="cdata-verbatim"),
    pytest.param(code("code", "```\ninner\n```"), "````\n```\ninner\n```\n````", id="fence-outgrows-body"),
    pytest.param(code("code", ""), "", id="empty-code-dropped"),
    *(
        pytest.param(macro(name, "<p>Body</p>"), f"> **{name.capitalize()}:** Body", id=f"panel-{name}")
        for name in ("info", "note", "warning", "tip", "panel")
    ),
    pytest.param(macro("info", "<p>Body</p>", title="Heads up"), "> **Heads up:** Body", id="panel-title"),
    pytest.param(macro("note", "<p>a</p><p>b</p>"), "> **Note:** a\n>\n> b", id="panel-every-line-quoted"),
    pytest.param(
        macro("note", "<ul><li>a</li></ul>"), "> **Note:**\n>\n> - a", id="panel-starting-with-list"
    ),
    pytest.param(macro("expand", "<p>Body</p>", title="More"), "**More**\n\nBody", id="expand"),
    pytest.param(macro("expand", "<p>Body</p>"), "**Expand**\n\nBody", id="expand-default-title"),
    pytest.param(
        "<p>State: " + macro("status", title="In progress", colour="Blue") + "</p>",
        "State: [IN PROGRESS]",
        id="status",
    ),
    pytest.param("<p>" + macro("jira", key="ABC-12", server="System JIRA") + "</p>", "ABC-12", id="jira-key"),
    pytest.param(macro("jira", jqlQuery="project = ABC"), "project = ABC", id="jira-jql"),
    pytest.param(macro("excerpt", "<p>Summary</p>", hidden="true"), "Summary", id="excerpt"),
    *(
        pytest.param("<p>a</p>" + macro(name, "<p>hidden</p>", maxLevel="2"), "a", id=f"dropped-{name}")
        for name in ("toc", "children", "pagetree", "anchor")
    ),
    pytest.param(macro("details", "<p>kept body</p>"), "kept body", id="unknown-macro-rich-body"),
    pytest.param(code("html", "<b>x</b>"), "```\n<b>x</b>\n```", id="unknown-macro-plain-body"),
    pytest.param(
        '<p><ac:structured-macro ac:name="view-file"><ac:parameter ac:name="name">'
        '<ri:attachment ri:filename="spec.json"/></ac:parameter></ac:structured-macro></p>',
        "spec.json",
        id="unknown-macro-parameter-values",
    ),
    pytest.param(
        macro("widget", url="https://v.example/1", autoplay="true"),
        "https://v.example/1",
        id="unknown-macro-skips-switches",
    ),
    pytest.param(
        '<ac:macro ac:name="code"><ac:plain-text-body><![CDATA[old]]></ac:plain-text-body></ac:macro>',
        "```\nold\n```",
        id="legacy-ac-macro",
    ),
]

ADF_PANEL = (
    '<ac:adf-extension><ac:adf-node type="panel"><ac:adf-attribute key="panel-type">{kind}</ac:adf-attribute>'
    "<ac:adf-content><p>Once</p></ac:adf-content></ac:adf-node>"
    '<ac:adf-fallback><div class="panel"><p>Once</p></div></ac:adf-fallback></ac:adf-extension>'
)
ADF = [
    pytest.param(ADF_PANEL.format(kind="note"), "> **Note:** Once", id="adf-panel-fallback-dropped"),
    pytest.param(ADF_PANEL.format(kind="error"), "> **Error:** Once", id="adf-panel-type"),
    pytest.param(ADF_PANEL.format(kind="custom"), "> **Panel:** Once", id="adf-panel-custom"),
    pytest.param(
        '<ac:adf-extension><ac:adf-node type="decision-list"><ac:adf-node type="decision-item">'
        "<ac:adf-content><p>Decided</p></ac:adf-content></ac:adf-node></ac:adf-node></ac:adf-extension>",
        "Decided",
        id="adf-nested-nodes",
    ),
    pytest.param(
        "<ac:adf-extension><ac:adf-fallback><p>Only fallback</p></ac:adf-fallback></ac:adf-extension>",
        "Only fallback",
        id="adf-fallback-when-nothing-else",
    ),
]

USERS = {"557058:abc": "Ada Lovelace", "jdoe": "John Doe", "8a7f": "Kim Key"}
LINKS = [
    pytest.param(
        '<p><ac:link><ri:page ri:content-title="Target"/><ac:link-body>Shown <b>text</b></ac:link-body>'
        "</ac:link></p>",
        "Shown **text**",
        id="link-body",
    ),
    pytest.param(
        '<p><ac:link><ri:page ri:content-title="T"/><ac:plain-text-link-body><![CDATA[a & b]]>'
        "</ac:plain-text-link-body></ac:link></p>",
        "a & b",
        id="plain-text-link-body",
    ),
    pytest.param(
        '<p><ac:link><ri:page ri:content-title="Page Title"/></ac:link></p>', "Page Title", id="page"
    ),
    pytest.param('<p><ac:link><ri:attachment ri:filename="a.pdf"/></ac:link></p>', "a.pdf", id="attachment"),
    pytest.param('<p><ac:link><ri:space ri:space-key="DOCS"/></ac:link></p>', "DOCS", id="space"),
    pytest.param('<p><ac:link><ri:url ri:value="https://e.x/"/></ac:link></p>', "https://e.x/", id="url"),
    pytest.param('<p><ac:link ac:anchor="Setup"/></p>', "Setup", id="anchor-only"),
    pytest.param(
        '<p>by <ac:link><ri:user ri:account-id="557058:abc"/></ac:link></p>',
        "by Ada Lovelace",
        id="user-cloud",
    ),
    pytest.param('<p>by <ri:user ri:username="jdoe"/></p>', "by John Doe", id="user-dc-username-alone"),
    pytest.param(
        '<p>by <ac:link><ri:user ri:userkey="8a7f"/></ac:link></p>', "by Kim Key", id="user-dc-userkey"
    ),
    pytest.param(
        '<p>by <ac:link><ri:user ri:account-id="nobody"/></ac:link></p>',
        "by @unknown-user",
        id="user-unknown",
    ),
    pytest.param('<p>by <ri:user ri:username="zed"/></p>', "by zed", id="user-unresolved-username"),
]

CONFLUENCE = [
    pytest.param(
        '<p><ac:image ac:alt="Diagram"><ri:attachment ri:filename="d.png"/></ac:image></p>',
        "![Diagram]",
        id="image-alt",
    ),
    pytest.param(
        '<p>x <ac:image><ri:attachment ri:filename="d.png"/></ac:image></p>',
        "x ![d.png]",
        id="image-filename",
    ),
    pytest.param(
        '<p>x <ac:image><ri:url ri:value="https://e.x/i.png"/></ac:image></p>',
        "x ![https://e.x/i.png]",
        id="image-url",
    ),
    pytest.param(
        '<ac:image><ri:attachment ri:filename="d.png"/>'
        "<ac:caption><p>Menu &gt; Item</p></ac:caption></ac:image>",
        "![d.png]\n_Menu > Item_",
        id="image-caption",
    ),
    pytest.param(
        "<ac:task-list><ac:task><ac:task-id>1</ac:task-id><ac:task-status>complete</ac:task-status>"
        "<ac:task-body>Done <strong>it</strong></ac:task-body></ac:task><ac:task><ac:task-id>2</ac:task-id>"
        "<ac:task-status>incomplete</ac:task-status><ac:task-body>Open</ac:task-body></ac:task></ac:task-list>",
        "- [x] Done **it**\n- [ ] Open",
        id="task-list",
    ),
    pytest.param(
        '<p><ac:emoticon ac:name="tick" ac:emoji-fallback="✅"/> ok</p>', "✅ ok", id="emoji-fallback"
    ),
    pytest.param(
        '<p><ac:emoticon ac:name="cross" ac:emoji-fallback=":cross_mark:"/> no</p>',
        "❌ no",
        id="emoji-shortname-uses-name",
    ),
    *(
        pytest.param(f'<p>a <ac:emoticon ac:name="{name}"/></p>', f"a {char}", id=f"emoticon-{name}")
        for name, char in [
            ("smile", "🙂"),
            ("sad", "🙁"),
            ("warning", "⚠️"),
            ("information", "ℹ️"),
            ("plus", "➕"),
            ("minus", "➖"),
            ("question", "❓"),
            ("light-on", "💡"),
            ("yellow-star", "⭐"),
            ("thumbs-up", "👍"),
            ("thumbs-down", "👎"),
        ]
    ),
    pytest.param('<p>a <ac:emoticon ac:name="mystery"/></p>', "a", id="emoticon-unknown-nothing"),
    pytest.param(
        "<ac:layout><ac:layout-section><ac:layout-cell><p>one</p></ac:layout-cell><ac:layout-cell><p>two</p>"
        "</ac:layout-cell></ac:layout-section><ac:layout-section><ac:layout-cell><p>three</p></ac:layout-cell>"
        "</ac:layout-section></ac:layout>",
        "one\n\ntwo\n\nthree",
        id="layout-reading-order",
    ),
    pytest.param(
        "<p>Name: <ac:placeholder>Type a name</ac:placeholder></p>",
        "Name:",
        id="placeholder-dropped",
    ),
    pytest.param(
        '<p>a <ac:inline-comment-marker ac:ref="x">marked</ac:inline-comment-marker> b</p>',
        "a marked b",
        id="inline-comment-marker",
    ),
]


@pytest.mark.parametrize(("xhtml", "expected"), BLOCKS + INLINE + TABLES + MACROS + ADF + CONFLUENCE)
def test_rule(xhtml: str, expected: str) -> None:
    assert md(xhtml) == expected


@pytest.mark.parametrize(("xhtml", "expected"), LINKS)
def test_links_and_users(xhtml: str, expected: str) -> None:
    assert md(xhtml, users=USERS) == expected


@pytest.mark.parametrize(
    "xhtml",
    [
        pytest.param('<ac:image><ri:attachment ri:filename="a.png"/></ac:image>', id="only-image"),
        pytest.param(macro("toc"), id="only-dropped-macro"),
        pytest.param("", id="empty"),
        pytest.param("<p> &nbsp; </p>", id="only-whitespace"),
    ],
)
def test_body_without_text_yields_title(xhtml: str) -> None:
    assert md(xhtml, title="Release notes") == "Release notes"


def test_title_not_used_when_body_has_text() -> None:
    assert md("<p>Body</p>", title="T") == "Body"


def test_status_counts_as_text() -> None:
    assert md(macro("status", title="done"), title="T") == "[DONE]"


def test_output_has_no_trailing_spaces_or_blank_runs() -> None:
    out = md("<p>a </p>\n\n<p> </p><div><p>b  <br/>  c</p></div>" + code("code", "x  \n\n\n\n\ny"))
    assert all(line == line.rstrip() for line in out.split("\n"))
    assert "\n\n\n\n" not in out


def test_user_refs_collects_every_kind() -> None:
    xhtml = (
        '<p><ac:link><ri:user ri:account-id="557058:abc"/></ac:link> <ri:user ri:username="jdoe"/>'
        '<ac:link><ri:user ri:userkey="8a7f"/></ac:link><ri:page ri:content-title="x"/></p>'
        '<ac:structured-macro ac:name="profile"><ac:parameter ac:name="user"><ri:user ri:account-id="p1"/>'
        "</ac:parameter></ac:structured-macro>"
    )
    assert user_refs(xhtml) == {"557058:abc", "jdoe", "8a7f", "p1"}


@pytest.mark.parametrize("xhtml", ["", "<p>no users</p>", "<<<", "\x00", "<ri:user"])
def test_user_refs_never_raises(xhtml: str) -> None:
    assert isinstance(user_refs(xhtml), set)


MALFORMED = [
    "<p>unclosed <b>bold <i>it</p><p>next</p>",
    "<p>before</p></div></p><p>after</p>",
    "<p>x" + '<ac:structured-macro ac:name="code"><ac:plain-text-body><![CDATA[unterminated',
    "<?xml version='1.0' encoding='UTF-8'?><p>decl</p>",
    "<<<>>>",
    "<p a=b>unquoted</p>",
    "<div>" * 3000 + "deep" + "</div>" * 3000,
    '<table><tr><td colspan="999999999" rowspan="-3">x</td><td rowspan="abc">y</td></tr></table>',
    "<p>\x00\x01bad\ud800chars\uffff</p>",
    "<ac:structured-macro><ac:parameter>",
    '<ac:adf-extension><ac:adf-node type="panel"><ac:adf-content>',
    "<ac:task-list><ac:task><ac:task-body>",
    "]]><![CDATA[",
    "&#99999999999;&#x;&;&",
]


@pytest.mark.parametrize("xhtml", MALFORMED)
def test_malformed_markup_never_raises(xhtml: str) -> None:
    assert isinstance(md(xhtml, title="T"), str)


def test_malformed_markup_keeps_text() -> None:
    out = md("<p>unclosed <b>bold</p><p>next para</p><p>x &amp y</p>")
    assert "unclosed" in out
    assert "next para" in out
    assert "x & y" in out


def test_unterminated_cdata_keeps_code() -> None:
    out = md("<p>x</p>" + '<ac:structured-macro ac:name="code"><ac:plain-text-body><![CDATA[tail code')
    assert "tail code" in out


@pytest.mark.parametrize("value", [None, b"<p>bytes</p>", 42])
def test_non_string_input_never_raises(value: object) -> None:
    assert isinstance(md(value), str)  # type: ignore[arg-type]
