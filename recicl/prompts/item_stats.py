"""Item statistics as prompt text: what other users thought of an item, frozen at tuning time.

The samples build counts, per item, the events and likes of the knowledge periods
(``recicl.data.item_stats``); the table carries the end of those periods (``until_ts``) in its
Parquet metadata. Rendered after the item's attributes::

    Will the user enjoy the movie "Heat (1995)" (Action, Crime; 72% of 140 viewers liked it)?

**No question shows its own answer.** A training sample's target event, and every demonstration
event, lies inside the knowledge periods, so its own label is part of its item's counts: a
model could learn to read the answer off a rare item's rate. Every block whose event happened
before ``until_ts`` is therefore rendered with its own event taken out (events − 1, likes −
label). Evaluated and served queries come after ``until_ts`` and see the frozen counts as they
are; demonstrations are treated alike offline and online, so the prompts stay identical. (The
rule goes by time alone: an event posted to serving with a timestamp before the cut, which the
build never counted, is also shown with one event taken out: off by one, never a leak.)

Rates are shown from ``prompt.item_stats_min_count`` events on, rounded to 5 points (coarse
values generalise better and move less with one event); fewer events say how many, and an item
no one rated in the knowledge periods (a new item) says so.

Taste codes (``prompt.item_codes``) come from the same table: an item's bits in groups of four
("taste code 1011 0010 0010 0001": a group is a few digit tokens a model can compare with the
demonstrations' codes), or "taste code unknown" for an item with too few events (or none).
A code cannot take one event out as the counts do; the build gives codes only to items with
``samples.item_code_min_events`` events or more instead (the data module's docstring says why).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from recicl.config import ITEM_STATS_META_KEY, PromptConfig


@dataclass(frozen=True)
class ItemStatsText:
    """Per-item (events, likes) and the time up to which they were counted."""

    counts: dict[str, tuple[int, int]]
    until_ts: int | None  # events strictly before it are counted; None: nothing counted
    codes: dict[str, str]  # item id → taste code bits, for the items that have one

    @classmethod
    def from_table(cls, table: pa.Table | None) -> ItemStatsText | None:
        if table is None:
            return None
        meta = json.loads((table.schema.metadata or {}).get(ITEM_STATS_META_KEY, b"{}"))
        until = meta.get("until_ts")
        counts = {
            str(item): (int(events), int(likes))
            for item, events, likes in zip(
                table["item_id"].to_pylist(),
                table["events"].to_pylist(),
                table["likes"].to_pylist(),
                strict=True,
            )
            if item is not None
        }
        codes = {}
        if "code" in table.column_names:
            codes = {
                str(item): str(code)
                for item, code in zip(
                    table["item_id"].to_pylist(), table["code"].to_pylist(), strict=True
                )
                if item is not None and code
            }
        return cls(counts=counts, until_ts=None if until is None else int(until), codes=codes)

    def own_label(self, timestamp: Any, label: Any) -> int | None:
        """``label`` when the event at ``timestamp`` is counted in the statistics, else None."""
        if self.until_ts is None or timestamp is None or label is None:
            return None
        if int(timestamp) >= self.until_ts:
            return None
        return int(label)

    def text(self, item_id: str, own_label: int | None, config: PromptConfig, people: str) -> str:
        """'72% of 140 viewers liked it', 'rated by 3 viewers so far' or 'new: no ratings yet'."""
        events, likes = self.counts.get(item_id, (0, 0))
        if own_label is not None and events > 0:  # take the block's own event out
            events, likes = events - 1, max(0, likes - own_label)
        if events <= 0:
            return "new: no ratings yet"
        if events < config.item_stats_min_count:
            return f"rated by {events} {people if events > 1 else people[:-1]} so far"
        percent = int(5 * round(20 * likes / events))
        return f"{percent}% of {events} {people} liked it"

    def code_text(self, item_id: str) -> str:
        """'taste code 1011 0010 0010 0001', or 'taste code unknown' (a rare or new item)."""
        code = self.codes.get(item_id)
        if not code:
            return "taste code unknown"
        return "taste code " + " ".join(code[i : i + 4] for i in range(0, len(code), 4))
