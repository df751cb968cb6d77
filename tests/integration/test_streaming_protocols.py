"""The streaming experiment's paper protocols run and mean what they say (tiny model, few steps).

* ``tallrec+demos`` scores the *tallrec* version (tuned once, shared with the ``tallrec`` row)
  with RecICL prompts: the same demonstrations the ``recicl`` row sees;
* a few-shot variant (``experiment.few_shot``) is tuned on exactly its share of the samples
  (one fraction here: a count goes through the same code, and tests/unit/test_train_subset.py
  checks both sizes);
* ``retrained`` tunes one version per evaluated period on every period before it;
* ``recicl+stats+codes`` carries the item statistics and taste codes frozen at the end of its
  training periods, and scoring a counted period with it is refused.

Quality is not asserted here (a few steps of a random tiny model); test_streaming.py and the
README's Gemma table are where quality is measured.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from recicl.config import build_config
from recicl.data.pipeline import build_samples
from recicl.data.synth import SynthSpec, write_synthetic
from recicl.registry import client, resolve_tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVAL_PERIODS = (3, 4)


@pytest.fixture(scope="module")
def protocols(ray_local, tmp_path_factory):
    from recicl.experiments.streaming import run_streaming

    root = tmp_path_factory.mktemp("protocols")
    write_synthetic(SynthSpec(users=40, events_per_user=15, seed=5), root / "synth")
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth"), "max_date": "2030-01-01"},
            "samples": {"num_demos": 3, "history_len": 3, "periods": 5, "min_demos": 1,
                        "item_code_min_events": 2, "output": str(root / "samples")},
            "ray": {"num_cpus": 4},
            # LoRA: the warm update continues an adapter
            "model": {"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
            "prompt": {"max_length": 256},
            "train": {"strategy": "ddp", "num_workers": 2, "batch_size": 4, "max_steps": 2,
                      "lr": 1e-3},
            "evaluate": {"replicas": 1},
            "experiment": {
                "train_periods": "0-2",
                "eval_periods": "3-4",
                "max_eval_samples": 30,
                "variants": ["tallrec", "tallrec+demos", "retrained", "demo-rate",
                             "recicl+stats+codes", "tallrec-warm"],
                "few_shot": [0.5],
            },
        }
    )  # fmt: skip
    manifest = build_samples(cfg)
    result = run_streaming(cfg)
    return SimpleNamespace(cfg=cfg, result=result, manifest=manifest)


def test_every_protocol_has_a_row_per_period(protocols):
    rows = protocols.result["rows"]
    variants = [
        "tallrec", "tallrec+demos", "retrained", "demo-rate", "recicl@50%", "recicl+stats+codes",
        "tallrec-warm",
    ]  # fmt: skip
    assert sorted({r["variant"] for r in rows}) == sorted(variants)
    for variant in variants:
        periods = sorted(r["period"] for r in rows if r["variant"] == variant)
        assert periods == list(EVAL_PERIODS), variant
        assert all(r["count"] == 30 for r in rows if r["variant"] == variant)


def test_tallrec_with_demos_reuses_the_tallrec_version_with_icl_prompts(protocols):
    facts = protocols.result["variants"]
    assert facts["tallrec+demos"]["version"] == facts["tallrec"]["version"]
    # the same model, tuned once; its prompts now carry the demonstrations
    assert facts["tallrec+demos"]["mean_prompt_tokens"] > facts["tallrec"]["mean_prompt_tokens"]
    assert facts["tallrec+demos"]["mean_prompt_tokens"] == pytest.approx(
        facts["recicl@50%"]["mean_prompt_tokens"], rel=0.05
    )


def test_a_few_shot_variant_tunes_on_its_share_of_the_samples(protocols):
    facts = protocols.result["variants"]
    rows = sum(p.samples for p in protocols.manifest.periods if p.period in (0, 1, 2))
    assert facts["recicl@50%"]["train_samples"] == round(rows * 0.5) < rows
    # its own version, tuned on the recicl format
    assert facts["recicl@50%"]["version"] not in (facts["tallrec"]["version"], None)


def test_retrained_tunes_one_version_per_period(protocols):
    facts = protocols.result["variants"]["retrained"]
    assert list(facts["versions"]) == [str(p) for p in EVAL_PERIODS]
    mlc = client(resolve_tracking_uri(protocols.cfg))
    for period, version in facts["versions"].items():
        tags = mlc.get_model_version("recicl", version).tags
        assert tags["prompt_format"] == "recicl"
        trained_on = mlc.get_run(mlc.get_model_version("recicl", version).run_id).data.params
        assert trained_on["periods.train_periods"] == str(list(range(int(period))))


def test_a_warm_update_continues_the_previous_model_on_what_it_has_not_seen(protocols):
    """tallrec-warm: the tallrec model scores D3; before D4 it is continued (its adapter, not the
    base) on D3 alone, and that model scores D4."""
    facts = protocols.result["variants"]
    first, second = facts["tallrec-warm"]["models"]
    assert first["version"] == facts["tallrec"]["version"]  # the plain variant's model
    assert (first["train_periods"], first["scores"], first["warm"]) == ([0, 1, 2], [3], False)
    assert (second["train_periods"], second["scores"], second["warm"]) == ([3], [4], True)
    mlc = client(resolve_tracking_uri(protocols.cfg))
    version = mlc.get_model_version("recicl", second["version"])
    params = mlc.get_run(version.run_id).data.params
    assert params["periods.train_periods"] == "[3]"
    assert params["train.init_from"] == str(Path(facts["tallrec"]["model_dir"]).resolve())


def test_demo_rate_is_the_recent_like_rate(protocols):
    """The model-free reference row: AUC of the share of Yes among the demonstrations, on the
    same evaluated samples as every other row."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from recicl.data.samples_folder import SamplesFolder
    from recicl.evaluate.batch import subsample_per_period

    cfg = protocols.cfg
    table = subsample_per_period(
        SamplesFolder.at(cfg.samples.output).read_table(list(EVAL_PERIODS)), 30, cfg.train.seed
    )
    for period in EVAL_PERIODS:
        rows = [r for r in table.to_pylist() if r["period"] == period]
        rate = [np.mean([d["label"] for d in r["demos"]]) if r["demos"] else 0.5 for r in rows]
        want = roc_auc_score([r["label"] for r in rows], rate)
        (got,) = [
            r["auc"]
            for r in protocols.result["rows"]
            if r["variant"] == "demo-rate" and r["period"] == period
        ]
        assert got == pytest.approx(want)


