"""Real Confluence pages through the converter: pinned goldens plus the properties that matter for retrieval.

The corpus lives beside the repository (`../shared/corpus`, or `CORPUS_DIR`) and is never copied in; without
it these tests skip. Regenerate the goldens with `UPDATE_GOLDEN=1` and read the diff before committing.
"""

from __future__ import annotations

import html.entities
import os
import re
import unicodedata
from pathlib import Path

import pytest
from lxml import etree

from app.convert import storage_to_markdown

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "convert"
AC = "http://atlassian.com/content"


def corpus_dir() -> Path:
    override = os.environ.get("CORPUS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


STORAGE = corpus_dir() / "storage"
PAGES = sorted(STORAGE.glob("*.xml")) if STORAGE.is_dir() else []
NO_CORPUS = f"corpus of real storage pages not found at {STORAGE} (set CORPUS_DIR to ../shared/corpus)"


def page_params() -> list[object]:
    if not PAGES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_CORPUS), id="no-corpus")]
    return [pytest.param(page, id=page.stem) for page in PAGES]


def convert(page: Path) -> str:
    return storage_to_markdown(page.read_text(encoding="utf-8"))


def page(stem: str) -> str:
    path = STORAGE / f"{stem}.xml"
    if not path.is_file():
        pytest.skip(NO_CORPUS)
    return convert(path)


@pytest.mark.parametrize("path", page_params())
def test_golden(path: Path) -> None:
    golden = GOLDEN_DIR / f"{path.stem}.md"
    markdown = convert(path) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        golden.write_text(markdown, encoding="utf-8")
    assert golden.is_file(), f"no golden for {path.name}: run with UPDATE_GOLDEN=1 and review it"
    assert markdown == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", page_params())
def test_no_storage_markup_left(path: Path) -> None:
    markdown = convert(path)
    assert not re.search(r"(?<![A-Za-z])(ac|ri|at):[a-z]", markdown)
    assert "CDATA" not in markdown
    assert "]]>" not in markdown
    assert "&nbsp;" not in markdown
    assert "&amp;" not in markdown


@pytest.mark.parametrize("path", page_params())
def test_whitespace_is_tidy(path: Path) -> None:
    markdown = convert(path)
    assert markdown == markdown.strip()
    assert all(line == line.rstrip() for line in markdown.split("\n"))
    assert "\n\n\n\n" not in markdown


def visible_words(xhtml: str) -> list[str]:
    """Words a reader of the page sees: text nodes outside macro parameters, ADF duplicates and task ids."""
    ns = f'xmlns:ac="{AC}" xmlns:ri="http://atlassian.com/resource/identifier"'
    xhtml = re.sub(r"&(?!amp;|lt;|gt;|quot;|apos;)(\w+;)", lambda m: html.entities.html5[m.group(1)], xhtml)
    root = etree.fromstring(f"<r {ns}>{xhtml}</r>".encode(), etree.XMLParser(recover=True))
    hidden = [
        f"{{{AC}}}{name}"
        for name in ("parameter", "adf-fallback", "adf-attribute", "task-id", "task-uuid", "task-status")
    ]
    etree.strip_elements(root, *hidden, with_tail=False)
    return [unicodedata.normalize("NFC", word) for text in root.itertext() for word in text.split()]


@pytest.mark.parametrize("path", page_params())
def test_every_visible_word_is_kept(path: Path) -> None:
    """Fidelity: each word of visible text survives (the failure one peer had, 17,940 → 1,119 chars)."""
    xhtml = path.read_text(encoding="utf-8")
    markdown = convert(path)
    missing = [word for word in visible_words(xhtml) if word not in markdown]
    assert not missing


def test_adf_fallback_duplicate_is_dropped() -> None:
    markdown = page("querypie_real_page_544379140")
    assert markdown.count("(1) 필터 표현식을 사용하시기 위해") == 1
    assert markdown.count("다운로드 대상 파일은") == 1
    assert markdown.count("> **Note:**") == 4  # one note macro, three ADF note panels
    assert "> **Note:** **필터 표현식**" in markdown


def test_long_table_kept_as_markdown_table() -> None:
    markdown = page("querypie_real_page_544379140")
    assert "| **Log Type** | **Release Version** | **Format** |\n| --- | --- | --- |" in markdown
    assert "| Web App Event Audit | 11.0.0 | CSV |" in markdown


def test_wordy_table_becomes_records_and_status_labels() -> None:
    markdown = page("querypie_real_page_544382364")
    assert "Category: `apiVersion`\nProperty: -\nRequired: O" in markdown
    assert "[와일드카드 및 정규표현식 허용]" in markdown
    assert "1. 해당 `resources` 필드에 대한 정의는 필수입니다. [REQUIRED]" in markdown


def test_code_inside_expand_and_list_is_fenced() -> None:
    markdown = page("querypie_real_page_544381877")
    assert "**generate_kubepie_sa.sh 스크립트 컨텐츠**\n\n```\n#!/bin/bash\n" in markdown
    assert "  ```\n  chmod +x generate_kubepie_sa.sh\n  ./generate_kubepie_sa.sh\n  ```" in markdown
    assert "- ✅ **Verified**" in markdown
    assert "- ❌ **Verification Failed**" in markdown


def test_layout_cells_in_reading_order_with_captions() -> None:
    markdown = page("querypie_real_page_568918170")
    first, second = markdown.index("원 결재자 기준 표시 내용"), markdown.index("대리 결재자 기준 표시 내용")
    assert first < second
    assert "![스크린샷 2024-08-02 오후 12.07.41.png]\n_원 결재자 기준 표시 내용_" in markdown
    assert "Slack DM 개인 알림 사용하기" in markdown


def test_toc_dropped_and_view_file_names_kept() -> None:
    markdown = page("querypie_real_page_544375741")
    assert "External API 변경사항 바로가기" not in markdown
    assert "994_external.json" in markdown
    assert "| - dataFlowRequest.filterKey<br>- dataFlowRequest.filterValue" in markdown


def test_page_links_keep_their_text() -> None:
    markdown = page("querypie_real_page_1911652402")
    assert "자세한 설치 방법은 이 문서를 참조하세요: 설치 가이드 - setup.v2.sh" in markdown
    assert "- Helm Chart : <https://github.com/chequer-io/querypie-deployment>" in markdown


def test_spans_table_and_adf_panel() -> None:
    assert page("gitfs_table_spans-widths") == (
        "| A | colspan 2 | colspan 2 |\n| --- | --- | --- |\n| rowspan 2 | a | b |\n"
        "| rowspan 2 | colspan 2 | colspan 2 |"
    )
    assert page("gitfs_panel_error_adf-extension") == "> **Error:** error"


def test_generated_pages() -> None:
    assert "````nested\ncode\n``` more code ```\neven more code\n````" in page("mark_codes")
    assert "**my mermaid graph**\n```mermaid\ngraph TD;" in page("mark_codes")
    assert page("mark_tasklists").startswith("- [x] #739\n- [ ] <https://github.com")
    assert "![My Image]" in page("mark_links")
    toc = page("md2conf_toc")
    assert "Child pages macro:" in toc
    assert "clear" not in toc
    assert "- [GRAY]" in page("md2conf_status")
    assert "| Data | A multi-line<br>paragraph. |" in page("md2conf_table")
