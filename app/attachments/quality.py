"""Is extracted text real text? Fonts without a ToUnicode map yield glyph ids (`(cid:12)` in pdfminer-based
tools, U+FFFD or private-use code points in pdfium) instead of letters; the extraction "succeeds" with junk."""

from __future__ import annotations

import re
import unicodedata

from app.attachments.errors import GarbageText

_CID = re.compile(r"\(cid:\d+\)")
#: Above this share of junk characters (or cid tokens) the text is refused. A real page of prose has none;
#: a few stray symbols in a table or a formula stay far below it.
MAX_JUNK_SHARE = 0.2


def junk_share(text: str) -> float:
    """Share of non-space characters that are glyph-id tokens, replacement, private-use or control chars."""
    cid_chars = sum(len(m) for m in _CID.findall(text))
    rest = _CID.sub("", text)
    visible = [ch for ch in rest if not ch.isspace()]
    junk = sum(1 for ch in visible if ch == "\ufffd" or unicodedata.category(ch) in ("Co", "Cc", "Cs"))
    total = len(visible) + cid_chars
    return (junk + cid_chars) / total if total else 0.0


def check_text(text: str) -> str:
    """`text` unchanged, or GarbageText when more than MAX_JUNK_SHARE of it is junk."""
    share = junk_share(text)
    if share > MAX_JUNK_SHARE:
        raise GarbageText(f"{share:.0%} of the characters are glyph ids or replacement characters")
    return text
