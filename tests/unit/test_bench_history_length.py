"""benchmarks/bench_history_length.py: one samples folder per K, and the table of mean AUCs."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_history_length import length_settings, markdown, mean_auc

CONFIG = Path(__file__).resolve().parents[2] / "ray_jobs/configs/streaming-movielens-rella.yaml"


def test_each_length_builds_its_own_folder_with_a_window_that_holds_it():
    short, long = length_settings(CONFIG, 5), length_settings(CONFIG, 300)
    assert short["samples.num_demos"] == 5 and long["samples.num_demos"] == 300
    assert short["samples.output"].endswith("-subr-k5")
    assert short["train.samples_dir"] == short["samples.output"] != long["samples.output"]
    assert short["samples.retrieval_window"] == 200  # the config's, which holds 5
    assert long["samples.retrieval_window"] == 300  # raised to hold every slot


def test_mean_auc_and_the_table():
    result = {"rows": [{"variant": "reit", "auc": 0.6}, {"variant": "reit", "auc": 0.7},
                       {"variant": "rella", "auc": 0.5}]}  # fmt: skip
    assert abs(mean_auc(result, "reit") - 0.65) < 1e-12
    assert mean_auc(result, "zero-shot+subr") is None
    text = markdown({10: {"rella": [0.5, 0.52], "reit": [0.65, None]}}, ["rella", "reit"])
    assert text.splitlines()[2] == "| 10 | 0.500–0.520 | 0.650 |"
