"""Why an attachment yields no text: each is recorded per attachment as its skip reason (shown in `status`)."""

from __future__ import annotations


class Unextractable(Exception):
    """Base: the file is kept out of the index with `reason`."""

    reason = "unextractable"


class Encrypted(Unextractable):
    reason = "encrypted"


class Corrupt(Unextractable):
    reason = "corrupt"


class NoTextLayer(Unextractable):
    """A PDF whose pages carry no text (a scan): we do not OCR, and indexing nothing silently hides it."""

    reason = "no text layer"


class GarbageText(Unextractable):
    """Text that only looks like text: `(cid:N)` glyph ids or replacement characters from fonts without a
    Unicode map. Embedding it would make the file findable by nothing and pollute results."""

    reason = "garbage text"
