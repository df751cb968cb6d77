"""The training objective (recicl.train.loss.AnswerLoss) against the cross-entropy written out by
hand (log-sum-exp over the two answer logits) on hand-picked logits."""

from __future__ import annotations

import math

import pytest
import torch

from recicl.config import build_config
from recicl.modeling.scoring import TrainingLogits
from recicl.train.loss import AnswerLoss

QUERY = [[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]]  # [no, yes] per row
LABELS = [0, 1, 1]
DEMOS = [[1.0, 0.0], [0.0, 2.0]]
DEMO_LABELS = [1, 1]


def nll(row: list[float], label: int) -> float:
    """-log softmax(row)[label], by hand."""
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def weighted_mean(rows: list[list[float]], labels: list[int], weights: list[float]) -> float:
    """Cross-entropy with class weights: sum(w_y * nll) / sum(w_y) (PyTorch's definition)."""
    total = sum(weights[y] * nll(r, y) for r, y in zip(rows, labels, strict=True))
    return total / sum(weights[y] for y in labels)


def logits(demos: list[list[float]], demo_labels: list[int]) -> TrainingLogits:
    return TrainingLogits(
        query=torch.tensor(QUERY),
        demos=torch.tensor(demos).reshape(-1, 2),
        demo_labels=torch.tensor(demo_labels, dtype=torch.long),
    )


def test_query_loss_is_the_mean_answer_cross_entropy() -> None:
    loss = AnswerLoss()(logits(DEMOS, DEMO_LABELS), torch.tensor(LABELS))
    expected = sum(nll(r, y) for r, y in zip(QUERY, LABELS, strict=True)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_demo_loss_is_added_with_its_weight() -> None:
    loss = AnswerLoss(demo_weight=0.5)(logits(DEMOS, DEMO_LABELS), torch.tensor(LABELS))
    query = weighted_mean(QUERY, LABELS, [1.0, 1.0])
    demos = weighted_mean(DEMOS, DEMO_LABELS, [1.0, 1.0])
    assert loss.item() == pytest.approx(query + 0.5 * demos, rel=1e-6)


def test_batch_without_demonstrations_gives_the_query_loss_not_nan() -> None:
    loss = AnswerLoss(demo_weight=1.0)(logits([], []), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(weighted_mean(QUERY, LABELS, [1.0, 1.0]), rel=1e-6)


def test_class_weights_apply_to_queries_and_demonstrations() -> None:
    weights = [1.0, 3.0]
    loss = AnswerLoss(torch.tensor(weights), demo_weight=2.0)(
        logits(DEMOS, [0, 1]), torch.tensor(LABELS)
    )
    expected = weighted_mean(QUERY, LABELS, weights) + 2.0 * weighted_mean(DEMOS, [0, 1], weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_from_config() -> None:
    tc = build_config({"train": {"class_weights": [1.0, 2.5], "demo_loss_weight": 0.3}}).train
    loss = AnswerLoss.from_config(tc, torch.device("cpu"))
    assert loss.class_weights is not None and loss.class_weights.tolist() == [1.0, 2.5]
    assert loss.demo_weight == 0.3 and loss.uses_demos
    plain = AnswerLoss.from_config(build_config({}).train, torch.device("cpu"))
    assert plain.class_weights is None and not plain.uses_demos


def test_loss_is_differentiable_in_the_logits() -> None:
    query = torch.tensor(QUERY, requires_grad=True)
    batch = TrainingLogits(query, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    AnswerLoss()(batch, torch.tensor(LABELS)).backward()
    assert query.grad is not None
    # d(mean CE)/d logit = (softmax - onehot) / B: the first row's true class gets a negative push
    first = torch.softmax(torch.tensor(QUERY[0]), -1) - torch.tensor([1.0, 0.0])
    assert torch.allclose(query.grad[0], first / 3)
