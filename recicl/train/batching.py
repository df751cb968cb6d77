"""Length-grouped micro-batches and per-batch padding (pure numpy, no Ray, no torch).

Why group by length: prompts vary a lot in token count (a user with 10 demos vs one with 1), and
a batch is as long as its longest row. Within each window of ``buffer_batches`` micro-batches the
rows are sorted by length (random tie-break) and cut into batches, whose *order* is then shuffled
with the epoch seed, so consecutive steps still see unrelated lengths. The windows are local, so
this streams: nothing beyond one window is held in memory.

Batch counts do not depend on grouping: a shard of ``n`` rows always gives ``ceil(n / batch)``
micro-batches (every window but the last is a whole number of batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

#: Columns a training batch must have (from ``PromptBuilder.encode_batch``).
TOKEN_COLUMNS = ("input_ids", "length", "label")


@dataclass
class PaddingStats:
    """Real vs padded token counts over the batches seen."""

    real_tokens: int = 0
    padded_tokens: int = 0  # batch size x longest row, summed over batches

    def add(self, lengths: np.ndarray) -> None:
        if len(lengths):
            self.real_tokens += int(lengths.sum())
            self.padded_tokens += int(lengths.max()) * len(lengths)

    @property
    def padding_fraction(self) -> float:
        """Share of the computed positions that are padding (0 = none)."""
        if not self.padded_tokens:
            return 0.0
        return 1.0 - self.real_tokens / self.padded_tokens


def group_by_length(
    chunks: Iterable[Mapping[str, np.ndarray]],
    batch_size: int,
    *,
    seed: int | tuple[int, ...],
    length_grouping: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Re-batch windows of rows (``chunks``, e.g. from ``DataIterator.iter_batches``) into
    micro-batches of ``batch_size`` rows.

    With ``length_grouping`` each window is sorted by ``length`` and the resulting batches are
    shuffled; without it the rows of a window are shuffled. Deterministic given ``seed`` and the
    chunk contents.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    base = list(seed) if isinstance(seed, tuple) else [seed]
    for index, chunk in enumerate(chunks):
        lengths = np.asarray(chunk["length"])
        n = len(lengths)
        if n == 0:
            continue
        rng = np.random.default_rng([*base, index])
        if length_grouping:
            order = np.lexsort((rng.random(n), lengths))  # by length, random tie-break
            starts = np.arange(0, n, batch_size)
            rng.shuffle(starts)
        else:
            order = rng.permutation(n)
            starts = np.arange(0, n, batch_size)
        for start in starts:
            rows = order[start : start + batch_size]
            yield {key: np.asarray(values)[rows] for key, values in chunk.items()}


def pad_batch(
    input_ids: Iterable[np.ndarray | list[int]],
    pad_id: int,
    *,
    side: str = "left",
    multiple_of: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length rows to the longest one of the batch (rounded up to ``multiple_of``).

    Returns ``(ids int64 [B, L], attention_mask int64 [B, L])``. Default ``left``: the tokenizer's
    padding side, so every row's answer position is the last column and the scorer
    (:func:`recicl.modeling.answer_logits`) needs no re-alignment; ``right`` works too.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in input_ids]
    if not rows:
        raise ValueError("cannot pad an empty batch")
    if any(len(r) == 0 for r in rows):
        raise ValueError("a prompt has no tokens")
    longest = max(len(r) for r in rows)
    longest = -(-longest // multiple_of) * multiple_of
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        if side == "left":
            ids[i, longest - len(row) :] = row
            mask[i, longest - len(row) :] = 1
        else:
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
    return ids, mask
