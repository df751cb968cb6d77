"""THE prompt builder: ICL sample (ids) → text → token ids within a budget.

Training, evaluation and serving all call :class:`PromptBuilder`, so the model is scored on
exactly the token sequences it was tuned on (no train/serve skew).

Layout (RecICL format; ``tallrec`` is the same without the demonstration blocks)::

    <instruction>

    The user liked these movies: "A", "B".
    Will the user enjoy the movie "X" (Action, Comedy)? Answer: Yes

    The user liked these movies: "A", "B", "X".
    Will the user enjoy the movie "T" (Drama)? Answer:

With ``prompt.demo_history_len: 0`` the demonstrations are bare solved questions, one per line,
and only the query block shows the user's history (a third of the tokens)::

    <instruction>
    Will the user enjoy the movie "X" (Action, Comedy)? Answer: Yes
    Will the user enjoy the movie "Y" (Horror)? Answer: No

    The user liked these movies: "A", "B", "X".
    Will the user enjoy the movie "T" (Drama)? Answer:

Each demonstration is a solved example (its own history, its item, its answer); the query comes
last and the prompt ends with ``Answer:`` so the next token is the answer. The query's history
sits *before* the query item: everything up to the query item is a per-user prefix that serving
can compute once and share across candidates (:meth:`PromptBuilder.split_prefix`,
:meth:`PromptBuilder.query_suffix`).

Tokenization choice: a prompt is cut into pieces (instruction, block heads, one piece per history
item, the question, the answer) and the token ids are the *concatenation of per-piece
tokenizations* (plus the tokenizer's leading special tokens such as BOS). Why: trimming to the
budget then costs additions of cached per-piece lengths instead of re-tokenizing the prompt again
and again, item pieces repeat across blocks and users (so they are tokenized once and cached),
and prefix + suffix is exactly the full prompt. For BPE tokenizers whose pieces start at a space
(GPT-2/Llama-3/Qwen style) this equals tokenizing :meth:`PromptBuilder.render` as one string up to
rare merges across piece boundaries; for others it may differ by a few tokens. That is harmless
because nobody tokenizes the rendered text: training, evaluation and serving all use
:meth:`PromptBuilder.encode`. Demonstration answers are the exact answer token ids the scorer
reads (:func:`answer_token_ids`), so the in-context answers and the scored answer always agree.

Budget (``max_length``, special tokens included): the instruction and the query item are never
cut. Over budget, (1) history items are dropped, oldest first, always from the currently longest
history (ties: the oldest block first, so the query's history goes last), keeping at least one
item per history; (2) if that is not enough, whole demonstrations are dropped, oldest first (and
the freed room goes back to histories); (3) with no demonstrations left, the query's last history
item may go too. A prompt whose instruction + query alone exceed the budget is a
:class:`PromptError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from recicl.config import PromptConfig
from recicl.errors import ReciclError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ANSWER_CUE",
    "AnswerTokenError",
    "AnswerTokens",
    "EncodedPrompt",
    "PromptBuilder",
    "PromptError",
    "Template",
    "TrimStats",
    "answer_text",
    "answer_token_ids",
    "clean_text",
    "template_for",
]

#: The text every question ends with; the answer token follows it.
ANSWER_CUE = "Answer:"

#: Columns copied unchanged from a sample batch to the encoded batch (when present).
PASSTHROUGH_COLUMNS = ("sample_id", "user_id", "item_id", "timestamp", "period")

_MAX_CACHE = 1_000_000  # entries per cache; bounds memory when serving sees unbounded unknown ids


class PromptError(ReciclError):
    """A sample that cannot become a prompt (bad field, or the query alone exceeds the budget)."""


class AnswerTokenError(PromptError):
    """The tokenizer cannot express the answers "Yes"/"No" as single tokens after ``Answer:``."""


def answer_text(label: int) -> str:
    """The answer as it follows ``Answer:`` in demonstrations: " Yes" (label 1) or " No"."""
    return " Yes" if label else " No"


# --------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class Template:
    """Wording of one domain/format. Every piece keeps its own leading whitespace, so that the
    prompt is the plain concatenation of pieces (see the module docstring)."""

    instruction: str
    history_head: str  # starts a block: blank line, then the history sentence
    question: str  # "{item}" is the quoted item; ends with ANSWER_CUE
    empty_history: str  # replaces the list when a history is empty

    def __post_init__(self) -> None:
        if not self.question.endswith(ANSWER_CUE):
            raise ValueError("a question template must end with the answer cue")


_NOUNS = {
    "movie": ("a movie", "movie", "movies"),
    "book": ("a book", "book", "books"),
    "generic": ("an item", "item", "items"),
}


def template_for(config: PromptConfig) -> Template:
    """The template of ``config.domain`` in ``config.format``."""
    a_noun, noun, plural = _NOUNS[config.domain]
    instruction = (
        f"Predict whether the user will enjoy {a_noun}, given the {plural} they liked before."
    )
    if config.format == "recicl":
        instruction += " The user's earlier decisions come first, as solved examples."
    instruction += " Answer Yes or No."
    return Template(
        instruction=instruction,
        history_head=f"\n\nThe user liked these {plural}:",
        question=f"\nWill the user enjoy the {noun} {{item}}? {ANSWER_CUE}",
        empty_history=" none.",
    )


# --------------------------------------------------------------------------------------------
# Safe text

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
# "Answer:" inside a title would fake the prompt's answer cue; lookalike colons count too.
_FAKE_CUE = re.compile(r"(answer)\s*[:\uff1a\ufe55\ufe13\u2236]", re.IGNORECASE)


def clean_text(text: str, max_chars: int) -> str:
    """Make untrusted catalog text safe to place between double quotes in a prompt.

    Why each step: newlines/control characters would break the one-block-per-line layout, so all
    whitespace runs become one space; double quotes would end the quoted title early, so they
    become single quotes; "Answer:" would plant a fake answer cue, so its colon becomes " -";
    very long texts would eat the budget, so they are cut to ``max_chars`` with an ellipsis.
    """
    text = str(text)[: max_chars * 8 + 256]  # bound the regex work on absurd inputs
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    text = text.replace('"', "'")
    text = _FAKE_CUE.sub(r"\1 -", text)
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


# --------------------------------------------------------------------------------------------
# Results and counters


@dataclass
class EncodedPrompt:
    """Token ids of one prompt, and how much was dropped to fit the budget.

    ``prefix_length``: number of leading ids that depend only on the user (instruction, demos,
    query history); ``input_ids[prefix_length:]`` is the query question.
    """

    input_ids: list[int]
    trimmed_history: int = 0  # history items dropped from kept blocks
    trimmed_demos: int = 0  # whole demonstrations dropped
    prefix_length: int = 0
    #: index in ``input_ids`` of every kept demonstration's answer token (oldest first); training
    #: can supervise them too (``train.demo_loss_weight``): each is a solved example
    demo_answer_positions: list[int] = field(default_factory=list)

    @property
    def trimmed(self) -> bool:
        return bool(self.trimmed_history or self.trimmed_demos)


@dataclass
class TrimStats:
    """How often the budget forced trimming; callers report it (e.g. in manifests, MLflow)."""

    prompts: int = 0
    trimmed_prompts: int = 0
    history_items_dropped: int = 0
    demos_dropped: int = 0
    unknown_items: int = 0  # item ids missing from the catalog, rendered as "item <id>"
    max_tokens: int = 0  # longest encoded prompt seen

    def record(self, encoded: EncodedPrompt, unknown: int) -> None:
        self.prompts += 1
        self.trimmed_prompts += int(encoded.trimmed)
        self.history_items_dropped += encoded.trimmed_history
        self.demos_dropped += encoded.trimmed_demos
        self.unknown_items += unknown
        self.max_tokens = max(self.max_tokens, len(encoded.input_ids))

    @property
    def trimmed_fraction(self) -> float:
        return self.trimmed_prompts / self.prompts if self.prompts else 0.0

    def merge(self, other: TrimStats) -> TrimStats:
        """Sum of two counters (e.g. from several Ray actors)."""
        return TrimStats(
            prompts=self.prompts + other.prompts,
            trimmed_prompts=self.trimmed_prompts + other.trimmed_prompts,
            history_items_dropped=self.history_items_dropped + other.history_items_dropped,
            demos_dropped=self.demos_dropped + other.demos_dropped,
            unknown_items=self.unknown_items + other.unknown_items,
            max_tokens=max(self.max_tokens, other.max_tokens),
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "trimmed_fraction": self.trimmed_fraction}


# --------------------------------------------------------------------------------------------
# Answer tokens


class AnswerTokens(NamedTuple):
    """Vocabulary ids of the two answers; scorer columns are in this order: [no, yes]."""

    no: int
    yes: int


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_id(tokenizer: Any, cue_text: str, word: str) -> int | None:
    # Preferred: the token that follows the cue when the answer is written in running text,
    # i.e. what a pretrained model has seen after such cues.
    cue = _encode_plain(tokenizer, cue_text)
    full = _encode_plain(tokenizer, cue_text + word)
    if len(full) == len(cue) + 1 and full[: len(cue)] == cue:
        return full[-1]
    for variant in (word, word.strip()):
        ids = _encode_plain(tokenizer, variant)
        if len(ids) == 1:
            return ids[0]
    return None


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    cue: str = ANSWER_CUE,
    words: tuple[str, str] = (answer_text(1), answer_text(0)),
) -> AnswerTokens:
    """Resolve the single-token ids of " Yes" and " No" as they follow ``Answer:`` (or
    ``words`` = (yes, no) after another ``cue``, e.g. "Yes"/"No" after an Alpaca-style
    "### Response:" line).

    Why single tokens: the score is P(Yes) from the logits of one next-token position. The
    builder writes exactly these ids as demonstration answers, so the answers the model sees in
    context are the ones it is scored on. Raises :class:`AnswerTokenError` naming the tokenizer.
    """
    yes, no = _answer_id(tokenizer, cue, words[0]), _answer_id(tokenizer, cue, words[1])
    if yes is None or no is None or yes == no:
        shown = {
            w: tokenizer.convert_ids_to_tokens(_encode_plain(tokenizer, cue + w)) for w in words
        }
        raise AnswerTokenError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no single token for the answers "
            f"{words[0].strip()!r}/{words[1].strip()!r} after {cue!r} (tokens: {shown}); use a "
            "model whose vocabulary holds ' Yes' and ' No' (or 'Yes'/'No') as single tokens"
        )
    return AnswerTokens(no=no, yes=yes)


# --------------------------------------------------------------------------------------------
# Builder internals


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


@dataclass
class _Costs:
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


class PromptBuilder:
    """Renders and encodes ICL prompts from catalog ids; see the module docstring for layout,
    tokenization and trimming rules.

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
    ) -> None:
        self.config = config
        self.template = template_for(config)
        self.stats = TrimStats()
        self._tokenizer = tokenizer
        self._titles, self._attributes = self._read_catalog(catalog)
        self._quoted: dict[str, tuple[str, bool]] = {}  # item id → (quoted title, known)
        self._questions: dict[str, str] = {}
        self._token_cache: dict[str, list[int]] = {}
        self.answer_tokens: AnswerTokens | None = None
        self._lead: list[int] = []
        if tokenizer is not None:
            self.answer_tokens = answer_token_ids(tokenizer)
            self._lead = _leading_special_ids(tokenizer)

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

    def _question(self, item_id: str | None) -> str:
        """The query/demo question about ``item_id``; "" for None (a prefix without a query)."""
        if item_id is None:
            return ""
        text = self._questions.get(item_id)
        if text is None:
            quoted = self._quote(item_id)[0]
            extra = self._attribute_text(item_id)
            item = f"{quoted} ({extra})" if extra else quoted
            text = self.template.question.format(item=item)
            if len(self._questions) >= _MAX_CACHE:
                self._questions.clear()
            self._questions[item_id] = text
        return text

    # -- layout ---------------------------------------------------------------------------

    def _layout(
        self, history: Any, demos: Any, item_id: Any, *, with_query: bool = True
    ) -> _Layout:
        if with_query:
            _check_item_id(item_id)
        layout = _Layout(blocks=[])
        if self.config.format == "recicl":
            for position, demo in enumerate(_as_list(demos)):
                if not isinstance(demo, Mapping):
                    raise PromptError(f"demo {position} is not a mapping: {type(demo).__name__}")
                label = demo.get("label")
                if label is None or label not in (0, 1):
                    raise PromptError(f"demo {position} label must be 0 or 1, got {label!r}")
                if demo.get("item_id") is None:
                    raise PromptError(f"demo {position} has no item_id")
                demo_history = _item_ids(demo.get("history"))
                shown = self.config.demo_history_len
                if shown is not None:  # its newest `shown` likes
                    demo_history = demo_history[len(demo_history) - shown :] if shown else []
                block = self._block(layout, demo_history, str(demo["item_id"]), int(label))
                block.show_history = shown != 0
                layout.blocks.append(block)
        query = str(item_id) if with_query else None
        layout.blocks.append(self._block(layout, history, query, None))
        return layout

    def _block(
        self, layout: _Layout, history: Any, item_id: str | None, label: int | None
    ) -> _Block:
        items = []
        for hid in _item_ids(history):
            text, known = self._quote(hid)
            layout.unknown += not known
            items.append(text)
        if item_id is not None:
            layout.unknown += not self._quote(item_id)[1]
        return _Block(items=items, question=self._question(item_id), label=label)

    def _history_pieces(self, items: list[str]) -> list[str]:
        if not items:
            return [self.template.empty_history]
        return [f" {text}," for text in items[:-1]] + [f" {items[-1]}."]

    # -- text -----------------------------------------------------------------------------

    def render(
        self, history: Sequence[str], demos: Sequence[Mapping[str, Any]], item_id: str
    ) -> str:
        """The full prompt text, untrimmed (for reading, logging and tests)."""
        layout = self._layout(history, demos, item_id)
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

    def _costs(self, layout: _Layout) -> tuple[list[int], list[_Costs]]:
        """Token ids of every piece (leading specials + instruction, then one _Costs a block)."""
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
                _Costs(
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

    def _fit(self, fixed: list[int], costs: list[_Costs], query_cost: int) -> tuple[int, list[int]]:
        """Choose (demos dropped, kept history items per kept block) under the budget.

        ``query_cost`` is the token cost assumed for the query question (its real length, or a
        reserve when building a prefix shared by many candidates).
        """
        budget = self.config.max_length - len(fixed) - query_cost
        full = [c.n_items for c in costs]
        if _total(costs, full) <= budget:
            return 0, full
        for dropped in range(len(costs)):  # stage 2 wraps stage 1: drop demos only if needed
            blocks = costs[dropped:]
            if _total(blocks, [min(c.n_items, 1) for c in blocks]) <= budget:
                return dropped, _level(blocks, budget)
        # stage 3: no demos left and the query's single history item does not fit either
        if _total(costs[-1:], [0]) <= budget:
            return len(costs) - 1, [0]
        need = len(fixed) + query_cost + _total(costs[-1:], [0])
        raise PromptError(
            f"prompt.max_length={self.config.max_length} is too small: the instruction and the "
            f"query alone need {need} tokens; raise max_length or lower max_title_chars"
        )

    def encode(
        self, history: Sequence[str], demos: Sequence[Mapping[str, Any]], item_id: str
    ) -> EncodedPrompt:
        """Token ids of the prompt within ``max_length``, trimmed as the module docstring says."""
        layout = self._layout(history, demos, item_id)
        encoded = self._encode_layout(layout)
        self.stats.record(encoded, layout.unknown)
        return encoded

    def _encode_layout(self, layout: _Layout) -> EncodedPrompt:
        fixed, costs = self._costs(layout)
        query = costs[-1]
        dropped, kept = self._fit(fixed, costs, len(query.question))
        answers: list[int] = []
        ids = _prefix_ids(fixed, costs[dropped:], kept, answers)
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
        return _prefix_ids(fixed, costs[dropped:], kept)

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
        layouts = [self._layout(h, d, i) for h, d, i in zip(histories, demos, items, strict=True)]
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


def _total(blocks: list[_Costs], kept: list[int]) -> int:
    """Token cost of ``blocks`` (demos..., query) keeping ``kept`` history items each; the
    query's question is budgeted by the caller."""
    *demos, query = blocks
    return (
        sum(c.cost(k) for c, k in zip(demos, kept[:-1], strict=True))
        + len(query.head)
        + query.history_cost(kept[-1])
    )


def _prefix_ids(
    fixed: list[int], blocks: list[_Costs], kept: list[int], answers: list[int] | None = None
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


def _level(blocks: list[_Costs], budget: int) -> list[int]:
    """Stage 1: lower all histories to a common cap (the longest loses its oldest item first;
    ties: the oldest block first) until the blocks fit ``budget``. The caller has checked that
    keeping one item per non-empty history fits."""
    lengths = [c.n_items for c in blocks]

    def capped(cap: int) -> list[int]:
        return [min(n, max(cap, 1)) for n in lengths]

    top = max(lengths)
    cap = top
    while cap > 1 and _total(blocks, capped(cap)) > budget:
        cap -= 1
    if cap == top:
        return lengths
    # capped(cap) fits and capped(cap + 1) does not: from cap + 1, take one item from each block
    # at that level, oldest block first, until it fits.
    kept = capped(cap + 1)
    for position in range(len(blocks)):
        if kept[position] == cap + 1:
            kept[position] = cap
            if _total(blocks, kept) <= budget:
                break
    return kept


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """Special ids the tokenizer puts before a text (e.g. BOS); trailing ones (EOS) are left
    out on purpose, since the answer must be the next token after ``Answer:``."""
    probe = "Answer"
    plain = _encode_plain(tokenizer, probe)
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def _attribute_columns(column: pa.ChunkedArray, keys: list[str]) -> list[list[str | None]]:
    """One python list per wanted attribute key, row-aligned with the catalog."""
    import pyarrow.compute as pc

    kind = column.type
    out = []
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
