"""Word (.docx) with python-docx: the body in document order (headings, paragraphs, lists, tables), then the
parts peers leave out: headers and footers of every section, footnotes and endnotes.

Tables: a cell merged across columns or rows is returned by python-docx once per grid position it covers, so
its text repeats across and down, the same rule as page tables (`app/convert.py`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

from docx import Document
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.ns import qn
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree

from app.attachments.errors import Corrupt, Encrypted
from app.attachments.markdown import paragraph, table

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def is_encrypted_ooxml(data: bytes) -> bool:
    """An OOXML file saved with a password is an OLE container holding `EncryptedPackage` (MS-OFFCRYPTO 2.3.4),
    not a ZIP."""
    return data.startswith(OLE_MAGIC) and "EncryptedPackage".encode("utf-16-le") in data


def to_markdown(data: bytes, max_chars: int) -> str:
    """Markdown of a .docx. Raises Encrypted or Corrupt."""
    if is_encrypted_ooxml(data):
        raise Encrypted("password-protected Office file")
    try:
        document = Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, etree.XMLSyntaxError) as exc:
        raise Corrupt(f"not a readable .docx ({type(exc).__name__})") from exc
    blocks: list[str] = []
    size = 0
    for block in _body(document):
        if block:
            blocks.append(block)
            size += len(block)
        if size >= max_chars:
            break
    extras = [*_headers_footers(document), *_notes(document, "footnotes"), *_notes(document, "endnotes")]
    return "\n\n".join(blocks + extras)


def _body(document: Any) -> Iterator[str]:
    # Style names by id, read once: python-docx's `Paragraph.style` scans every style per call (quadratic:
    # 230 s for 20,000 paragraphs in bench/attachment_extraction.py).
    styles = {style.style_id: style.name or "" for style in document.styles}
    body = document.element.body
    for child in body.iterchildren():
        if child.tag == qn("w:p"):
            yield _paragraph(Paragraph(child, document), styles)
        elif child.tag == qn("w:tbl"):
            yield _table(Table(child, document))


def _paragraph(p: Paragraph, styles: dict[str, str]) -> str:
    text = p.text.strip()
    if not text:
        return ""
    style = styles.get(p._p.style or "", "")
    if style == "Title":
        return "# " + " ".join(text.split())
    if style.startswith("Heading ") and style[8:].isdigit():
        return "#" * min(6, int(style[8:]) + 1) + " " + " ".join(text.split())
    if style.startswith("List") or (p._p.pPr is not None and p._p.pPr.numPr is not None):
        return "- " + paragraph(text)
    return paragraph(text)


def _table(t: Table) -> str:
    rows = []
    for row in t.rows:
        rows.append([cell.text for cell in row.cells])
    return table(rows)


def _headers_footers(document: Any) -> list[str]:
    seen: set[str] = set()
    out = []
    for section in document.sections:
        for part, label in ((section.header, "Header"), (section.footer, "Footer")):
            text = "\n".join(p.text for p in part.paragraphs if p.text.strip())
            for t in part.tables:
                text += "\n" + "\n".join(" | ".join(c.text for c in r.cells) for r in t.rows)
            text = text.strip()
            if text and text not in seen:
                seen.add(text)
                out.append(f"{label}: {paragraph(text)}")
    return out


def _notes(document: Any, kind: str) -> list[str]:
    """Footnote or endnote texts, read from their part (python-docx has no API for them)."""
    package = document.part.package
    for part in package.iter_parts():
        if str(part.partname) == f"/word/{kind}.xml":
            root = etree.fromstring(part.blob)
            notes = []
            for note in root.iter(qn("w:footnote" if kind == "footnotes" else "w:endnote")):
                if note.get(qn("w:type")) in ("separator", "continuationSeparator"):
                    continue
                text = "".join(t.text or "" for t in note.iter(qn("w:t"))).strip()
                if text:
                    notes.append(f"{'Footnote' if kind == 'footnotes' else 'Endnote'}: {paragraph(text)}")
            return notes
    return []
