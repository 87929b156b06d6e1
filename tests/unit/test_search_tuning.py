"""HNSW tuning rules of `app.search` (the measurements behind them are in bench/search_latency.py)."""

from app.search import MAX_EF_SEARCH, candidate_count, ef_search_for


def test_unfiltered_scans_stay_small_so_the_planner_keeps_the_index() -> None:
    assert ef_search_for(10) == 40
    assert ef_search_for(candidate_count(10)) == candidate_count(10)


def test_filtered_scans_look_deeper_than_unfiltered_ones() -> None:
    for limit in (1, 10, 50, 200):
        assert ef_search_for(limit, filtered=True) >= max(100, 2 * limit)
        assert ef_search_for(limit, filtered=True) > ef_search_for(limit)


def test_ef_search_never_exceeds_pgvectors_cap() -> None:
    assert ef_search_for(5000) == MAX_EF_SEARCH
    assert ef_search_for(5000, filtered=True) == MAX_EF_SEARCH
