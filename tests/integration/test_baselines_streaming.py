"""The non-LLM baselines run as streaming variants: fitted on the training periods only (or, for
``-retrained``, on every period before each evaluated one), scored on the same evaluated samples
as every other row, with their facts (training rows, fitting seconds) recorded.

No LLM is trained here; recicl/evaluate/baselines.py's unit tests cover what each baseline
learns and that none leaks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from recicl.config import build_config
from recicl.data.pipeline import build_samples
from recicl.data.synth import SynthSpec, write_synthetic

pytestmark = pytest.mark.integration

TRAIN_PERIODS, EVAL_PERIODS = (0, 1, 2), (3, 4)
VARIANTS = ["logistic", "boosted-trees", "mf", "sasrec", "din", "mf-retrained"]


@pytest.fixture(scope="module")
def streaming(ray_local, tmp_path_factory):
    from recicl.experiments.streaming import run_streaming

    root = tmp_path_factory.mktemp("baselines")
    write_synthetic(SynthSpec(users=40, events_per_user=15, seed=5), root / "synth")
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth"), "max_date": "2030-01-01"},
            "samples": {"num_demos": 3, "history_len": 3, "periods": 5, "min_demos": 1,
                        "output": str(root / "samples")},
            "ray": {"num_cpus": 4},
            "experiment": {"train_periods": "0-2", "eval_periods": "3-4",
                           "max_eval_samples": 30, "variants": VARIANTS},
        }
    )  # fmt: skip
    manifest = build_samples(cfg)
    return SimpleNamespace(cfg=cfg, manifest=manifest, result=run_streaming(cfg))


def test_every_baseline_has_a_row_per_evaluated_period(streaming):
    rows = streaming.result["rows"]
    assert sorted({r["variant"] for r in rows}) == sorted(VARIANTS)
    for variant in VARIANTS:
        assert sorted(r["period"] for r in rows if r["variant"] == variant) == list(EVAL_PERIODS)
        assert all(
            r["count"] == 30 and r["auc"] is not None for r in rows if r["variant"] == variant
        )


def test_baselines_are_fitted_on_the_training_periods_only(streaming):
    counts = streaming.manifest.sample_counts()
    facts = streaming.result["variants"]
    for variant in ("logistic", "boosted-trees", "mf", "sasrec", "din"):
        assert facts[variant]["train_rows"] == sum(counts[p] for p in TRAIN_PERIODS), variant
        assert facts[variant]["fit_seconds"] >= 0
    retrained = facts["mf-retrained"]
    assert retrained["train_rows"] == {
        str(p): sum(counts[q] for q in counts if q < p) for p in EVAL_PERIODS
    }
    assert set(retrained["fit_seconds"]) == {str(p) for p in EVAL_PERIODS}


def test_a_baseline_row_is_the_baselines_own_scores(streaming):
    """The experiment's row equals fitting the baseline by hand on D0-D2 and scoring the same
    seeded draw: the branch adds nothing and the fit is deterministic."""
    from recicl.data.samples_folder import SamplesFolder
    from recicl.evaluate.baselines import fit_baseline
    from recicl.evaluate.batch import subsample_per_period
    from recicl.evaluate.metrics import metrics_by_period

    cfg = streaming.cfg
    folder = SamplesFolder.at(cfg.samples.output)
    catalog = pq.read_table(folder.catalog_path)
    evaluated = subsample_per_period(folder.read_table(list(EVAL_PERIODS)), 30, cfg.train.seed)
    train = folder.read_table(list(TRAIN_PERIODS))
    model = fit_baseline("sasrec", train, catalog, seed=cfg.train.seed)
    report = metrics_by_period(
        evaluated["period"].to_numpy(),
        evaluated["user_id"].to_numpy(zero_copy_only=False),
        evaluated["label"].to_numpy(),
        model.score(evaluated, catalog),
    )
    for period in EVAL_PERIODS:
        (row,) = [
            r
            for r in streaming.result["rows"]
            if r["variant"] == "sasrec" and r["period"] == period
        ]
        assert row["auc"] == pytest.approx(report["periods"][str(period)]["auc"])
        assert row["logloss"] == pytest.approx(report["periods"][str(period)]["logloss"])


def test_no_llm_is_resolved_when_no_variant_needs_one(streaming):
    """Only non-LLM variants ran: the base model (here the tiny one built from the catalog,
    with Gemma an import of 250 MB) was never made."""
    from pathlib import Path

    assert not (Path(streaming.cfg.workdir) / "tiny-model").exists()


def test_a_failing_variant_marks_the_parent_run_failed(streaming, monkeypatch):
    """A crash in any variant leaves the MLflow parent run FAILED, never RUNNING."""
    from recicl.config import with_overrides
    from recicl.experiments.streaming import StreamingExperiment
    from recicl.registry import client, resolve_tracking_uri

    def broken(self, variant):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(StreamingExperiment, "_demo_rate", broken)
    cfg = with_overrides(streaming.cfg, {"experiment.variants": ["demo-rate"]})
    experiment = StreamingExperiment(cfg)
    with pytest.raises(RuntimeError, match="planted failure"):
        experiment.run()
    run = client(resolve_tracking_uri(cfg)).get_run(experiment.parent)
    assert run.info.status == "FAILED"
    assert run.data.tags["recicl.kind"] == "streaming"
