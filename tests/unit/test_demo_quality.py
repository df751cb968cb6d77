"""The quality policy's estimator: the fit recovers how help depends on the features."""

from __future__ import annotations

import numpy as np

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
