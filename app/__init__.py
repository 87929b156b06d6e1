"""confluence-vectors: keeps a pgvector index of a Confluence wiki in sync, live."""

__version__ = "0.1.0"
