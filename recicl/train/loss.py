"""The training objective: cross-entropy on the Yes/No answer token, optionally plus the same loss
on every in-context demonstration's answer.

The model is read at the answer position only (two logits, ``[no, yes]``; see
:func:`recicl.modeling.training_logits`), so the loss is a two-class cross-entropy, not a loss
over the vocabulary. ``train.class_weights`` re-weights the classes (rare likes);
``train.demo_loss_weight`` adds the demonstrations' loss: a prompt with k solved examples then
teaches k + 1 decisions, each conditioned on the demonstrations before it.

Robust in-context tuning (LRGD; ``train.consistency_weight``, ``train.anchor_weight``,
``train.stages``) adds two regularisers, computed here and logged as their own curves:
:func:`consistency_divergence` pulls the prediction on a perturbed context towards the one on
the clean context, and :func:`anchor_penalty` keeps the tuned weights near where the stage began.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from recicl.config import PerturbConfig, TrainConfig
from recicl.modeling.scoring import TrainingLogits


@dataclass(frozen=True)
class AnswerLoss:
    """``loss(logits, labels)`` for one micro-batch (mean over its rows, like ``cross_entropy``).

    ``class_weights``: ``[No, Yes]`` weights on the loss's device, or None for unweighted.
    ``demo_weight``: factor of the demonstrations' mean loss; 0 leaves it out entirely.
    """

    class_weights: torch.Tensor | None = None
    demo_weight: float = 0.0

    @classmethod
    def from_config(cls, tc: TrainConfig, device: torch.device) -> AnswerLoss:
        weights = None
        if tc.class_weights is not None:
            weights = torch.tensor(tc.class_weights, dtype=torch.float32, device=device)
        return cls(class_weights=weights, demo_weight=tc.demo_loss_weight)

    @property
    def uses_demos(self) -> bool:
        """Whether the forward pass must also read the demonstrations' answer positions."""
        return bool(self.demo_weight)

    def __call__(self, logits: TrainingLogits, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.query, labels, weight=self.class_weights)
        if self.uses_demos and len(logits.demo_labels):  # a batch may hold no demonstration
            demos = F.cross_entropy(logits.demos, logits.demo_labels, weight=self.class_weights)
            loss = loss + self.demo_weight * demos
        return loss


def consistency_divergence(clean: torch.Tensor, twin: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats, in [0, ln 2]) between the Yes/No distributions of
    ``clean`` and ``twin`` ([N, 2] logits, row k of each the same sample); 0 for N = 0.

    Why JS on the clean prediction *detached*: the clean context is what the model should
    answer from, so it is the target; a symmetric pull would also move the clean prediction
    towards the perturbed one and cost clean accuracy. JS (not KL) stays bounded when the two
    disagree completely, as they may on a context with flipped labels."""
    if not len(twin):
        return twin.new_zeros(())
    log_p = F.log_softmax(clean.detach().float(), dim=-1)
    log_q = F.log_softmax(twin.float(), dim=-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(
        -1
    )
    return js.clamp_min(0.0).mean()  # rounding can leave equal predictions a hair below 0


class _HalfSquaredDistance(torch.autograd.Function):
    """``0.5 * ||param - anchor||^2`` whose backward is ``param - anchor``, computed again
    instead of saved: autograd would otherwise keep an fp32 copy of every tuned weight between
    forward and backward (a whole model's worth with full fine-tuning)."""

    @staticmethod
    def forward(ctx: Any, param: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(param, anchor)  # references to existing tensors, no copies
        return 0.5 * (param.detach().float() - anchor).pow(2).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        param, anchor = ctx.saved_tensors
        return (grad * (param.detach().float() - anchor)).to(param.dtype), None


def anchor_penalty(
    params: Sequence[torch.nn.Parameter], anchor: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``0.5 * sum ||w - w0||^2`` over the tuned weights and their ``anchor`` copies (fp32): the
    L2-SP penalty that keeps a stage near the weights it started from, so a robustness stage
    cannot undo what in-context tuning learned. Its gradient on each weight is ``w - w0``
    (times ``anchor_weight``): a pull towards the start that does not depend on how many weights
    are tuned, as weight decay's does not (a mean would shrink it with the adapter's size, and
    bf16 gradients would round such a small pull away)."""
    total = torch.zeros((), dtype=torch.float32, device=params[0].device if params else "cpu")
    for param, start in zip(params, anchor, strict=True):
        total = total + _HalfSquaredDistance.apply(param, start)
    return total


@dataclass(frozen=True)
class StageObjective:
    """What one stage of a run trains on (``train`` itself, then each ``train.stages``):

    * ``perturb`` inactive: the clean contexts;
    * ``perturb`` active, no consistency: the perturbed twin **replaces** the clean context of
      the rows that have one (plain perturbed tuning);
    * ``perturb`` active with ``consistency_weight``: the clean contexts, plus each twin in the
      same forward pass, pulled towards its clean prediction."""

    name: str
    perturb: PerturbConfig
    consistency_weight: float
    anchor_weight: float

    @property
    def replaces(self) -> bool:
        return self.perturb.active and not self.consistency_weight

    @property
    def pairs(self) -> bool:
        return self.perturb.active and self.consistency_weight > 0

    @classmethod
    def of(cls, tc: TrainConfig) -> list[StageObjective]:
        first = cls("tune", tc.perturb, tc.consistency_weight, tc.anchor_weight)
        later = [
            cls(stage.name, stage.perturb, stage.consistency_weight, stage.anchor_weight)
            for stage in tc.stages
        ]
        return [first, *later]
