"""P(Yes) at the answer position, computing the LM head at that one position only.

How: rows are left-aligned (real tokens at the end; right-padded input is shifted), position ids
come from the attention mask (so padding changes no result), and the model is called with
``logits_to_keep=1``: the vocabulary projection runs for the last position of each row only,
never for the whole sequence. Why through the model's own ``forward`` rather than calling its
decoder and ``lm_head`` directly: the same call then works on a plain model, a peft-wrapped one,
and under DDP/DeepSpeed engines whose forward hooks (gradient sync, ZeRO-3 gathering) must run.
The score is the softmax over the two answer logits, [no, yes].
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from recicl.prompts import AnswerTokens, answer_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_warned_full_logits = False


def left_align(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ids, mask) with every row's real tokens at the end.

    Left-padded input is returned as is; right-padded input is rolled per row. Real tokens must
    be contiguous in each row, and every row needs at least one.
    """
    mask = attention_mask.to(torch.bool)
    length = mask.sum(dim=1)
    if bool((length == 0).any()):
        raise ValueError("a row of the batch has no real token (attention_mask all zeros)")
    width = mask.shape[1]
    positions = torch.arange(width, device=mask.device).unsqueeze(0)
    left = positions >= (width - length).unsqueeze(1)
    if torch.equal(mask, left):
        return input_ids, attention_mask
    right = positions < length.unsqueeze(1)
    if not torch.equal(mask, right):
        raise ValueError("real tokens must be contiguous in each row (left or right padding)")
    source = (positions - (width - length).unsqueeze(1)) % width
    return torch.gather(input_ids, 1, source), left.to(attention_mask.dtype)


