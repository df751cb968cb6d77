"""The streaming protocol end to end on synthetic drift data: train once, evaluate later periods.

One run of ``run_streaming`` (Ray Data samples, Ray Train DDP with 2 CPU workers, MLflow) on
``recicl data synth`` data: every user likes two of twelve genres (80% of their picks) and
switches to two others at 70-80% of the timeline (within D7); a rating is high exactly when the
item's genre is in the user's *current* pair. With ``history_len = 0`` only the demonstrations
(the user's 4 latest decisions) show the current taste. Every variant is trained/fitted on D0-D5
and evaluated on D6-D9 with no update.

Asserted: the protocol's outputs (table, CSV, MLflow parent/child runs, the same capped samples
for every variant); the classical model (user x genre) learned each user's old taste, so it is
strong before the switch and near chance after it; the TALLRec format, whose prompts carry
nothing about the user here, and the untuned model stay at chance.

Not asserted: that ``recicl`` beats ``tallrec``. With the training settings used here
(``demo_loss_weight``, constant LR, betas 0.9/0.98, fan-in init) the RecICL tiny model *can*
learn to read its demonstrations, but on 2 CPU cores it does so only in some runs: of six runs
of this setup with 1,800-3,000 steps, two reached AUC 0.60-0.76 on D6-D9, one 0.57-0.63, and
three stayed at 0.51-0.58 (TALLRec 0.48-0.54 throughout). A test that asserted it would be
flaky, so the README reports the runs instead and this test keeps a short budget. The measured
table is printed.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from recicl.config import build_config
from recicl.data.pipeline import build_samples
from recicl.data.synth import SynthSpec, write_synthetic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 300
EVAL_SAMPLES = 1000
EVAL_PERIODS = (6, 7, 8, 9)
POST_DRIFT = (8, 9)  # users switch at 70-80% of the timeline: within D7
VARIANTS = ("zero-shot", "tallrec", "recicl", "classical")


@pytest.fixture(scope="module")
def streaming(ray_local, tmp_path_factory):
    from recicl.evaluate.streaming import run_streaming

    root = tmp_path_factory.mktemp("icl")
    write_synthetic(
        SynthSpec(users=600, events_per_user=40, liked_share=0.8, seed=7, drift_at=0.75),
        root / "synth",
    )
    cfg = build_config(
        {
            "workdir": str(root / "work"),
            "data": {"source": "parquet", "path": str(root / "synth")},
            "samples": {
                "output": str(root / "samples"),
                "periods": 10,
                "num_demos": 4,
                "history_len": 0,
                "min_demos": 4,
            },
            "prompt": {"max_length": 512},
            "model": {"lora": {"enabled": False}},
            "train": {
                "strategy": "ddp",
                "num_workers": 2,
                "cpus_per_worker": 1,
                "batch_size": 16,
                "eval_batch_size": 128,
                "max_steps": STEPS,
                "lr": 3e-3,
                "warmup_ratio": 0.05,
                "lr_schedule": "constant",
                "adam_betas": [0.9, 0.98],
                "demo_loss_weight": 1.0,
                "log_every_steps": 50,
                # Here prompt lengths differ only by a genre or title word, so length-sorted
                # batches would group prompts by genre: keep batches mixed instead.
                "length_grouping": False,
            },
            "evaluate": {"replicas": 1, "batch_size": 128},
            "experiment": {
                "train_periods": "0-5",
                "max_eval_samples": EVAL_SAMPLES,
                "variants": list(VARIANTS),
            },
        }
    )
    build_samples(cfg)
    result = run_streaming(cfg)
    auc = {(r["variant"], r["period"]): r["auc"] for r in result["rows"]}
    return SimpleNamespace(cfg=cfg, root=root, result=result, auc=auc)


def mean_auc(streaming, variant: str, periods: tuple[int, ...]) -> float:
    return float(np.mean([streaming.auc[variant, p] for p in periods]))


def test_streaming_protocol_after_a_drift(streaming, capsys):
    with capsys.disabled():
        print(
            "\nstreaming AUC by variant/period:",
            json.dumps({f"{v}/D{p}": round(a, 3) for (v, p), a in sorted(streaming.auc.items())}),
        )
    result, auc = streaming.result, streaming.auc
    assert result["train_periods"] == list(range(6))
    assert result["eval_periods"] == list(EVAL_PERIODS)
    rows = result["rows"]
    assert {(r["variant"], r["period"]) for r in rows} == {
        (v, p) for v in VARIANTS for p in EVAL_PERIODS
    }
    for row in rows:
        assert row["count"] == EVAL_SAMPLES  # capped, the same samples for every variant
        assert 0.0 <= row["auc"] <= 1.0 and row["logloss"] > 0
    # The classical model memorised each user's old taste: strong before the switch, near
    # chance after it (measured 0.79-0.83 on D6, 0.41-0.51 on D8-D9)
    assert auc["classical", 6] > 0.7, auc
    assert auc["classical", 6] > mean_auc(streaming, "classical", POST_DRIFT) + 0.15, auc
    # No user signal in TALLRec's prompts here, and an untuned model knows nothing: chance
    assert abs(mean_auc(streaming, "tallrec", EVAL_PERIODS) - 0.5) < 0.05, auc
    assert abs(mean_auc(streaming, "zero-shot", EVAL_PERIODS) - 0.5) < 0.06, auc

    # Tuned variants were registered as versions of their own, from their own prompt formats
    variants = result["variants"]
    assert variants["tallrec"]["version"] != variants["recicl"]["version"]
    with open(result["paths"]["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    from recicl.registry import client, resolve_tracking_uri

    mlc = client(resolve_tracking_uri(streaming.cfg))
    parent = mlc.get_run(result["mlflow_parent_run_id"])
    children = mlc.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert sorted(r.data.tags["recicl.variant"] for r in children) == sorted(VARIANTS)
    recicl_child = next(r for r in children if r.data.tags["recicl.variant"] == "recicl")
    assert recicl_child.data.metrics["p9_auc"] == pytest.approx(auc["recicl", 9])