def test_recicl_with_knowledge_carries_its_frozen_statistics_and_codes(protocols):
    from recicl.data.item_stats import item_stats_meta, read_item_stats
    from recicl.data.samples_folder import SamplesFolder
    from recicl.modeling.packaged import read_version_manifest

    facts = protocols.result["variants"]["recicl+stats+codes"]
    model_dir = Path(facts["model_dir"])
    manifest = read_version_manifest(model_dir)
    assert manifest is not None and manifest.prompt["item_stats"] is True
    assert manifest.prompt["item_codes"] is True
    assert manifest.data.item_stats_until == 2  # the last training period (0-2)
    carried = read_item_stats(model_dir / "item_stats.parquet")
    folder = SamplesFolder.at(protocols.cfg.samples.output)
    assert carried.equals(read_item_stats(folder.item_stats_path))
    assert carried["code"].null_count < carried.num_rows  # some items have taste codes
    assert item_stats_meta(carried)["until_ts"] == protocols.manifest.boundaries_ts[2]
    # the statistics are in its prompts: longer than the same format without them
    assert (
        facts["mean_prompt_tokens"]
        > protocols.result["variants"]["recicl@50%"]["mean_prompt_tokens"]
    )


def test_scoring_counted_periods_with_statistics_is_refused(protocols):
    from recicl.config import ConfigError
    from recicl.evaluate.batch import score_samples

    model_dir = Path(protocols.result["variants"]["recicl+stats+codes"]["model_dir"])
    with pytest.raises(ConfigError, match="own answers"):
        score_samples(model_dir, Path(protocols.cfg.samples.output), [2, 3], replicas=1)


