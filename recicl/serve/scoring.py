"""Prefix-shared scoring: one forward pass over a user's prompt prefix, then all candidates on it.

A request scores N candidates for one user. Their prompts differ only in the final question
(:meth:`~recicl.prompts.PromptBuilder.query_suffix`); everything before it, instruction +
demonstrations + the query's history (:meth:`~recicl.prompts.PromptBuilder.split_prefix`), is the
same. So instead of N full prompts of P + S tokens we run:

1. the prefix once with ``use_cache=True`` (several requests' prefixes in one right-padded batch),
2. every candidate's suffix in one batch on that KV cache: the cache rows are repeated along the
   batch dimension (one per candidate), suffixes are right-padded, the attention mask is
   "prefix mask + suffix mask", position ids continue from each prefix's real length, and the
   answer logits are read at each row's last real suffix token (``logits_to_keep`` as a
   ``(batch, 1)`` index tensor, so the LM head runs on one position per row).

Cost drops from N·(P + S) token positions to P + N·S. The result equals the naive per-candidate
score (:func:`recicl.modeling.score_prompts` on prefix + suffix) up to float rounding (tested to
1e-4, LoRA-wrapped models included).

Why the prefix batch is *right*-padded: every padded position then still attends to real tokens
(no fully masked attention rows, which some SDPA kernels turn into NaN that would leak into the
cache), and the padding sits between a prefix and its suffix where the mask hides it.

Why the cache is rebuilt for each chunk of candidates: ``DynamicCache`` layers grow by
concatenation on every forward call (``DynamicLayer.update``), so a cache object can serve one
suffix pass only; the prefix keys/values are kept as plain tensors and a fresh ``DynamicCache``
(``ddp_cache_data=``) is made per chunk. Chunks of ``max_rows`` candidates bound the memory of the
repeated cache (rows x prefix tokens x layers x 2 x hidden).

Models whose cache is not made of plain full-attention ``DynamicLayer``s (sliding-window, hybrid,
linear attention) fall back to naive scoring of the full prompts: correct, just not shared.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recicl.prompts import AnswerTokens, PromptBuilder

__all__ = ["CandidateScorer", "ScoreJob", "score_naive", "score_prefix_shared"]


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
    """Per-layer (keys, values) when every layer is a plain full-attention DynamicLayer."""
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
    scores = score_prompts(model, _Pad(), flat, batch_size, answer_tokens=answer_tokens)
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
) -> list[np.ndarray]:
    """P(Yes) of ``prefixes[r] + suffixes[r][j]`` for every request r and candidate j.

    ``prefixes``: one token-id list per request (non-empty); ``suffixes``: per request, the
    candidates' question ids (non-empty each). Returns one float64 array per request, in input
    order. Runs in eval mode under ``torch.inference_mode`` and restores the model's mode.
    """
    if len(prefixes) != len(suffixes):
        raise ValueError("prefixes and suffixes differ in length")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("an empty prefix cannot be scored")
    if any(len(s) == 0 for group in suffixes for s in group):
        raise ValueError("an empty candidate suffix cannot be scored")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
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
                model, prefixes, suffixes, live, answer_tokens, pad_id, max_rows, device, out
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
    device: torch.device,
    out: list[np.ndarray],
) -> None:
    from transformers import DynamicCache

    # 1. all prefixes in one right-padded pass; only the cache is needed (LM head on 1 position)
    prefix_ids, prefix_mask = _right_pad([prefixes[r] for r in live], pad_id)
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    prefix_len = prefix_mask.sum(dim=1)
    output = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=torch.arange(prefix_ids.shape[1], device=device).expand_as(prefix_ids),
        use_cache=True,
        logits_to_keep=1,
    )
    layers = _plain_layers(getattr(output, "past_key_values", None))
    if layers is None:  # sliding-window / hybrid cache: score the full prompts instead
        naive = score_naive(
            model,
            [prefixes[r] for r in live],
            [suffixes[r] for r in live],
            tokens,
            pad_id=pad_id,
            batch_size=max_rows,
        )
        for r, scores in zip(live, naive, strict=True):
            out[r][:] = scores
        return

    # 2. candidate rows (request slot, candidate index), sorted by suffix length: less padding
    rows = [
        (slot, j, len(suffixes[r][j]))
        for slot, r in enumerate(live)
        for j in range(len(suffixes[r]))
    ]
    rows.sort(key=lambda row: row[2])
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        slots = torch.tensor([slot for slot, _, _ in chunk], device=device)
        suffix_ids, suffix_mask = _right_pad(
            [suffixes[live[slot]][j] for slot, j, _ in chunk], pad_id
        )
        suffix_ids, suffix_mask = suffix_ids.to(device), suffix_mask.to(device)
        width = suffix_ids.shape[1]
        cache = DynamicCache(ddp_cache_data=_cache_rows(layers, slots, len(live)))
        mask = torch.cat([prefix_mask.index_select(0, slots), suffix_mask], dim=1)
        positions = prefix_len.index_select(0, slots)[:, None] + torch.arange(width, device=device)
        last = (suffix_mask.sum(dim=1) - 1)[:, None]  # each row's last real suffix token
        result = model(
            input_ids=suffix_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=last,
        )
        logits = result.logits
        if logits.shape[:2] != (len(chunk), 1):  # model ignores index tensors: gather ourselves
            logits = model(
                input_ids=suffix_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=DynamicCache(ddp_cache_data=_cache_rows(layers, slots, len(live))),
                use_cache=True,
            ).logits
            logits = logits.gather(1, last[:, :, None].expand(-1, 1, logits.shape[-1]))
        probs = _answer_probs(logits[:, 0, :], tokens)
        for (slot, j, _), p in zip(chunk, probs, strict=True):
            out[live[slot]][j] = p


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.builder = builder
        self.answer_tokens = answer_tokens
        self.pad_id = _pad_id(tokenizer)
        self.max_rows = max_rows
        self._lock = threading.Lock()

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
                )
            return score_naive(
                self.model,
                prefixes,
                suffixes,
                self.answer_tokens,
                pad_id=self.pad_id,
                batch_size=self.max_rows,
            )
