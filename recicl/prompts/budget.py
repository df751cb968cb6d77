"""Budget arithmetic: token costs of the blocks of a prompt and which history items stay.

Pure functions over cached per-piece token ids (see the package docstring: "Budget"), so fitting
a prompt costs additions, never a re-tokenization.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BlockCosts:
    """Token ids of one block's pieces and their lengths, for budget arithmetic."""

    head: list[int]
    mids: list[list[int]]  # ids of ' "A",' for all items but the newest, oldest → newest
    last: list[int]  # ids of ' "Z".' for the newest item ([] when empty)
    empty: list[int]
    question: list[int]
    answer: list[int]
    n_items: int = 0  # history items before trimming
    newest_mid_sums: list[int] = field(default_factory=list)  # sum of the j newest mids

    def __post_init__(self) -> None:
        sums = [0]
        for ids in reversed(self.mids):
            sums.append(sums[-1] + len(ids))
        self.newest_mid_sums = sums

    def history_cost(self, kept: int) -> int:
        if kept == 0:
            return len(self.empty)
        return self.newest_mid_sums[kept - 1] + len(self.last)

    def base_cost(self) -> int:
        return len(self.head) + len(self.question) + len(self.answer)

    def cost(self, kept: int) -> int:
        return self.base_cost() + self.history_cost(kept)

    def ids(self, kept: int, *, with_question: bool = True) -> list[int]:
        out = list(self.head)
        if kept == 0:
            out += self.empty
        else:
            for ids in self.mids[len(self.mids) - (kept - 1) :]:
                out += ids
            out += self.last
        if with_question:
            out += self.question
            out += self.answer
        return out


def blocks_cost(blocks: list[BlockCosts], kept: list[int]) -> int:
    """Token cost of ``blocks`` (demos..., query) keeping ``kept`` history items each; the
    query's question is budgeted by the caller."""
    *demos, query = blocks
    return (
        sum(c.cost(k) for c, k in zip(demos, kept[:-1], strict=True))
        + len(query.head)
        + query.history_cost(kept[-1])
    )


def prefix_ids(
    fixed: list[int], blocks: list[BlockCosts], kept: list[int], answers: list[int] | None = None
) -> list[int]:
    """Leading specials + instruction + kept demo blocks + query history (no question).
    ``answers``, when given, receives the index of each demo's answer token (a block's last id)."""
    ids = list(fixed)
    for block, k in zip(blocks[:-1], kept[:-1], strict=True):
        ids += block.ids(k)
        if answers is not None and block.answer:
            answers.append(len(ids) - 1)
    ids += blocks[-1].ids(kept[-1], with_question=False)
    return ids


def level_histories(blocks: list[BlockCosts], budget: int) -> list[int]:
    """Stage 1: lower all histories to a common cap (the longest loses its oldest item first;
    ties: the oldest block first) until the blocks fit ``budget``. The caller has checked that
    keeping one item per non-empty history fits."""
    lengths = [c.n_items for c in blocks]

    def capped(cap: int) -> list[int]:
        return [min(n, max(cap, 1)) for n in lengths]

    top = max(lengths)
    cap = top
    while cap > 1 and blocks_cost(blocks, capped(cap)) > budget:
        cap -= 1
    if cap == top:
        return lengths
    # capped(cap) fits and capped(cap + 1) does not: from cap + 1, take one item from each block
    # at that level, oldest block first, until it fits.
    kept = capped(cap + 1)
    for position in range(len(blocks)):
        if kept[position] == cap + 1:
            kept[position] = cap
            if blocks_cost(blocks, kept) <= budget:
                break
    return kept
