"""Prefix-shared scoring: one forward pass over a user's prompt prefix, then all candidates on it.

A request scores N candidates for one user. Their prompts differ only in the final question
(:meth:`~recicl.prompts.PromptBuilder.query_suffix`); everything before it, instruction +
demonstrations + the query's history (:meth:`~recicl.prompts.PromptBuilder.split_prefix`), is the
same. So instead of N full prompts of P + S tokens we run:

1. the prefix once with ``use_cache=True`` (several requests' prefixes in one right-padded batch),
2. the candidates' suffixes on that KV cache, ``per_row`` candidates of one request packed one
   after another in each row: the cache rows are repeated along the batch dimension (one per
   row), a 4D attention mask lets every suffix token see its prefix's real tokens and the
   earlier tokens of its own suffix only, position ids restart at the prefix's real length for
   each suffix, and the answer logits are read at each suffix's last token (``logits_to_keep``
   as a boolean mask, so the LM head runs on one position per candidate).

Why packed rows: with one candidate per row, each row copies the whole prefix cache to run a
handful of tokens. On small models (and CPUs) those copies and per-row overheads outweigh the
arithmetic, so packing several candidates into a row scores them faster (measured:
docs/performance.md, ``benchmarks/bench_serve.py``). The price is attention over the masked-out
neighbours in a row, so rows stay short. Attention kernels that build their own masks from 2D
padding (FlashAttention) cannot take the 4D mask; for them, and with ``per_row = 1``, each row
holds one candidate, right-padded, with the 2D mask "prefix mask + suffix mask".

Cost drops from N·(P + S) token positions to P + N·S. The result equals the naive per-candidate
score (:func:`recicl.modeling.score_prompts` on prefix + suffix) up to float rounding (tested to
1e-4, LoRA-wrapped models included).

Why the prefix batch is *right*-padded: every padded position then still attends to real tokens
(no fully masked attention rows, which some SDPA kernels turn into NaN that would leak into the
cache), and the padding sits between a prefix and its suffix where the mask hides it.

Why the cache is rebuilt for each chunk of candidates: ``DynamicCache`` layers grow by
concatenation on every forward call (``DynamicLayer.update``), so a cache object can serve one
suffix pass only; the prefix keys/values are kept as plain tensors and a fresh ``DynamicCache``
(``ddp_cache_data=``) is made per chunk. Chunks of ``max_rows`` rows bound the memory of the
repeated cache (rows x prefix tokens x layers x 2 x hidden) and of the packed mask.

Sliding-window and hybrid models (Gemma 2/3: five sliding layers to one global; Mistral-style
all-sliding) share too. The prefix pass runs on a plain ``DynamicCache`` whose layers all keep
every prefix position (a sliding layer's own cache would keep only its window), and the suffix
pass gets one 4D mask per attention kind (``{"full_attention": ..., "sliding_attention": ...}``,
the mapping those models accept): the sliding mask additionally hides every key whose *position*
is ``sliding_window`` or more before the query's, exactly the rule transformers applies
(``kv > q - window``). So scores equal plain scoring whether or not prefix + suffix fits the
window. (Positions, not indices: the prefix batch is right-padded, so a suffix's index distance to
its prefix can exceed its position distance; ordinary left-padded prompts have equal ones.)

What still falls back to scoring the full prompts (correct, just not shared): layer kinds other
than full and sliding attention (linear attention, state-space, chunked attention), caches that
are not plain key/value layers, and kernels that take no custom masks (FlashAttention) on a
sliding-window model when a prefix + suffix is longer than the window. Every fallback is logged
and counted (``on_fallback``; the Serve deployment exports it as a metric).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from recicl.modeling.scoring import last_position
from recicl.prompts import AnswerTokens, PromptBuilder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "AttentionLayout",
    "CandidateScorer",
    "ScoreJob",
    "attention_layout",
    "score_naive",
    "score_prefix_shared",
]

log = logging.getLogger(__name__)

FULL, SLIDING = "full_attention", "sliding_attention"
#: Called with "<code>: <detail>" whenever the full prompts are scored instead of sharing;
#: codes: unsupported_layers, window_without_masks, cache_layers.
FallbackHook = Callable[[str], None]


@dataclass(frozen=True)
class AttentionLayout:
    """Which attention each decoder layer runs, as far as prefix sharing needs to know."""

    kinds: tuple[str, ...]  # per layer: full_attention, sliding_attention, or something else
    window: int | None  # sliding window (tokens) of the sliding layers

    @property
    def unsupported(self) -> list[str]:
        return sorted(set(self.kinds) - {FULL, SLIDING})

    @property
    def sliding(self) -> bool:
        return SLIDING in self.kinds

    @property
    def mixed(self) -> bool:
        return len(set(self.kinds)) > 1


def attention_layout(model: torch.nn.Module) -> AttentionLayout:
    """Per-layer attention kinds from the model's config (``layer_types`` when it has them;
    otherwise every layer is sliding when ``sliding_window`` is set and in use, else full)."""
    config = getattr(model, "config", None)
    text = config
    if config is not None and hasattr(config, "get_text_config"):  # multimodal: the text part
        text = config.get_text_config(decoder=True)
    window = getattr(text, "sliding_window", None)
    kinds = getattr(text, "layer_types", None)
    if not kinds:
        layers = int(getattr(text, "num_hidden_layers", 0) or 0)
        in_use = window is not None and getattr(text, "use_sliding_window", True) is not False
        kinds = [SLIDING if in_use else FULL] * max(layers, 1)
    return AttentionLayout(tuple(kinds), int(window) if window else None)


def _fall_back(reason: str, on_fallback: FallbackHook | None) -> None:
    log.warning("prefix-shared scoring fell back to full prompts: %s", reason)
    if on_fallback is not None:
        on_fallback(reason)


def _device_of(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
    return int(pad)


def _right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _plain_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer (keys, values) when every layer is a plain DynamicLayer holding every position
    (the prefix pass asks for one, see the module docstring)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    if any(layer.keys is None or layer.keys.numel() == 0 for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _cache_rows(
    layers: list[tuple[torch.Tensor, torch.Tensor]], slots: torch.Tensor, prefixes: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The prefix cache with one row per candidate (row i = prefix ``slots[i]``).

    With a single prefix (one request, the common case) the rows are an ``expand`` view: the
    cache's first concatenation materializes them once, instead of a gather copy before it.
    """
    if prefixes == 1:
        rows = len(slots)
        return [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers]
    return [(k.index_select(0, slots), v.index_select(0, slots)) for k, v in layers]


