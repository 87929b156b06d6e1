"""Plain text, Markdown, JSON and CSV: bytes decoded with charset-normalizer (which weighs the whole sample,
not a first few bytes, before it names an encoding), CSV rows as a table."""

from __future__ import annotations

import csv
import io

from charset_normalizer import from_bytes

from app.attachments.errors import Corrupt
from app.attachments.markdown import table

BINARY_SHARE = 0.1  # NUL bytes beyond this share: not text, whatever the name says


def decode(data: bytes) -> str:
    """The text of `data` (a BOM wins; else charset-normalizer's best guess). Raises Corrupt for binary."""
    if not data:
        return ""
    if data.count(0) > BINARY_SHARE * len(data) and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Corrupt("binary content")
    best = from_bytes(data).best()
    if best is None:
        raise Corrupt("no text encoding fits")
    return str(best)


def to_markdown(data: bytes, max_chars: int, *, csv_rows: bool = False) -> str:
    """Text as is (cut at `max_chars`); CSV (`csv_rows`) as a table, the first row its header."""
    text = decode(data)[: max_chars * 2]
    if not csv_rows:
        return text[:max_chars]
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    return table(list(csv.reader(io.StringIO(text), dialect)))[:max_chars]