@pytest.fixture(scope="module")
def rella(ray_local, tmp_path_factory):
    """ReLLa's rows on samples with a semantic (SUBR) copy, from random item vectors."""
    import numpy as np
    import pyarrow.parquet as pq

    from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
    from recicl.experiments.streaming import run_streaming

    root = tmp_path_factory.mktemp("rella")
    write_synthetic(SynthSpec(users=40, events_per_user=15, seed=5), root / "synth")
    ids = [str(i) for i in pq.read_table(root / "synth" / "catalog.parquet")["item_id"]]
    rng = np.random.default_rng(3)
    vectors = ItemEmbeddings(tuple(ids), unit_rows(rng.normal(size=(len(ids), 16))))
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth"), "max_date": "2030-01-01"},
            "samples": {"num_demos": 4, "history_len": 0, "periods": 5, "min_demos": 1,
                        "augment": ["semantic"], "retrieval_window": 8,
                        "embeddings": str(vectors.save(root / "vectors.parquet")),
                        "output": str(root / "samples")},
            "ray": {"num_cpus": 4},
            "prompt": {"max_length": 256},
            # the originals only, except where a variant says otherwise (reit)
            "train": {"strategy": "ddp", "num_workers": 1, "batch_size": 4, "max_steps": 2,
                      "lr": 1e-3, "use_augmented": False},
            "evaluate": {"replicas": 1},
            "experiment": {"train_periods": "0-2", "eval_periods": "3-4",
                           "max_eval_samples": 30,
                           "variants": ["zero-shot+subr", "rella", "reit"]},
        }
    )  # fmt: skip
    manifest = build_samples(cfg)
    return SimpleNamespace(cfg=cfg, result=run_streaming(cfg), manifest=manifest)


def test_rella_rows_tune_on_relas_prompt_and_reit_mixes_the_subr_copies(rella):
    rows = rella.result["rows"]
    for variant in ("zero-shot+subr", "rella", "reit"):
        got = sorted(r["period"] for r in rows if r["variant"] == variant)
        assert got == list(EVAL_PERIODS), variant
    originals = sum(p.samples for p in rella.manifest.periods if p.period in (0, 1, 2))
    facts = rella.result["variants"]
    assert facts["rella"]["train_samples"] == originals  # train.use_augmented: false
    assert facts["reit"]["train_samples"] == 2 * originals  # + the SUBR copy, whatever it says
    mlc = client(resolve_tracking_uri(rella.cfg))
    for variant in ("rella", "reit"):
        assert mlc.get_model_version("recicl", facts[variant]["version"]).tags[
            "prompt_format"
        ] == "rella"  # fmt: skip


def test_subr_rows_read_the_semantic_copy_of_the_same_samples(rella):
    from recicl.data.samples_folder import SamplesFolder
    from recicl.evaluate.batch import subsample_per_period
    from recicl.experiments.rella import subr_table

    folder = SamplesFolder.at(rella.cfg.samples.output)
    drawn = subsample_per_period(folder.read_table(list(EVAL_PERIODS)), 30, rella.cfg.train.seed)
    subr = subr_table(folder, drawn)
    for column in ("sample_id", "label", "period", "item_id"):
        assert subr[column].to_pylist() == drawn[column].to_pylist()
    copy = {r["sample_id"]: r["demos"] for r in folder.read_table(policy="semantic").to_pylist()}
    assert [copy[s] for s in subr["sample_id"].to_pylist()] == subr["demos"].to_pylist()
    changed = sum(
        a != b for a, b in zip(subr["demos"].to_pylist(), drawn["demos"].to_pylist(), strict=True)
    )
    assert changed > len(drawn) // 4  # retrieval chose other rated items than the newest


def test_subr_rows_without_semantic_samples_are_refused_before_tuning(protocols):
    from recicl.config import ConfigError, with_overrides
    from recicl.experiments.streaming import StreamingExperiment

    cfg = with_overrides(protocols.cfg, {"experiment.variants": ["recicl", "reit"]})
    with pytest.raises(ConfigError, match=r"samples\.augment: \[semantic\]"):
        StreamingExperiment(cfg)
