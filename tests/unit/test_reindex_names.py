"""Every name a reindex makes fits Postgres's 63-byte identifiers, for every VECTOR_TABLE the settings allow."""

from __future__ import annotations

import pytest

from app.db import MAX_IDENTIFIER_BYTES, fit_identifier, vector_index_names
from app.reindex import MAX_TABLE_NAME, STATE_TABLE, shadow_table, short_name, swap_names
from tests.conftest import make_settings

LONGEST = "t" * MAX_TABLE_NAME


def every_name(table: str) -> list[str]:
    """The physical table, its indexes, primary key and id sequence, as `ensure_vector_table` makes them."""
    physical = f"data_{table}"
    return [physical, *vector_index_names(table).values(), f"{physical}_pkey", f"{physical}_id_seq"]


def test_the_longest_table_name_the_settings_allow_is_the_one_tested() -> None:
    assert make_settings(vector_table=LONGEST).vector_table == LONGEST
    with pytest.raises(ValueError):
        make_settings(vector_table=LONGEST + "t")


@pytest.mark.parametrize("table", ["confluence", "a", LONGEST, "x" * 44, "x" * 47, "wiki_" + "n" * 46])
def test_live_and_shadow_names_fit_and_never_collide(table: str) -> None:
    shadow = shadow_table(table)
    assert shadow != table and len(shadow) <= MAX_TABLE_NAME
    live_names, shadow_names = every_name(table), every_name(shadow)
    for name in [*live_names, *shadow_names, STATE_TABLE]:
        assert len(name.encode()) <= MAX_IDENTIFIER_BYTES, name
    assert len(set(live_names)) == len(live_names)
    assert len(set(shadow_names)) == len(shadow_names)
    assert not set(live_names) & set(shadow_names)
    assert [new for _, new in swap_names(table, shadow)] == list(vector_index_names(table).values())


def test_short_names_are_kept_and_long_ones_hash_shortened_stably() -> None:
    assert shadow_table("confluence") == "confluence_reindex"
    long = shadow_table(LONGEST)
    assert len(long) == MAX_TABLE_NAME and long == shadow_table(LONGEST)
    assert short_name(LONGEST + "_reindex") != short_name(LONGEST[:-1] + "u_reindex")


def test_fit_identifier_cuts_like_postgres() -> None:
    """Postgres keeps the first 63 bytes (on a character boundary): tables made before keep their names."""
    assert fit_identifier("data_confluence_embedding_idx") == "data_confluence_embedding_idx"
    name = f"data_{LONGEST}_embedding_idx"
    assert fit_identifier(name) == name[:63]
    assert fit_identifier("é" * 40) == "é" * 31  # 62 bytes: the 32nd character would straddle byte 63
