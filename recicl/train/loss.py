"""The training objective: cross-entropy on the Yes/No answer token, optionally plus the same loss
on every in-context demonstration's answer.

The model is read at the answer position only (two logits, ``[no, yes]``; see
:func:`recicl.modeling.training_logits`), so the loss is a two-class cross-entropy, not a loss
over the vocabulary. ``train.class_weights`` re-weights the classes (rare likes);
``train.demo_loss_weight`` adds the demonstrations' loss: a prompt with k solved examples then
teaches k + 1 decisions, each conditioned on the demonstrations before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recicl.config import TrainConfig
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