def last_position(ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` for "the last column only", as an index tensor rather than the int 1.

    Why not ``logits_to_keep=1``: transformers then slices ``hidden[:, -1:, :]``, a
    non-contiguous view, and when the LM head's weight does not require grad (a frozen or merged
    LoRA base) ``torch.matmul`` broadcasts the weight instead of folding the batch: it copies the
    whole ``[vocab, hidden]`` matrix once per row. With Gemma's 262k-token vocabulary that copy
    costs more than the rest of the forward pass (measured: docs/performance.md). An index
    tensor makes the slice a contiguous copy of B hidden vectors, and the head one matmul.
    """
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def answer_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answer_tokens: AnswerTokens,
) -> torch.Tensor:
    """Logits ``[B, 2]`` (float32; columns [no, yes]) at the last real token of each row.

    ``model``: any module whose forward takes HF causal-LM arguments (plain, peft, DDP,
    DeepSpeed engine). Gradients flow (use it as the training objective: cross-entropy over the
    two columns); wrap in ``torch.inference_mode()`` for scoring.
    """
    global _warned_full_logits
    ids, mask = left_align(input_ids, attention_mask)
    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    output = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        logits_to_keep=last_position(ids),
        use_cache=False,
    )
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.shape[1] != 1 and not _warned_full_logits:
        _warned_full_logits = True
        warnings.warn(
            f"{type(model).__name__} ignores logits_to_keep and computes logits for every "
            "position; scores are right but memory and time are wasted",
            stacklevel=2,
        )
    index = torch.tensor([answer_tokens.no, answer_tokens.yes], device=logits.device)
    return logits[:, -1, :].index_select(-1, index).float()


class TrainingLogits(NamedTuple):
    """Answer logits for one training micro-batch: the queries' and the demonstrations'."""

    query: torch.Tensor  # [B, 2] (float32; [no, yes]) at each row's answer position
    demos: torch.Tensor  # [M, 2] before each in-context demonstration answer, rows in order
    demo_labels: torch.Tensor  # [M] int64: 1 where that demonstration's answer is Yes


def training_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answer_tokens: AnswerTokens,
    demo_positions: Sequence[np.ndarray | Sequence[int]] | None = None,
) -> TrainingLogits:
    """One forward pass giving the query logits and, when ``demo_positions`` (per row, the
    indices of its demonstration answer tokens in the *unpadded* ids; see
    :attr:`recicl.prompts.EncodedPrompt.demo_answer_positions`) is given, the logits that predict
    every demonstration answer from the tokens before it.

    Why: a RecICL prompt holds k solved examples; supervising them too turns one labelled
    decision per prompt into k + 1, each conditioned on the demonstrations before it, which is
    what teaches a small model to read its context. The LM head still runs only at the kept
    positions (``logits_to_keep`` as a boolean mask), never on the whole sequence.
    """
    if demo_positions is None:
        query = answer_logits(model, input_ids, attention_mask, answer_tokens)
        empty = query.new_zeros((0, 2))
        return TrainingLogits(query, empty, torch.zeros(0, dtype=torch.long, device=query.device))
    ids, mask = left_align(input_ids, attention_mask)
    rows, width = ids.shape
    if len(demo_positions) != rows:
        raise ValueError(f"demo_positions has {len(demo_positions)} rows, the batch has {rows}")
    keep = torch.zeros((rows, width), dtype=torch.bool)
    keep[:, -1] = True  # every row's answer position (left-aligned: the last column)
    offsets = (width - mask.sum(dim=1)).cpu()
    for row, row_positions in enumerate(demo_positions):
        positions = torch.as_tensor(np.asarray(row_positions, dtype=np.int64))
        if positions.numel():
            # the logits that predict the answer token sit one position before it
            keep[row, offsets[row] + positions - 1] = True
    keep = keep.to(ids.device)
    output = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.long().cumsum(dim=1) - 1).clamp(min=0),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):  # logits_to_keep ignored
        logits = logits.reshape(rows, width, -1)[keep]
    pair = logits.index_select(
        -1, torch.tensor([answer_tokens.no, answer_tokens.yes], device=logits.device)
    ).float()
    # flattened row-major: each row's kept demo positions, then its answer position last
    is_query = torch.zeros(len(pair), dtype=torch.bool, device=pair.device)
    is_query[keep.sum(dim=1).cumsum(dim=0) - 1] = True
    answer_at = torch.zeros_like(keep)  # the demonstration answer tokens themselves
    answer_at[:, 1:] = keep[:, :-1]  # (the query's kept column shifts out of the tensor)
    demo_tokens = ids[answer_at]
    if not bool(((demo_tokens == answer_tokens.yes) | (demo_tokens == answer_tokens.no)).all()):
        raise ValueError("demo_positions do not point at Yes/No answer tokens in input_ids")
    return TrainingLogits(
        query=pair[is_query],
        demos=pair[~is_query],
        demo_labels=(demo_tokens == answer_tokens.yes).long(),
    )


def p_yes(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answer_tokens: AnswerTokens,
) -> torch.Tensor:
    """P(Yes) ``[B]``: softmax over the [no, yes] logits at the answer position."""
    return torch.softmax(answer_logits(model, input_ids, attention_mask, answer_tokens), -1)[:, 1]


def _device_of(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def score_prompts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 16,
    *,
    answer_tokens: AnswerTokens | None = None,
) -> np.ndarray:
    """P(Yes) (float64, input order) of already encoded prompts (``PromptBuilder.encode``).

    Prompts are sorted by length before batching so that little padding is computed; each batch
    is left-padded with the tokenizer's pad id. The model runs in eval mode (dropout off) and is
    put back in its previous mode afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = answer_tokens or answer_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    if len(lengths) and lengths.min() == 0:
        raise ValueError("an empty prompt cannot be scored")
    order = np.argsort(-lengths, kind="stable")
    scores = np.empty(len(prompts), dtype=np.float64)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = int(lengths[rows].max())
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for slot, row in enumerate(rows):
                    n = int(lengths[row])
                    ids[slot, width - n :] = torch.as_tensor(np.asarray(prompts[row]))
                    mask[slot, width - n :] = 1
                logits = answer_logits(model, ids.to(device), mask.to(device), tokens)
                scores[rows] = torch.softmax(logits.double(), -1)[:, 1].cpu().numpy()
    finally:
        model.train(was_training)
    return scores


def hidden_states_at(
    model: torch.nn.Module, prompt: Sequence[int], positions: Sequence[int]
) -> np.ndarray:
    """The last layer's hidden states of one encoded prompt at ``positions`` (float64,
    ``[len(positions), hidden]``), from one forward pass in eval mode. Read for the LRGD view of
    a demonstration's effect (recicl.experiments.demo_quality): the representations the model
    itself compares when it answers, not an outside embedder's."""
    ids = torch.as_tensor(np.asarray(prompt, dtype=np.int64)).unsqueeze(0).to(_device_of(model))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                output_hidden_states=True,
                logits_to_keep=last_position(ids),
                use_cache=False,
            )
            states = output.hidden_states[-1][0, torch.as_tensor(list(positions), dtype=torch.long)]
            return states.double().cpu().numpy()
    finally:
        model.train(was_training)
