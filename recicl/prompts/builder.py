"""The prompt builder: sample ids → layout of blocks → text or token ids within the budget."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from recicl.config import PromptConfig
from recicl.prompts.answers import AnswerTokens, answer_token_ids, leading_special_ids
from recicl.prompts.budget import BlockCosts, blocks_cost, level_histories, prefix_ids
from recicl.prompts.encoded import EncodedPrompt, TrimStats
from recicl.prompts.item_stats import ItemStatsText
from recicl.prompts.wording import (
    PEOPLE,
    RATED,
    PromptError,
    answer_text,
    clean_text,
    template_for,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Columns copied unchanged from a sample batch to the encoded batch (when present).
PASSTHROUGH_COLUMNS = ("sample_id", "user_id", "item_id", "timestamp", "period")

_MAX_CACHE = 1_000_000  # entries per cache; bounds memory when serving sees unbounded unknown ids


def _as_list(values: Any) -> list[Any]:
    """Sequence-like field (list, tuple, numpy array, None) → list; Ray batches give arrays."""
    if values is None:
        return []
    if isinstance(values, np.ndarray):
        return values.tolist() if values.dtype != object else list(values)
    if isinstance(values, (str, bytes, Mapping)):
        raise PromptError(f"expected a list of values, got {type(values).__name__}")
    return list(values)


def _check_item_id(item_id: Any) -> None:
    if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
        raise PromptError(f"the query item_id is missing (got {item_id!r})")


def _item_ids(values: Any) -> list[str]:
    return [str(v) for v in _as_list(values) if v is not None]


def _demo_label(position: int, demo: Any) -> int:
    """The label of a well-formed demonstration (a mapping with an item id and a 0/1 label)."""
    if not isinstance(demo, Mapping):
        raise PromptError(f"demo {position} is not a mapping: {type(demo).__name__}")
    label = demo.get("label")
    if label is None or label not in (0, 1):
        raise PromptError(f"demo {position} label must be 0 or 1, got {label!r}")
    if demo.get("item_id") is None:
        raise PromptError(f"demo {position} has no item_id")
    return int(label)


@dataclass
class _Block:
    """One history + question (+ answer for demos), as text pieces."""

    items: list[str]  # quoted item texts, oldest → newest
    question: str
    label: int | None  # None for the query
    show_history: bool = True  # False: a bare solved question (prompt.demo_history_len = 0)


@dataclass
class _Layout:
    blocks: list[_Block]  # demos (oldest → newest), then the query
    unknown: int = 0


class PromptBuilder:
    """Renders and encodes ICL prompts from catalog ids; the ``recicl.prompts`` docstring gives
    the layout, tokenization and trimming rules.

    ``catalog``: Arrow table with ``item_id``, ``title`` and optionally ``attributes``
    (map<str,str> or struct); for duplicate ids the first row wins. Ids missing from the catalog
    (or with an empty title) render as ``"item <id>"`` and are counted in ``stats.unknown_items``.
    ``tokenizer`` is needed by the ``encode*``/``split_prefix``/``query_suffix`` methods only.
    Not thread-safe (caches and counters); use one builder per worker/actor.
    """

    def __init__(
        self,
        config: PromptConfig,
        catalog: pa.Table,
        tokenizer: PreTrainedTokenizerBase | None = None,
        item_stats: pa.Table | None = None,
    ) -> None:
        self.config = config
        self.template = template_for(config)
        self.stats = TrimStats()
        self._tokenizer = tokenizer
        self._titles, self._attributes = self._read_catalog(catalog)
        knows = config.shows_item_knowledge
        self.item_stats = ItemStatsText.from_table(item_stats) if knows else None
        if knows and self.item_stats is None:
            raise PromptError(
                "prompt.item_stats or item_codes is on but no item statistics were given: "
                "rebuild the samples with `recicl samples build` (it writes item_stats.parquet)"
            )
        if config.item_codes and self.item_stats is not None and not self.item_stats.codes:
            raise PromptError(
                "prompt.item_codes is on but the item statistics hold no taste codes: rebuild "
                "the samples with `recicl samples build` and samples.item_code_bits > 0"
            )
        self._quoted: dict[str, tuple[str, bool]] = {}  # item id → (quoted title, known)
        self._questions: dict[tuple[str, int | None], str] = {}
        self._token_cache: dict[str, list[int]] = {}
        self.answer_tokens: AnswerTokens | None = None
        self._lead: list[int] = []
        if tokenizer is not None:
            self.answer_tokens = answer_token_ids(tokenizer)
            self._lead = leading_special_ids(tokenizer)

    # -- catalog --------------------------------------------------------------------------

    def _read_catalog(
        self, catalog: pa.Table
    ) -> tuple[dict[str, str], dict[str, list[str | None]]]:
        names = set(catalog.column_names)
        if not {"item_id", "title"} <= names:
            raise PromptError(f"catalog needs columns item_id and title, has {sorted(names)}")
        ids = catalog.column("item_id").to_pylist()
        titles = catalog.column("title").to_pylist()
        index: dict[str, int] = {}
        for row, item in enumerate(ids):
            if item is not None:
                index.setdefault(str(item), row)
        by_id = {item: titles[row] for item, row in index.items() if titles[row]}
        attributes: dict[str, list[str | None]] = {}
        if "attributes" in names and self.config.include_attributes:
            wanted = self.config.include_attributes
            values = _attribute_columns(catalog.column("attributes"), wanted)
            for item, row in index.items():
                attributes[item] = [column[row] for column in values]
        return by_id, attributes

    def _quote(self, item_id: str) -> tuple[str, bool]:
        """'"Title"' for a catalog item; '"item <id>"' (documented fallback) otherwise."""
        hit = self._quoted.get(item_id)
        if hit is None:
            limit = self.config.max_title_chars
            title = self._titles.get(item_id)
            text = clean_text(title, limit) if title is not None else ""
            known = bool(text)
            if not known:
                text = clean_text(f"item {item_id}", limit)
            hit = (f'"{text}"', known)
            if len(self._quoted) >= _MAX_CACHE:
                self._quoted.clear()
            self._quoted[item_id] = hit
        return hit

    def _attribute_text(self, item_id: str) -> str:
        """'Action, Comedy' from {"genres": "Action|Comedy"}; several attributes joined by '; '.

        MovieLens' "(no genres listed)" placeholder is left out: it carries no information.
        """
        limit = self.config.max_title_chars
        parts = []
        for value in self._attributes.get(item_id, ()):
            if not value or value.strip().lower() == "(no genres listed)":
                continue
            joined = ", ".join(p for p in (clean_text(x, limit) for x in value.split("|")) if p)
            if joined:
                parts.append(joined)
        return clean_text("; ".join(parts), limit) if parts else ""

    def _question(self, item_id: str | None, own_label: int | None = None) -> str:
        """The query/demo question about ``item_id``; "" for None (a prefix without a query).

        ``own_label``: the label of the event this question is about when that event is counted
        in the item statistics (see :meth:`ItemStatsText.own_label`); it is taken out of the
        statistics shown, so that no question shows its own answer."""
        if item_id is None:
            return ""
        key = (item_id, own_label)
        text = self._questions.get(key)
        if text is None:
            quoted = self._quote(item_id)[0]
            parts = [self._attribute_text(item_id)]
            if self.item_stats is not None and self.config.item_stats:
                parts.append(self.item_stats.text(item_id, own_label, self.config, self._plural))
            if self.item_stats is not None and self.config.item_codes:
                parts.append(self.item_stats.code_text(item_id))
            extra = "; ".join(p for p in parts if p)
            item = f"{quoted} ({extra})" if extra else quoted
            text = self.template.question.format(item=item)
            if len(self._questions) >= _MAX_CACHE:
                self._questions.clear()
            self._questions[key] = text
        return text

    @property
    def _plural(self) -> str:
        return PEOPLE[self.config.domain]

    # -- layout ---------------------------------------------------------------------------

    def _layout(
        self,
        history: Any,
        demos: Any,
        item_id: Any,
        *,
        with_query: bool = True,
        query_event: tuple[Any, Any] | None = None,
    ) -> _Layout:
        """``query_event``: (timestamp, label) of the query's own event when known (training
        and evaluation samples), so item statistics that counted it can leave it out."""
        if with_query:
            _check_item_id(item_id)
        layout = _Layout(blocks=[])
        query = str(item_id) if with_query else None
        own = self._own_label(*query_event) if query_event is not None else None
        if self.config.format == "rella":
            return self._rated_layout(layout, demos, query, own)
        if self.config.format == "recicl":
            for position, demo in enumerate(_as_list(demos)):
                label = _demo_label(position, demo)
                demo_history = _item_ids(demo.get("history"))
                shown = self.config.demo_history_len
                if shown is not None:  # its newest `shown` likes
                    demo_history = demo_history[len(demo_history) - shown :] if shown else []
                demo_own = self._own_label(demo.get("timestamp"), label)
                block = self._block(layout, demo_history, str(demo["item_id"]), label, demo_own)
                block.show_history = shown != 0
                layout.blocks.append(block)
        layout.blocks.append(self._block(layout, history, query, None, own))
        return layout

    def _rated_layout(
        self, layout: _Layout, demos: Any, query: str | None, own: int | None
    ) -> _Layout:
        """ReLLa's layout: the query block alone, its history the earlier rated items (the
        sample's demonstrations, oldest first, each with its label) instead of the likes.
        Trimming drops the oldest rated items first, as it drops history items."""
        block = self._block(layout, [], query, None, own)
        for position, demo in enumerate(_as_list(demos)):
            label = _demo_label(position, demo)
            text, known = self._quote(str(demo["item_id"]))
            layout.unknown += not known
            block.items.append(f"{text} ({RATED[label]})")
        layout.blocks.append(block)
        return layout

    def _own_label(self, timestamp: Any, label: Any) -> int | None:
        if self.item_stats is None:
            return None
        return self.item_stats.own_label(timestamp, label)

    def _block(
        self,
        layout: _Layout,
        history: Any,
        item_id: str | None,
        label: int | None,
        own_label: int | None = None,
    ) -> _Block:
        items = []
        for hid in _item_ids(history):
            text, known = self._quote(hid)
            layout.unknown += not known
            items.append(text)
        if item_id is not None:
            layout.unknown += not self._quote(item_id)[1]
        return _Block(items=items, question=self._question(item_id, own_label), label=label)

    def _history_pieces(self, items: list[str]) -> list[str]:
        if not items:
            return [self.template.empty_history]
        return [f" {text}," for text in items[:-1]] + [f" {items[-1]}."]

    # -- text -----------------------------------------------------------------------------

    def render(
        self,
        history: Sequence[str],
        demos: Sequence[Mapping[str, Any]],
        item_id: str,
        query_event: tuple[Any, Any] | None = None,
    ) -> str:
        """The full prompt text, untrimmed (for reading, logging and tests)."""
        layout = self._layout(history, demos, item_id, query_event=query_event)
        parts = [self.template.instruction]
        for block in layout.blocks:
            if block.show_history:
                parts.append(self.template.history_head)
                parts.extend(self._history_pieces(block.items))
            parts.append(block.question)
            if block.label is not None:
                parts.append(answer_text(block.label))
        return "".join(parts)

    # -- tokens ---------------------------------------------------------------------------

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise PromptError("this PromptBuilder has no tokenizer; pass one to encode prompts")
        return self._tokenizer

    def _prefill(self, texts: Iterable[str]) -> None:
        """Tokenize the pieces not cached yet, in one batched call (fast tokenizers parallelize)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._token_cache))
        if not missing:
            return
        tokenizer = self._require_tokenizer()
        if len(self._token_cache) + len(missing) > _MAX_CACHE:
            self._token_cache.clear()
        encoded = tokenizer(missing, add_special_tokens=False)["input_ids"]
        for text, ids in zip(missing, encoded, strict=True):
            self._token_cache[text] = list(ids)

    def _texts(self, layout: _Layout) -> list[str]:
        texts = [self.template.instruction, self.template.history_head, self.template.empty_history]
        for block in layout.blocks:
            texts.extend(self._history_pieces(block.items))
            texts.append(block.question)
        return texts

    def _costs(self, layout: _Layout) -> tuple[list[int], list[BlockCosts]]:
        """Token ids of every piece: leading specials + instruction, then one BlockCosts a block."""
        self._require_tokenizer()
        self._prefill(self._texts(layout))
        cache = self._token_cache
        assert self.answer_tokens is not None  # set with the tokenizer
        fixed = self._lead + cache[self.template.instruction]
        costs = []
        for block in layout.blocks:
            pieces = [cache[p] for p in self._history_pieces(block.items)] if block.items else []
            answer = (
                []
                if block.label is None
                else [self.answer_tokens.yes if block.label else self.answer_tokens.no]
            )
            costs.append(
                BlockCosts(
                    head=cache[self.template.history_head] if block.show_history else [],
                    mids=pieces[:-1],
                    last=pieces[-1] if pieces else [],
                    empty=cache[self.template.empty_history] if block.show_history else [],
                    question=cache[block.question],
                    answer=answer,
                    n_items=len(block.items),
                )
            )
        return fixed, costs

    def _fit(
        self, fixed: list[int], costs: list[BlockCosts], query_cost: int
    ) -> tuple[int, list[int]]:
        """Choose (demos dropped, kept history items per kept block) under the budget.

        ``query_cost`` is the token cost assumed for the query question (its real length, or a
        reserve when building a prefix shared by many candidates).
        """
        budget = self.config.max_length - len(fixed) - query_cost
        full = [c.n_items for c in costs]
        if blocks_cost(costs, full) <= budget:
            return 0, full
        for dropped in range(len(costs)):  # stage 2 wraps stage 1: drop demos only if needed
            blocks = costs[dropped:]
            if blocks_cost(blocks, [min(c.n_items, 1) for c in blocks]) <= budget:
                return dropped, level_histories(blocks, budget)
        # stage 3: no demos left and the query's single history item does not fit either
        if blocks_cost(costs[-1:], [0]) <= budget:
            return len(costs) - 1, [0]
        need = len(fixed) + query_cost + blocks_cost(costs[-1:], [0])
        raise PromptError(
            f"prompt.max_length={self.config.max_length} is too small: the instruction and the "
            f"query alone need {need} tokens; raise max_length or lower max_title_chars"
        )

    def encode(
        self,
        history: Sequence[str],
        demos: Sequence[Mapping[str, Any]],
        item_id: str,
        query_event: tuple[Any, Any] | None = None,
    ) -> EncodedPrompt:
        """Token ids of the prompt within ``max_length``, trimmed by the package's budget rules.
        ``query_event``: the query's own (timestamp, label) when known (a stored sample)."""
        layout = self._layout(history, demos, item_id, query_event=query_event)
        encoded = self._encode_layout(layout)
        self.stats.record(encoded, layout.unknown)
        return encoded

    def _encode_layout(self, layout: _Layout) -> EncodedPrompt:
        fixed, costs = self._costs(layout)
        query = costs[-1]
        dropped, kept = self._fit(fixed, costs, len(query.question))
        answers: list[int] = []
        ids = prefix_ids(fixed, costs[dropped:], kept, answers)
        prefix_length = len(ids)
        ids += query.question
        trimmed_history = sum(b.n_items - k for b, k in zip(costs[dropped:], kept, strict=True))
        return EncodedPrompt(
            input_ids=ids,
            trimmed_history=trimmed_history,
            trimmed_demos=dropped,
            prefix_length=prefix_length,
            demo_answer_positions=answers,
        )

    def split_prefix(
        self,
        history: Sequence[str],
        demos: Sequence[Mapping[str, Any]],
        *,
        reserve: int | None = None,
    ) -> list[int]:
        """The per-user prefix ids (leading specials, instruction, demos, query history).

        ``split_prefix(h, d) + query_suffix(item) == encode(h, d, item).input_ids`` whenever
        encode did not trim. Serving computes it once per user and reuses its KV cache for every
        candidate. With ``reserve`` (max tokens a candidate's question may take) the prefix is
        trimmed by the usual rules so that prefix + any such suffix fits ``max_length``.
        """
        layout = self._layout(history, demos, None, with_query=False)
        fixed, costs = self._costs(layout)
        if reserve is None:
            dropped, kept = 0, [c.n_items for c in costs]
        else:
            dropped, kept = self._fit(fixed, costs, int(reserve))
        return prefix_ids(fixed, costs[dropped:], kept)

    def query_suffix(self, item_id: str) -> list[int]:
        """Ids of the query question about ``item_id`` (ends with ``Answer:``)."""
        _check_item_id(item_id)
        text = self._question(str(item_id))
        self._prefill([text])
        return list(self._token_cache[text])

    def encode_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Encode a batch of sample rows (Ray Data ``map_batches(batch_format="numpy")``).

        Returns ``input_ids`` and ``demo_answers`` (object arrays of int32 arrays: the ids, and
        the positions of the demonstration answers in them), ``length`` (int32), ``label``
        (int8, when the batch has labels), ``trimmed`` (bool), ``trimmed_history`` and
        ``trimmed_demos`` (int32), plus the pass-through columns (sample_id, user_id, item_id,
        timestamp, period) that are present.
        """
        self._require_tokenizer()
        items = _as_list(batch["item_id"])
        n = len(items)
        histories = _as_list(batch["history"]) if "history" in batch else [None] * n
        demos = _as_list(batch["demos"]) if "demos" in batch else [None] * n
        if len(histories) != n or len(demos) != n:
            raise PromptError("batch columns item_id, history and demos differ in length")
        events: list[tuple[Any, Any] | None] = [None] * n
        if self.item_stats is not None and "timestamp" in batch and "label" in batch:
            events = list(zip(_as_list(batch["timestamp"]), _as_list(batch["label"]), strict=True))
        layouts = [
            self._layout(h, d, i, query_event=e)
            for h, d, i, e in zip(histories, demos, items, events, strict=True)
        ]
        self._prefill(text for layout in layouts for text in self._texts(layout))
        input_ids = np.empty(n, dtype=object)
        length = np.zeros(n, dtype=np.int32)
        trimmed_history = np.zeros(n, dtype=np.int32)
        trimmed_demos = np.zeros(n, dtype=np.int32)
        demo_answers = np.empty(n, dtype=object)
        for row, layout in enumerate(layouts):
            encoded = self._encode_layout(layout)
            self.stats.record(encoded, layout.unknown)
            input_ids[row] = np.asarray(encoded.input_ids, dtype=np.int32)
            demo_answers[row] = np.asarray(encoded.demo_answer_positions, dtype=np.int32)
            length[row] = len(encoded.input_ids)
            trimmed_history[row] = encoded.trimmed_history
            trimmed_demos[row] = encoded.trimmed_demos
        out: dict[str, np.ndarray] = {
            key: np.asarray(batch[key]) for key in PASSTHROUGH_COLUMNS if key in batch
        }
        out["input_ids"] = input_ids
        out["demo_answers"] = demo_answers
        out["length"] = length
        if "label" in batch:
            out["label"] = np.asarray(batch["label"]).astype(np.int8)
        out["trimmed"] = (trimmed_history > 0) | (trimmed_demos > 0)
        out["trimmed_history"] = trimmed_history
        out["trimmed_demos"] = trimmed_demos
        return out


def _attribute_columns(column: pa.ChunkedArray, keys: list[str]) -> list[list[str | None]]:
    """One python list per wanted attribute key, row-aligned with the catalog."""
    import pyarrow.compute as pc

    kind = column.type
    out: list[list[str | None]] = []
    for key in keys:
        if pa.types.is_map(kind):
            values = pc.map_lookup(column, pa.scalar(key, kind.key_type), "first")
        elif pa.types.is_struct(kind) and kind.get_field_index(key) >= 0:
            values = pc.struct_field(column, key)
        else:
            out.append([None] * len(column))
            continue
        out.append([None if v is None else str(v) for v in values.to_pylist()])
    return out
