"""The quality policy's estimator: the fit recovers how help depends on the features."""

from __future__ import annotations

import numpy as np
import pytest

from recicl.data.retrieval import QUALITY_FEATURES, DemoQuality
from recicl.experiments.demo_quality import _margins, fit_demo_quality


def _measured(true_weights, groups=120, per=8, noise=0.05, seed=0, offset_scale=3.0):
    """Synthetic measurements: help = w . features + a per-sample offset + noise (the offset
    is what a prompt's other content adds; only the ranking within a prompt is learnable)."""
    rng = np.random.default_rng(seed)
    n = groups * per
    sim = rng.uniform(-0.2, 1.0, n)
    age = np.tile(np.arange(per)[::-1], groups) / 200.0
    liked = rng.integers(0, 2, n).astype(float)
    features = np.column_stack([sim, age, liked, sim * liked])
    group = np.repeat(np.arange(groups), per)
    offsets = rng.normal(0, offset_scale, groups)[group]
    help_ = features @ np.asarray(true_weights) + offsets + rng.normal(0, noise, n)
    return {
        **dict(zip(QUALITY_FEATURES, features.T, strict=True)),
        "help": help_,
        "group": group,
    }


def test_fit_recovers_the_weights_despite_per_prompt_offsets():
    true = (0.8, -20.0, 0.3, -0.5)
    quality = fit_demo_quality(_measured(true), alpha=1e-3)
    np.testing.assert_allclose(quality.weights, true, atol=0.15 * np.abs(true).max())
    assert quality.fitted["r2_cv"] > 0.9  # the features explain the within-prompt help
    assert quality.fitted["measured_samples"] == 120
    assert all(round(w, 6) == w for w in quality.weights)  # exact, shared offline/online


def test_noise_only_help_gives_a_low_cross_validated_r2():
    measured = _measured((0.0, 0.0, 0.0, 0.0), noise=1.0)
    quality = fit_demo_quality(measured)
    assert quality.fitted["r2_cv"] < 0.05  # reported honestly, not as a fit


def test_margins_are_log_odds():
    np.testing.assert_allclose(_margins(np.array([0.5, 0.75])), [0.0, np.log(3.0)])
    assert np.isfinite(_margins(np.array([0.0, 1.0]))).all()


def test_an_estimator_that_explains_nothing_is_called_out():
    """R^2 <= 0 (or not measurable) is said at fit and build time; a real fit and hand-set
    weights pass silently."""
    planted = fit_demo_quality(_measured((0.8, -20.0, 0.3, -0.5)), alpha=1e-3)
    assert planted.weakness() is None
    noise = fit_demo_quality(_measured((0.0, 0.0, 0.0, 0.0), noise=1.0))
    assert noise.fitted["r2_cv"] <= 0
    assert f"R^2 of {noise.fitted['r2_cv']}" in (noise.weakness() or "")
    weights = (0.1, 0.0, 0.04, 0.0)
    assert DemoQuality(weights).weakness() is None  # hand-set: nothing was measured
    unmeasurable = DemoQuality(weights, {"r2_cv": float("nan")}).weakness() or ""
    assert "could not be cross-validated" in unmeasurable
    assert "recent or mixed" in unmeasurable


def _lrgd_measured(coupling: float, groups=80, per=8, seed=0):
    """Measurements where each demonstration's push toward Yes is ``coupling`` x its label x its
    alignment plus noise (the LRGD view holding, or not at all with coupling 0), its item
    similarity tracks the alignment, and the user agrees with itself: the demonstrations
    aligned with the query mostly share the query's label."""
    rng = np.random.default_rng(seed)
    n = groups * per
    measured = _measured((0.0, 0.0, 0.0, 0.0), groups=groups, per=per, seed=seed)
    alignment = rng.uniform(-0.2, 1.0, n)
    target = rng.choice([-1.0, 1.0], groups)[measured["group"]]  # one query per prompt
    label = 2.0 * measured["liked"] - 1.0
    label = np.where((alignment > 0.5) & (rng.random(n) < 0.9), target, label)
    push = coupling * label * alignment + rng.normal(0, 0.1, n)
    return {
        **measured,
        "liked": (label > 0).astype(float),
        "similarity": alignment + rng.normal(0, 0.05, n),
        "alignment": alignment,
        "push": push,
        "help": push * target,
    }