def _answer_probs(logits: torch.Tensor, tokens: AnswerTokens) -> np.ndarray:
    pair = logits[:, [tokens.no, tokens.yes]].double()
    return torch.softmax(pair, -1)[:, 1].cpu().numpy()


def score_naive(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[Sequence[int]]],
    answer_tokens: AnswerTokens,
    *,
    pad_id: int,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Reference path: each candidate's full prompt (prefix + suffix) scored on its own."""
    from recicl.modeling.scoring import score_prompts

    class _Pad:  # score_prompts only reads the pad/eos ids of the tokenizer
        pad_token_id = pad_id
        eos_token_id = pad_id

    flat = [list(p) + list(s) for p, group in zip(prefixes, suffixes, strict=True) for s in group]
    if not flat:
        return [np.zeros(0) for _ in prefixes]
    # a stand-in, not a tokenizer: with answer_tokens given, score_prompts reads only these ids
    pad_only = cast("PreTrainedTokenizerBase", _Pad())
    scores = score_prompts(model, pad_only, flat, batch_size, answer_tokens=answer_tokens)
    out, start = [], 0
    for group in suffixes:
        out.append(scores[start : start + len(group)])
        start += len(group)
    return out


def score_prefix_shared(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[Sequence[int]]],
    answer_tokens: AnswerTokens,
    *,
    pad_id: int,
    max_rows: int = 64,
    per_row: int = 4,
    on_fallback: FallbackHook | None = None,
) -> list[np.ndarray]:
    """P(Yes) of ``prefixes[r] + suffixes[r][j]`` for every request r and candidate j.

    ``prefixes``: one token-id list per request (non-empty); ``suffixes``: per request, the
    candidates' question ids (non-empty each). ``max_rows``: rows per forward pass on the cache;
    ``per_row``: candidates of one request packed into a row (1 = one candidate per row).
    ``on_fallback(reason)`` is called (and a warning logged) whenever the full prompts are scored
    instead. Returns one float64 array per request, in input order. Runs in eval mode under
    ``torch.inference_mode`` and restores the model's mode.
    """
    if len(prefixes) != len(suffixes):
        raise ValueError("prefixes and suffixes differ in length")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("an empty prefix cannot be scored")
    if any(len(s) == 0 for group in suffixes for s in group):
        raise ValueError("an empty candidate suffix cannot be scored")
    if max_rows < 1 or per_row < 1:
        raise ValueError(f"max_rows and per_row must be >= 1, got {max_rows} and {per_row}")
    out = [np.zeros(len(group), dtype=np.float64) for group in suffixes]
    live = [r for r, group in enumerate(suffixes) if len(group)]
    if not live:
        return out
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _score_shared(
                model,
                prefixes,
                suffixes,
                live,
                answer_tokens,
                pad_id,
                max_rows,
                per_row,
                device,
                out,
                on_fallback,
            )
    finally:
        model.train(was_training)
    return out


