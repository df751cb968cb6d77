"""Period boundaries: equal counts as far as ties allow, or explicit dates."""

from __future__ import annotations

from datetime import date

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recicl.data.periods import (
    assign_periods,
    date_boundaries,
    describe_periods,
    equal_count_boundaries,
)


def test_equal_counts_without_ties():
    ts = np.arange(1000, 2000)
    boundaries = equal_count_boundaries(ts, 4)
    assert boundaries.tolist() == [1250, 1500, 1750]
    assert np.bincount(assign_periods(ts, boundaries)).tolist() == [250, 250, 250, 250]


def test_ties_stay_in_one_period_and_cut_moves_the_least():
    ts = np.array([1, 2, 3, 4, 4, 4, 4, 5, 6, 7])  # ideal cut at index 5 falls in the 4-run
    boundaries = equal_count_boundaries(ts, 2)
    # Cutting at 4 gives 3|7, at 5 gives 7|3: equally far; the earlier start is chosen.
    assert boundaries.tolist() == [4]
    periods = assign_periods(ts, boundaries)
    assert len(set(periods[ts == 4].tolist())) == 1


def test_heavy_ties_give_fewer_periods():
    ts = np.array([5] * 90 + [6] * 10)
    assert len(equal_count_boundaries(ts, 5)) < 4


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 50), min_size=1, max_size=300),
    periods=st.integers(1, 12),
)
def test_boundaries_are_increasing_and_counts_near_equal_without_ties(values, periods):
    ts = np.array(values)
    boundaries = equal_count_boundaries(ts, periods)
    assert np.all(np.diff(boundaries) > 0)
    assert len(boundaries) <= periods - 1
    if len(np.unique(ts)) == len(ts) and len(ts) >= periods:
        counts = np.bincount(assign_periods(ts, boundaries), minlength=periods)
        assert counts.max() - counts.min() <= 1


def test_explicit_dates_and_description():
    boundaries = date_boundaries([date(2000, 1, 1), date(2001, 1, 1)])
    assert boundaries.tolist() == [946684800, 978307200]
    ts = np.array([946684799, 946684800, 978307300])
    labels = np.array([1.0, 0.0, 1.0])
    rows = describe_periods(boundaries, ts, labels, np.array([False, True, True]))
    assert [r["events"] for r in rows] == [1, 1, 1]
    assert [r["samples"] for r in rows] == [0, 1, 1]
    assert rows[1]["start"] == "2000-01-01T00:00:00Z"
    assert rows[0]["like_rate"] == 1.0 and rows[1]["like_rate"] == 0.0
