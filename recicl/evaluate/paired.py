"""Paired comparison of two models on the same examples: a user-level bootstrap of the AUC gap.

Why paired: live traffic drifts by the hour, so two versions measured on different requests
differ by *when* and *whom* they served as much as by how good they are. Scoring the same
requests with both (the candidate in shadow) removes that: each example carries both scores and
one label, and the difference of AUCs on the same resample varies far less than either AUC.

Why resample users and not examples: one user's examples share tastes and context, so they are
not independent; resampling them one by one would make the interval too narrow. A resample
draws users with replacement and weighs each of its examples by how often its user was drawn
(a cluster bootstrap). Each resample's AUC is computed from the scores' ranks, which are fixed
across resamples, so a resample costs O(n) (weighted counts), not a sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedScores:
    """Examples scored by both models: one label, both scores, the user of each."""

    labels: np.ndarray  # 0/1
    champion: np.ndarray
    candidate: np.ndarray
    users: np.ndarray  # user id per example (resampling unit)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PairedEvidence:
    """Paired scores by (champion version, candidate version), and where they were read."""

    pairs: dict[tuple[str, str], PairedScores]
    source: str  # says which data: "joined shadow pairs served in the ... in sqlite:///..."


@dataclass(frozen=True)
class PairedBootstrap:
    """Candidate AUC - champion AUC: observed, and its one-sided lower confidence bound."""

    pairs: int
    users: int
    likes: int
    champion_auc: float
    candidate_auc: float
    delta: float
    lower: float  # (1 - confidence) quantile of the resampled deltas
    confidence: float
    resamples: int  # resamples with both classes (an AUC needs both)
    seed: int


class _RankedAuc:
    """Weighted AUC of fixed scores and labels (ties count one half), for any example weights."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        _, self.group = np.unique(scores, return_inverse=True)
        self.groups = int(self.group.max()) + 1 if len(scores) else 0
        self.positive = labels.astype(np.float64)

    def __call__(self, weights: np.ndarray) -> float:
        pos = np.bincount(self.group, weights * self.positive, minlength=self.groups)
        neg = np.bincount(self.group, weights * (1.0 - self.positive), minlength=self.groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives scored strictly lower, per score value
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def paired_bootstrap(
    pairs: PairedScores, *, resamples: int, confidence: float, seed: int
) -> PairedBootstrap:
    """The AUC gap of ``pairs`` and its lower bound at ``confidence`` (one-sided), by a
    user-level paired bootstrap (see the module docstring). ``pairs`` must hold both labels."""
    labels = np.asarray(pairs.labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError("a paired AUC needs liked and disliked examples")
    champion = _RankedAuc(np.asarray(pairs.champion, dtype=np.float64), labels)
    candidate = _RankedAuc(np.asarray(pairs.candidate, dtype=np.float64), labels)
    _, user_of = np.unique(np.asarray(pairs.users), return_inverse=True)
    n_users = int(user_of.max()) + 1
    ones = np.ones(len(labels))
    champion_auc, candidate_auc = champion(ones), candidate(ones)
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for r in range(resamples):
        drawn = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users)
        weights = drawn[user_of].astype(np.float64)
        deltas[r] = candidate(weights) - champion(weights)
    valid = deltas[~np.isnan(deltas)]
    lower = float(np.quantile(valid, 1.0 - confidence)) if len(valid) else float("nan")
    return PairedBootstrap(
        pairs=len(labels),
        users=n_users,
        likes=int(labels.sum()),
        champion_auc=champion_auc,
        candidate_auc=candidate_auc,
        delta=candidate_auc - champion_auc,
        lower=lower,
        confidence=confidence,
        resamples=len(valid),
        seed=seed,
    )