def _score_shared(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[Sequence[int]]],
    live: list[int],
    tokens: AnswerTokens,
    pad_id: int,
    max_rows: int,
    per_row: int,
    device: torch.device,
    out: list[np.ndarray],
    on_fallback: FallbackHook | None = None,
) -> None:
    from transformers import DynamicCache

    def naive(reason: str) -> None:
        _fall_back(reason, on_fallback)
        scores = score_naive(
            model,
            [prefixes[r] for r in live],
            [suffixes[r] for r in live],
            tokens,
            pad_id=pad_id,
            batch_size=max_rows,
        )
        for r, values in zip(live, scores, strict=True):
            out[r][:] = values

    layout = attention_layout(model)
    if layout.unsupported:
        return naive(f"unsupported_layers: layer kinds {layout.unsupported} cannot be shared")
    packed = _takes_custom_masks(model)
    longest = max(len(prefixes[r]) for r in live) + max(len(s) for r in live for s in suffixes[r])
    if layout.sliding and not packed and layout.window and longest > layout.window:
        return naive(
            f"window_without_masks: {_kernel(model)} takes no custom masks and prefix + suffix "
            f"({longest} tokens) is "
            f"longer than the sliding window ({layout.window})"
        )

    # 1. all prefixes in one right-padded pass; only the cache is needed (LM head on 1 position).
    # A plain DynamicCache keeps every position in every layer, sliding ones included.
    prefix_ids, prefix_mask = _right_pad([prefixes[r] for r in live], pad_id)
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    prefix_len = prefix_mask.sum(dim=1)
    output = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=torch.arange(prefix_ids.shape[1], device=device).expand_as(prefix_ids),
        past_key_values=DynamicCache(),
        use_cache=True,
        logits_to_keep=last_position(prefix_ids),  # the head's output is not used
    )
    layers = _plain_layers(getattr(output, "past_key_values", None))
    if layers is None or len(layers) != len(layout.kinds):
        return naive("cache_layers: the prefix cache is not made of plain key/value layers")

    # 2. candidates on the cache, max_rows rows per forward pass; with sliding layers the 4D
    # mask path is taken even for one candidate a row (it encodes the window by position)
    if packed and (per_row > 1 or layout.sliding):
        rows = _packed_rows(suffixes, live, per_row)
        run: Callable[..., np.ndarray] = functools.partial(_run_packed, layout=layout)
    else:
        rows = sorted(  # one candidate a row, sorted by suffix length: less padding
            ((slot, [j]) for slot, r in enumerate(live) for j in range(len(suffixes[r]))),
            key=lambda row: len(suffixes[live[row[0]]][row[1][0]]),
        )
        run = _run_single
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        probs = run(model, layers, chunk, suffixes, live, prefix_mask, prefix_len, pad_id, tokens)
        flat = ((slot, j) for slot, js in chunk for j in js)
        for (slot, j), p in zip(flat, probs, strict=True):
            out[live[slot]][j] = p
    return None


def _kernel(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "this attention kernel")


Rows = list[tuple[int, list[int]]]  # (request slot, candidate indices) per row


