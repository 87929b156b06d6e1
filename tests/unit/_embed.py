"""A deterministic stand-in for bge-m3 in search tests: similar text gives similar vectors.

The fake Ollama's hashing trick (words and character trigrams, L2-normalised) with its own trigram weight,
pinned here because search tests assert rankings that a change of the fake's default could silently flip.
"""

from __future__ import annotations

from tests.fakes import ollama

DIM = 1024
#: Lighter word pieces than the fake Ollama's default: the search tests' rankings were pinned with this.
_TRIGRAM_WEIGHT = 0.35


def embed_text(text: str, dim: int = DIM) -> list[float]:
    return ollama.embed_text(text, dim, trigram_weight=_TRIGRAM_WEIGHT)


class FakeQueryEmbedder:
    """Satisfies `app.search.QueryEmbedder`; counts calls so tests can assert on them."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.calls: list[str] = []

    async def aget_query_embedding(self, query: str) -> list[float]:
        self.calls.append(query)
        return embed_text(query, self.dim)
