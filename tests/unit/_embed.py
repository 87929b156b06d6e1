"""A deterministic stand-in for bge-m3 in search tests: similar text gives similar vectors.

Hashing trick over lowercased words and the character trigrams of each word, L2-normalised. Kept here, not
shared, because search tests assert rankings that a change in a shared fake could silently flip.
"""

from __future__ import annotations

import hashlib
import math
import re

DIM = 1024
_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.35


def _slot(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value % dim, 1.0 if (value >> 63) & 1 else -1.0


def embed_text(text: str, dim: int = DIM) -> list[float]:
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        index, sign = _slot("w:" + word, dim)
        vector[index] += sign * _WORD_WEIGHT
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            index, sign = _slot("t:" + padded[i : i + 3], dim)
            vector[index] += sign * _TRIGRAM_WEIGHT
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        vector[0] = 1.0
        return vector
    return [x / norm for x in vector]


class FakeQueryEmbedder:
    """Satisfies `app.search.QueryEmbedder`; counts calls so tests can assert on them."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.calls: list[str] = []

    async def aget_query_embedding(self, query: str) -> list[float]:
        self.calls.append(query)
        return embed_text(query, self.dim)