def _takes_custom_masks(model: torch.nn.Module) -> bool:
    """Packing needs a 4D attention mask, which the SDPA and eager kernels take as given;
    FlashAttention and others build their own masks from 2D padding, so they get one
    candidate per row instead."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in {"sdpa", "eager"}


def _packed_rows(
    suffixes: Sequence[Sequence[Sequence[int]]], live: list[int], per_row: int
) -> Rows:
    """Each request's candidates, sorted by suffix length, in rows of ``per_row``: rows of
    similar token counts, so little padding."""
    rows: Rows = []
    for slot, r in enumerate(live):
        order = sorted(range(len(suffixes[r])), key=lambda j: len(suffixes[r][j]))
        rows.extend((slot, order[a : a + per_row]) for a in range(0, len(order), per_row))
    return rows


def _forward_on_cache(
    model: torch.nn.Module,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    slots: torch.Tensor,
    prefixes: int,
    **inputs: Any,
) -> torch.Tensor:
    """One forward pass of suffix tokens on a fresh cache holding prefix ``slots[i]`` in row i."""
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=_cache_rows(layers, slots, prefixes))
    return model(past_key_values=cache, use_cache=True, **inputs).logits


def _run_single(
    model: torch.nn.Module,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    chunk: Rows,
    suffixes: Sequence[Sequence[Sequence[int]]],
    live: list[int],
    prefix_mask: torch.Tensor,
    prefix_len: torch.Tensor,
    pad_id: int,
    tokens: AnswerTokens,
) -> np.ndarray:
    """One candidate per row: right-padded suffixes, a 2D mask (prefix mask + suffix mask) that
    every attention kernel understands, the answer read at each row's last real token."""
    device = prefix_mask.device
    slots = torch.tensor([slot for slot, _ in chunk], device=device)
    suffix_ids, suffix_mask = _right_pad(
        [suffixes[live[slot]][js[0]] for slot, js in chunk], pad_id
    )
    suffix_ids, suffix_mask = suffix_ids.to(device), suffix_mask.to(device)
    inputs = {
        "input_ids": suffix_ids,
        "attention_mask": torch.cat([prefix_mask.index_select(0, slots), suffix_mask], dim=1),
        "position_ids": prefix_len.index_select(0, slots)[:, None]
        + torch.arange(suffix_ids.shape[1], device=device),
    }
    last = suffix_mask.sum(dim=1) - 1  # each row's last real suffix token
    keep = torch.zeros_like(suffix_mask, dtype=torch.bool)
    keep[torch.arange(len(chunk), device=device), last] = True
    # a boolean logits_to_keep yields (rows, vocab), one answer position per row, in row order
    logits = _forward_on_cache(model, layers, slots, len(prefix_len), **inputs, logits_to_keep=keep)
    if logits.dim() != 2 or logits.shape[0] != len(chunk):  # model ignores it: select ourselves
        logits = _forward_on_cache(model, layers, slots, len(prefix_len), **inputs)[keep]
    return _answer_probs(logits, tokens)


def _run_packed(
    model: torch.nn.Module,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    chunk: Rows,
    suffixes: Sequence[Sequence[Sequence[int]]],
    live: list[int],
    prefix_mask: torch.Tensor,
    prefix_len: torch.Tensor,
    pad_id: int,
    tokens: AnswerTokens,
    *,
    layout: AttentionLayout | None = None,
) -> np.ndarray:
    """Several candidates of one request per row, their suffixes one after another.

    Why: with one candidate per row, every row carries a copy of the prefix cache and runs a
    forward pass of a few tokens; on small models those copies and per-row overheads cost more
    than the arithmetic. Packed, a row holds one cache copy for ``per_row`` candidates. A 4D
    mask keeps them apart: a suffix token sees its prefix's real tokens and the earlier tokens
    of its own suffix, never another candidate's; position ids restart at the prefix length for
    each suffix. So each candidate's answer logits are those of its own full prompt.
    """
    device = prefix_mask.device
    blocks = [[suffixes[live[slot]][j] for j in js] for slot, js in chunk]
    width = max(sum(len(s) for s in row) for row in blocks)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(chunk), width), dtype=torch.long)
    block_of = torch.full((len(chunk), width), -1, dtype=torch.long)  # -1: padding
    answer_at = torch.zeros((len(chunk), width), dtype=torch.bool)
    starts = prefix_len.tolist()  # one device sync, not one per suffix
    for i, ((slot, _), row) in enumerate(zip(chunk, blocks, strict=True)):
        start = 0
        for b, suffix in enumerate(row):
            end = start + len(suffix)
            ids[i, start:end] = torch.as_tensor(list(suffix), dtype=torch.long)
            positions[i, start:end] = starts[slot] + torch.arange(len(suffix))
            block_of[i, start:end] = b
            answer_at[i, end - 1] = True
            start = end
    slots = torch.tensor([slot for slot, _ in chunk], device=device)
    own_block = (block_of[:, :, None] == block_of[:, None, :]) & (block_of[:, :, None] >= 0)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    sees_prefix = prefix_mask.index_select(0, slots).bool()[:, None, :].cpu()
    allowed = torch.cat(
        [sees_prefix.expand(-1, width, -1), own_block & causal], dim=2
    )  # (rows, suffix tokens, prefix + suffix tokens)
    padding = block_of < 0
    allowed[padding] = False
    allowed[:, :, 0] |= padding  # padding queries attend to something (never read): no NaN rows
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype  # of the additive mask

    def additive(keep: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
        return mask[:, None].to(device)

    masks = {FULL: allowed}
    if layout is not None and layout.sliding and layout.window:
        # the rule of transformers' sliding layers, by position: key > query - window
        prefix_positions = torch.arange(prefix_mask.shape[1]).expand(len(chunk), -1)
        key_positions = torch.cat([prefix_positions, positions], dim=1)
        near = key_positions[:, None, :] > positions[:, :, None] - layout.window
        window = allowed & near
        window[:, :, 0] |= padding
        masks[SLIDING] = window
    if layout is not None and layout.mixed:
        attention_mask: Any = {kind: additive(masks[kind]) for kind in set(layout.kinds)}
    else:
        only = layout.kinds[0] if layout is not None else FULL
        attention_mask = additive(masks[only])
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": attention_mask,
        "position_ids": positions.to(device),
    }
    answer_at = answer_at.to(device)
    answers = int(answer_at.sum())
    logits = _forward_on_cache(
        model, layers, slots, len(prefix_len), **inputs, logits_to_keep=answer_at
    )
    # a boolean logits_to_keep yields (answers, vocab) in row-major order: row by row, in order
    if logits.dim() != 2 or logits.shape[0] != answers:  # model ignores it: select ourselves
        logits = _forward_on_cache(model, layers, slots, len(prefix_len), **inputs)[answer_at]
    return _answer_probs(logits, tokens)


