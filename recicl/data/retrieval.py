"""Which earlier events go into a prompt: the demonstration and history policies.

A sample's demonstrations are chosen among the user's events strictly before the target (in the
total order of :mod:`recicl.data.samples`), a history among the user's likes strictly before the
event. The policies (``samples.demo_policy`` / ``samples.history_policy``):

* ``recent``: the latest ones (the RecICL default; computed by index arithmetic in
  :func:`recicl.data.samples.annotate_events`, not here).
* ``semantic``: the ones whose item is most similar to the target item (cosine similarity of
  item embeddings; ReLLa's semantic user behaviour retrieval), ties broken by recency. Items
  without a vector have similarity 0 with everything.
* ``mixed``: ``round(k * recent_share)`` slots hold the latest events, the remaining slots the
  most similar of the older ones, so a new interest always reaches the prompt while the rest of
  the context is retrieved.
* ``quality`` (demonstrations only): the ones with the highest *estimated help*, a linear
  function (:class:`DemoQuality`) of a candidate's similarity to the target, its age and its
  label, fitted on training data to how much each demonstration moved the model's Yes/No margin
  toward the right answer (:mod:`recicl.experiments.demo_quality` measures and fits it).

Whatever the policy, the chosen events are shown oldest → newest, and candidates are only the
``retrieval_window`` latest earlier events (likes, for histories): that bounds the cost per
sample, and serving, which reads a bounded number of stored events, sees the same candidates.

Why one function, :func:`select_similar`, for every case: the sample builder calls it for every
event of a partition at once, serving calls it for the candidates of one request; the same
arithmetic on the same vectors is what makes offline and online prompts identical (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recicl.data.item_embeddings import similarities

#: Rows of targets handled per block: the block's similarity matrix is about
#: ``_BLOCK_ROWS x (_BLOCK_ROWS + window)`` floats.
_BLOCK_ROWS = 512
#: A forced-recent slot's score: above any similarity or estimated help, so it always wins.
_FORCED = np.inf

#: What the quality estimate of a candidate demonstration is a linear function of.
QUALITY_FEATURES = ("similarity", "age", "liked", "similarity_x_liked")


@dataclass(frozen=True)
class DemoQuality:
    """Estimated help of a candidate demonstration for a query (the ``quality`` policy).

    ``help = sum(weight_f * feature_f)`` over :data:`QUALITY_FEATURES`: ``similarity`` (cosine
    of the two items), ``age`` (events between the candidate and the query, divided by the
    retrieval window: 0 = the latest event), ``liked`` (the candidate's label) and their
    product. Only the ranking matters, so there is no intercept. Weights are rounded to 1e-6 when
    fitted, and the features are exact, so offline and online rankings are identical.
    """

    weights: tuple[float, ...]
    fitted: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.weights) != len(QUALITY_FEATURES):
            raise ValueError(
                f"demo quality weights: {len(self.weights)} given, {len(QUALITY_FEATURES)} "
                f"expected ({', '.join(QUALITY_FEATURES)})"
            )

    def score(self, sims: np.ndarray, age: np.ndarray, liked: np.ndarray) -> np.ndarray:
        """Estimated help, elementwise (float64)."""
        w = self.weights
        liked = liked.astype(np.float64)
        return w[0] * sims + w[1] * age + w[2] * liked + w[3] * (sims * liked)

    def weakness(self) -> str | None:
        """Why this estimator should not be trusted, or None.

        A cross-validated R^2 at or below 0 means the features predict a demonstration's help no
        better than its mean: the policy then ranks by whatever the weights happen to favour.
        With Gemma 3 270M on MovieLens (R^2 -0.014) the weights favoured liked demonstrations and
        the policy lost 0.15-0.18 AUC to ``recent`` (README, "Demonstration policies"). Said at fit
        and at build time, so nobody ships it by accident; hand-set weights (no R^2) pass.
        """
        rho = self.fitted.get("rho_help_similarity")
        if self.fitted.get("metric") == "lrgd" and rho is not None and not rho > 0:
            return (
                f"item similarity ranks the measured demonstrations against their help "
                f"(within-prompt rank correlation {rho}), so the lrgd quality policy would show "
                "the less helpful ones; use demo_policy recent, or item vectors from the model "
                "itself (embeddings.encoder: llm)"
            )
        r2 = self.fitted.get("r2_cv")
        if r2 is None or r2 > 0:
            return None
        found = (
            "could not be cross-validated (too few measured samples)"
            if r2 != r2  # NaN
            else f"has a cross-validated R^2 of {r2}: its features do not predict a "
            "demonstration's help"
        )
        return (
            f"the demo quality estimator {found}, so the quality policy would rank "
            "demonstrations by its weights' bias (with Gemma 3 270M on MovieLens it lost "
            "0.15-0.18 AUC to recent); "
            "measure more samples (demo-quality --count) or use demo_policy recent or mixed"
        )

    def to_json(self) -> dict[str, Any]:
        return {"features": list(QUALITY_FEATURES), "weights": list(self.weights), **self.fitted}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DemoQuality:
        if list(data.get("features", [])) != list(QUALITY_FEATURES):
            raise ValueError(
                f"demo quality estimator has features {data.get('features')}, this version of "
                f"recicl uses {list(QUALITY_FEATURES)}: fit it again (recicl samples demo-quality)"
            )
        fitted = {k: v for k, v in data.items() if k not in ("features", "weights")}
        return cls(tuple(float(w) for w in data["weights"]), fitted)


def recent_slots(policy: str, k: int, recent_share: float) -> int:
    """How many of ``k`` slots a policy fills with the latest events (the rest by similarity).

    ``recent`` → k, ``semantic`` → 0, ``mixed`` → ``round(k * recent_share)`` (half up)."""
    if policy == "recent":
        return k
    if policy in ("semantic", "quality"):
        return 0
    if policy == "mixed":
        return min(k, int(np.floor(k * recent_share + 0.5)))
    raise ValueError(f"unknown policy {policy!r}: use recent, semantic, mixed or quality")


def _blocks(starts: np.ndarray, ends: np.ndarray, width: int) -> list[slice]:
    """Consecutive runs of targets whose candidate ranges together span at most about
    ``4 * _BLOCK_ROWS + width`` rows, at most ``_BLOCK_ROWS`` targets each. ``starts`` never
    decreases (each user's window moves forward, users follow each other), so a run's span is
    its last end minus its first start; a dense run costs one matrix product, and targets far
    apart (users with few events in between) never make a huge one."""
    out: list[slice] = []
    a, n, span = 0, len(ends), 4 * _BLOCK_ROWS + width
    while a < n:
        b = int(np.searchsorted(ends, starts[a] + span, side="right"))
        b = max(a + 1, min(b, a + _BLOCK_ROWS))
        out.append(slice(a, b))
        a = b
    return out


def select_similar(
    targets: np.ndarray,
    candidates: np.ndarray,
    ends: np.ndarray,
    counts: np.ndarray,
    *,
    k: int,
    recent: int,
    quality: DemoQuality | None = None,
    liked: np.ndarray | None = None,
    window: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """For each target row, up to ``k`` of its candidates, as indices into ``candidates``.

    Target ``i`` may use the candidate rows ``[ends[i] - counts[i], ends[i])`` (its user's
    earlier events, already cut to the retrieval window). When it has at most ``k`` of them all
    are chosen; otherwise the ``recent`` latest ones, then the rest by cosine similarity of
    ``targets[i]`` with the candidate's vector, ties broken by recency (later first). With
    ``quality``, by its estimated help instead (``liked``: each candidate's label; ``window``:
    what ages are divided by).

    ``targets`` (n, d) and ``candidates`` (m, d) are unit-norm float32 vectors (zero rows for
    items without one). Returns ``(offsets, chosen)``: int32 list offsets (n + 1) and int64
    candidate indices, each target's ascending (oldest → newest).
    """
    ends = np.asarray(ends, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    n = len(ends)
    taken = np.minimum(counts, k)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(taken, out=offsets[1:])
    chosen = np.empty(offsets[-1], dtype=np.int64)
    # Targets with at most k candidates take them all: the latest `taken` before `ends`.
    simple = counts <= k
    if simple.any():
        rows = np.flatnonzero(simple)
        lengths = taken[rows]
        starts = offsets[rows]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        first = np.repeat(ends[rows] - lengths, lengths)
        chosen[np.repeat(starts, lengths) + within] = first + within
    ranked = np.flatnonzero(~simple)
    if len(ranked) and k > 0:
        width = int(counts[ranked].max())
        for run in _blocks(ends[ranked] - counts[ranked], ends[ranked], width):
            block = ranked[run]
            lo = int((ends[block] - counts[block]).min())
            hi = int(ends[block].max())
            sims = similarities(targets[block], candidates[lo:hi])  # (rows, hi - lo), exact
            # Column w of a row's band is its candidate ends - width + w (newest at w = width-1).
            band = ends[block, None] - width + np.arange(width)[None, :]
            valid = band >= (ends[block] - counts[block])[:, None]
            band_sims = np.take_along_axis(sims, np.clip(band - lo, 0, hi - lo - 1), axis=1)
            if quality is not None:
                assert liked is not None
                age = (ends[block, None] - 1 - band) / float(window)
                labels = liked[np.clip(band, 0, len(liked) - 1)]
                band_sims = quality.score(band_sims, age, labels)
            band_sims = np.where(valid, band_sims, -np.inf)
            if recent:
                band_sims[:, width - recent :] = _FORCED
            # Newest first, then a stable sort by similarity: ties keep the newer candidate.
            order = np.argsort(-band_sims[:, ::-1], axis=1, kind="stable")[:, :k]
            picked = np.sort(width - 1 - order, axis=1)  # back to band columns, oldest first
            values = np.take_along_axis(band, picked, axis=1)
            chosen[offsets[block][:, None] + np.arange(k)[None, :]] = values
    return offsets.astype(np.int32), chosen
