"""PowerPoint (.pptx) with python-pptx: one `## Slide N: title` section per slide with its text frames,
tables and speaker notes, in shape order. Hidden slides are left out (policy: what the presenter hides is
not what the deck says; the count of hidden slides is noted so nothing vanishes silently)."""

from __future__ import annotations

import io
import zipfile

from lxml import etree
from pptx import Presentation
from pptx.exc import PackageNotFoundError

from app.attachments.docx import is_encrypted_ooxml
from app.attachments.errors import Corrupt, Encrypted
from app.attachments.markdown import paragraph, table


def to_markdown(data: bytes, max_chars: int) -> str:
    """Markdown of a .pptx. Raises Encrypted or Corrupt."""
    if is_encrypted_ooxml(data):
        raise Encrypted("password-protected Office file")
    try:
        deck = Presentation(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, etree.XMLSyntaxError) as exc:
        raise Corrupt(f"not a readable .pptx ({type(exc).__name__})") from exc
    sections: list[str] = []
    hidden = 0
    size = 0
    for number, slide in enumerate(deck.slides, start=1):
        if slide._element.get("show") == "0":
            hidden += 1
            continue
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        blocks = []
        for shape in slide.shapes:
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if shape.has_text_frame and shape.text_frame.text.strip():
                blocks.append(paragraph(shape.text_frame.text))
            if getattr(shape, "has_table", False) and shape.has_table:
                blocks.append(table([[cell.text for cell in row.cells] for row in shape.table.rows]))
        if slide.has_notes_slide and (notes := slide.notes_slide.notes_text_frame.text.strip()):
            blocks.append("Notes: " + paragraph(notes))
        heading = f"## Slide {number}" + (f": {title}" if title else "")
        section = "\n\n".join([heading, *[b for b in blocks if b]])
        sections.append(section)
        size += len(section)
        if size >= max_chars:
            break
    if hidden:
        sections.append(f"({hidden} hidden slide(s) not indexed)")
    return "\n\n".join(sections)