# ---------------------------------------------------------------------------------------------
# Prompts → scores for one model version


@dataclass
class ScoreJob:
    """One request's prompt context and candidates (ids, not text)."""

    history: Sequence[str]
    demos: Sequence[Mapping[str, Any]]
    candidates: Sequence[str]


class CandidateScorer:
    """Builds the shared prefix and the candidate suffixes with THE prompt builder, then scores.

    The prefix is trimmed to the budget with room reserved for the *longest* candidate question
    (``split_prefix(..., reserve=...)``), so every prefix + suffix fits ``prompt.max_length``.
    (Training trims each prompt for its own question; the two differ only for prompts over the
    budget, by at most the length difference of two questions.) Thread-safe: one lock around the
    builder (not thread-safe) and the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        builder: PromptBuilder,
        answer_tokens: AnswerTokens,
        *,
        max_rows: int = 64,
        per_row: int = 4,
        on_fallback: FallbackHook | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.builder = builder
        self.answer_tokens = answer_tokens
        self.pad_id = _pad_id(tokenizer)
        self.max_rows = max_rows
        self.per_row = per_row
        self.layout = attention_layout(model)
        #: how often the full prompts were scored instead of sharing, by reason code
        self.fallbacks: Counter[str] = Counter()
        self._on_fallback = on_fallback
        self._lock = threading.Lock()

    def _fallback(self, reason: str) -> None:
        self.fallbacks[reason.split(":", 1)[0]] += 1
        if self._on_fallback is not None:
            self._on_fallback(reason)

    def encode(self, job: ScoreJob) -> tuple[list[int], list[list[int]]]:
        """(prefix ids, one suffix per candidate) for one job."""
        suffixes = [self.builder.query_suffix(item) for item in job.candidates]
        reserve = max((len(s) for s in suffixes), default=0)
        prefix = self.builder.split_prefix(job.history, job.demos, reserve=reserve)
        return prefix, suffixes

    def score(self, jobs: Sequence[ScoreJob], *, shared: bool = True) -> list[np.ndarray]:
        """P(Yes) per candidate of every job (input order), prefixes batched across jobs."""
        with self._lock:
            encoded = [self.encode(job) for job in jobs]
            prefixes = [p for p, _ in encoded]
            suffixes = [s for _, s in encoded]
            if shared:
                return score_prefix_shared(
                    self.model,
                    prefixes,
                    suffixes,
                    self.answer_tokens,
                    pad_id=self.pad_id,
                    max_rows=self.max_rows,
                    per_row=self.per_row,
                    on_fallback=self._fallback,
                )
            return score_naive(
                self.model,
                prefixes,
                suffixes,
                self.answer_tokens,
                pad_id=self.pad_id,
                batch_size=self.max_rows,
            )
