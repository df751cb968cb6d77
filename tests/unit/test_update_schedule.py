"""Update strategies of the streaming protocol: which model scores which period, tuned on what.

The leak test of the study: no period is ever scored by a model that was tuned on it, or that
continues (warm) a model tuned on it; and each strategy updates at its cadence."""

from __future__ import annotations

import itertools

import pytest

from recicl.experiments.updates import update_schedule


def lineage_periods(schedule, index: int) -> set[int]:
    """Periods that model ``index`` and every model it continues were tuned on."""
    seen: set[int] = set()
    while True:
        seen |= set(schedule[index].train)
        if not schedule[index].warm:
            return seen
        index -= 1


@pytest.mark.parametrize(
    ("every", "warm", "eval_periods"),
    [(m, w, e) for m, w, e in itertools.product((1, 2, 3), (False, True), ([6, 7, 8, 9], [7, 9]))],
)
def test_no_period_is_scored_by_a_model_that_saw_it(every, warm, eval_periods):
    available = list(range(10))
    schedule = update_schedule([0, 1, 2, 3, 4, 5], eval_periods, available, every, warm)
    scored = [p for update in schedule for p in update.scores]
    assert scored == sorted(eval_periods)  # every evaluated period once, in time order
    for index, update in enumerate(schedule):
        assert len(update.scores) <= every
        assert max(lineage_periods(schedule, index)) < min(update.scores)


def test_full_retunes_see_everything_before_warm_ones_only_what_is_new():
    available = list(range(10))
    full = update_schedule([0, 1, 2, 3, 4, 5], [6, 7, 8, 9], available, 2, warm=False)
    assert [(u.train, u.scores, u.warm) for u in full] == [
        ([0, 1, 2, 3, 4, 5], [6, 7], False),
        ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9], False),
    ]
    warm = update_schedule([0, 1, 2, 3, 4, 5], [6, 7, 8, 9], available, 1, warm=True)
    assert [(u.train, u.scores, u.warm) for u in warm] == [
        ([0, 1, 2, 3, 4, 5], [6], False),
        ([6], [7], True),
        ([7], [8], True),
        ([8], [9], True),
    ]
    with pytest.raises(ValueError, match="update_every must be at least 1"):
        update_schedule([0], [1], [0, 1], 0, warm=True)
