"""Update strategies in the streaming protocol: when a variant is re-tuned, on what, from what.

The study recicl follows compares keeping an LLM recommender current by fine-tuning, by fresh
context, and by both. In the streaming protocol every evaluated period is scored by the model
the strategy would be serving at that time, and a model never scores a period it (or a model
it was continued from) was tuned on:

* ``tallrec`` / ``recicl`` (the plain variants): tuned once, never updated. ``tallrec`` is the
  *frozen* strategy (no context in its prompts), ``recicl`` *context-only* (demonstrations from
  the freshest events, no weight update).
* ``<format>-full``: re-tuned **from the base** every ``experiment.update_every`` evaluated
  periods, on every period before the first one it will score (periodic full re-tune).
* ``<format>-warm``: re-tuned **from the previous model's adapter** at the same cadence, only
  on the periods the previous model has not been tuned on (periodic warm re-tune;
  ``recicl-warm`` is the *hybrid*: warm re-tunes plus fresh context in between).

The first model of every strategy is the plain variant's (tuned once on the training periods),
so the strategies differ only after their first update.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Update strategies: variant name → (prompt format, warm).
UPDATE_VARIANTS: dict[str, tuple[str, bool]] = {
    "tallrec-full": ("tallrec", False),
    "tallrec-warm": ("tallrec", True),
    "recicl-full": ("recicl", False),
    "recicl-warm": ("recicl", True),
}


@dataclass(frozen=True)
class Update:
    """One model of a strategy: the periods it is tuned on, whether it continues the previous
    model, and the evaluated periods it scores (until the next update)."""

    train: list[int]
    scores: list[int]
    warm: bool


def update_schedule(
    train_periods: list[int],
    eval_periods: list[int],
    available: list[int],
    every: int,
    warm: bool,
) -> list[Update]:
    """The models a strategy tunes, in time order. The first is tuned on ``train_periods``;
    every ``every`` evaluated periods a new one is tuned just before the first period it
    scores: from the base on every available period before it, or (``warm``) from the previous
    model on the available periods after the previous model's newest."""
    if every < 1:
        raise ValueError(f"experiment.update_every must be at least 1, got {every}")
    scored = sorted(eval_periods)
    groups = [scored[i : i + every] for i in range(0, len(scored), every)]
    updates = [Update(sorted(train_periods), groups[0], warm=False)]
    for group in groups[1:]:
        start = group[0]
        if warm:
            seen = max(updates[-1].train)
            periods = [p for p in available if seen < p < start]
        else:
            periods = [p for p in available if p < start]
        updates.append(Update(periods, group, warm=warm))
    return updates