def test_lrgd_agreement_reads_the_dual_models_push():
    """The report's rank correlations (within each prompt, averaged): high where the push is
    label x alignment, near zero where it is noise; a prompt whose demonstrations were trimmed
    (NaN alignment) is left out, not counted as a disagreement."""
    from recicl.experiments.demo_quality import lrgd_agreement

    holding = _lrgd_measured(coupling=1.0)
    holding["alignment"][:8] = np.nan  # the first prompt was trimmed
    report = lrgd_agreement(holding)
    assert report["rho_push"] > 0.8
    assert report["rho_influence"] > 0.5
    assert report["rho_help_alignment"] > 0.2 and report["rho_help_similarity"] > 0.2
    assert report["aligned_share"] == pytest.approx(1 - 8 / len(holding["alignment"]))
    noise = lrgd_agreement(_lrgd_measured(coupling=0.0))
    assert abs(noise["rho_push"]) < 0.1 and abs(noise["rho_influence"]) < 0.1


def test_the_lrgd_estimator_ranks_by_similarity_alone():
    """metric lrgd: label-blind weights (similarity only: choosing by label tilts the like
    rate a reader sees), the agreement in its report, and a warning when item similarity ranks
    the measured demonstrations against their help."""
    good = fit_demo_quality(_lrgd_measured(coupling=1.0), metric="lrgd")
    assert good.weights == (1.0, 0.0, 0.0, 0.0)
    assert good.fitted["metric"] == "lrgd" and good.fitted["rho_push"] > 0.8
    assert good.weakness() is None
    against = _lrgd_measured(coupling=1.0)
    against["similarity"] = -against["similarity"]
    weak = fit_demo_quality(against, metric="lrgd").weakness() or ""
    assert "lrgd quality policy" in weak and "embeddings.encoder: llm" in weak
    ridge = fit_demo_quality(_lrgd_measured(coupling=1.0))  # the report comes with either fit
    assert ridge.fitted["metric"] == "ridge" and ridge.fitted["rho_push"] > 0.8
    with pytest.raises(Exception, match="use one of ridge, lrgd"):
        fit_demo_quality(against, metric="loo")


def test_the_lrgd_estimator_chooses_what_the_semantic_policy_chooses():
    """Similarity alone, label-blind: the quality policy with the lrgd weights picks exactly
    the semantic policy's demonstrations (ties by recency included), whatever the labels."""
    from recicl.data.item_embeddings import unit_rows
    from recicl.data.retrieval import select_similar

    rng = np.random.default_rng(4)
    candidates = unit_rows(rng.normal(size=(300, 8))).astype(np.float32)
    candidates[50:60] = candidates[40]  # ties
    targets = unit_rows(rng.normal(size=(30, 8))).astype(np.float32)
    ends = np.sort(rng.integers(20, 300, 30))
    counts = np.minimum(ends, rng.integers(3, 60, 30))
    liked = rng.integers(0, 2, 300)
    lrgd = DemoQuality((1.0, 0.0, 0.0, 0.0), {"metric": "lrgd"})
    semantic = select_similar(targets, candidates, ends, counts, k=8, recent=0)
    quality = select_similar(
        targets, candidates, ends, counts, k=8, recent=0, quality=lrgd, liked=liked, window=200
    )
    for got, want in zip(quality, semantic, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (np.diff(semantic[0]) == np.minimum(counts, 8)).all()


def test_an_unknown_metric_is_refused_before_anything_is_measured(tmp_path):
    """`recicl samples demo-quality --metric loo`: one line naming the choices, before the
    samples folder is even opened (a measurement takes minutes with a real model)."""
    from recicl.config import ConfigError, ReciclConfig
    from recicl.experiments.demo_quality import fit_from_samples

    with pytest.raises(ConfigError, match="--metric 'loo': use one of ridge, lrgd"):
        fit_from_samples(ReciclConfig(), tmp_path / "no-such-folder", None, metric="loo")
