"""A conservative token count for bge-m3, without its vocabulary.

bge-m3 tokenizes with XLM-RoBERTa's SentencePiece model (250k pieces), which we cannot download at run time.
What we need from a count is a promise, not precision: a chunk we call N tokens must never be more than N for
the real tokenizer, or Ollama silently truncates it and the tail is never searchable. So every rule below
rounds up against what SentencePiece does on typical text:

- whitespace costs nothing: SentencePiece folds it into the next piece as `▁`;
- a CJK ideograph, Kana or Hangul character costs 1: XLM-R pieces cover one or more of them, and it has no
  byte fallback, so an unknown character is one `<unk>`, never several;
- a run of Latin, Greek or Cyrillic letters costs ceil(len/3) (real pieces average 4-6 letters in prose; rare
  words and identifiers such as `kubectl` fall to 2-3-letter pieces);
- a run of letters of any other script (Thai, Arabic, Devanagari...) costs ceil(len/2): those scripts often
  have no spaces, so a run is a whole phrase;
- a run of digits costs ceil(len/2): long numbers split into short pieces;
- every other character (punctuation, symbol, emoji, combining mark, `_`) costs 1;
- a word (after whitespace or at the start) that begins with such a character, or with CJK/Kana/Hangul,
  costs 1 more, for the standalone `▁` piece XLM-R emits there (e.g. `▁`, `你好`).

English prose comes out ~1.5x the real count and Korean ~2-3x: chunks are smaller than the nominal size,
the price of never truncating. The count is additive across whitespace and never falls when a string is cut
into pieces, so a sum of piece counts bounds the count of their concatenation. bge-m3 adds `<s>` and
`</s>` to every input: `SPECIAL_TOKENS` is what callers reserve for them.
"""

from __future__ import annotations

import re

SPECIAL_TOKENS = 2

_WIDE = (
    "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
_ALPHABETIC = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u0370-\u03ff\u0400-\u052f"
_PIECES = re.compile(
    rf"(?P<space>\s+)"
    rf"|(?P<wide>[{_WIDE}])"
    rf"|(?P<alpha>[{_ALPHABETIC}]+)"
    rf"|(?P<digits>[0-9]+)"
    rf"|(?P<letters>(?:(?![{_WIDE}{_ALPHABETIC}0-9_])\w)+)"
    rf"|(?P<other>.)",
    re.DOTALL,
)
_WIDTH = {"alpha": 3, "digits": 2, "letters": 2}
_WORD = re.compile(r"\s*\S+\s*|\s+")


def tokenize(text: str) -> list[str]:
    """Pseudo-tokens whose number is our conservative count.

    The pieces are not bge-m3's; they exist so LlamaIndex splitters (`tokenizer=` takes a callable returning a
    list) count exactly as `count_tokens` does.
    """
    pieces: list[str] = []
    word_start = True
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        value = match.group()
        if kind == "space":
            word_start = True
            continue
        if word_start and kind in ("wide", "other"):
            pieces.append("▁")
        word_start = False
        width = _WIDTH.get(kind or "")
        if width is None:
            pieces.append(value)
        else:
            pieces.extend(value[i : i + width] for i in range(0, len(value), width))
    return pieces


def count_tokens(text: str) -> int:
    """Tokens bge-m3 needs for `text` at most (special tokens not included; see `SPECIAL_TOKENS`)."""
    return len(tokenize(text))


def split_to_fit(text: str, limit: int) -> list[str]:
    """Cut `text` into consecutive pieces of at most `limit` tokens each; joined they give `text` back.

    The last resort for a "sentence" longer than a chunk (a minified line, a base64 blob, a 50k-character
    URL list): cut between words where possible, and inside a word only when the word alone is too long.
    """
    if limit < 2:  # one character may cost 2 (a leading `▁` piece)
        raise ValueError(f"limit must be at least 2 tokens, got {limit}")
    pieces: list[str] = []
    current, size = "", 0
    for match in _WORD.finditer(text):
        word = match.group()
        cost = count_tokens(word)
        if current and size + cost > limit:
            pieces.append(current)
            current, size = "", 0
        if cost <= limit:
            current, size = current + word, size + cost
            continue
        for part in _cut_word(word, limit):
            pieces.append(part)
        # The last part of an over-long word may share its piece with the words after it.
        current = pieces.pop()
        size = count_tokens(current)
    if current or not pieces:
        pieces.append(current)
    return pieces


def _cut_word(word: str, limit: int) -> list[str]:
    """Cut one whitespace-free word into the longest prefixes that fit, by bisection on the count."""
    parts: list[str] = []
    rest = word
    cap = 3 * limit + 4  # no character costs less than 1/3 token, so no longer prefix can fit
    while len(rest) > cap or count_tokens(rest) > limit:
        low, high = 1, min(len(rest), cap)  # invariant: rest[:low] fits, rest[:high] does not
        while high - low > 1:
            middle = (low + high) // 2
            if count_tokens(rest[:middle]) <= limit:
                low = middle
            else:
                high = middle
        parts.append(rest[:low])
        rest = rest[low:]
    parts.append(rest)
    return parts
