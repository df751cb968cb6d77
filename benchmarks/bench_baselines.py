"""The non-LLM baselines of the streaming experiment on the bundled MovieLens: AUC and UAUC per
evaluated period, fitted once on the training periods (no update) and refitted per period.

Every baseline of ``recicl/evaluate/baselines.py`` (logistic, boosted-trees, mf, sasrec, din),
the existing ``classical`` model and the model-free ``demo-rate`` are fitted on D0-D5 and score
every sample of D6-D9; ``<name>-retrained`` refits on every period before each evaluated one.
Two evaluated sets are reported per seed: every sample of each period, and the seeded draw of
``--cap`` samples per period that ``recicl experiment streaming`` scores
(``subsample_per_period`` with ``experiment.max_eval_samples``), so a baseline's row can be read
next to the LLM rows of the same draw. The seed is also the baselines' fitting seed, as
``train.seed`` is in the experiment. Fit times are wall clock and this process's CPU seconds (a
busy host inflates the first, not the second).

    python benchmarks/bench_baselines.py [--samples recicl-work/samples/ml-latest-small-d8] \
        [--seeds 0,1] [--cap 500] [--json recicl-work/bench-baselines.json]

The samples folder comes from ``recicl samples build --config
ray_jobs/configs/gemma3-270m-cpu.yaml``. Nothing is asserted: the tables are what docs/baselines.md
shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recicl.config import parse_periods
from recicl.data.samples_folder import SamplesFolder
from recicl.evaluate.baselines import (
    BASELINES,
    RETRAINED_BASELINES,
    fit_baseline,
    retrained_scores,
)
from recicl.evaluate.batch import subsample_per_period
from recicl.evaluate.classical import fit_classical
from recicl.evaluate.metrics import metrics_by_period
from recicl.experiments.streaming import demo_like_rate


def fitted_scores(
    name: str,
    folder: SamplesFolder,
    train_periods: list[int],
    evaluated: pa.Table,
    catalog: pa.Table,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of every evaluated row and the fit's facts, for one variant."""
    if name == "demo-rate":
        return demo_like_rate(evaluated), {}
    if name in RETRAINED_BASELINES:
        available = sorted(p for p, n in folder.sample_counts().items() if n)
        return retrained_scores(name, folder.read_table, available, evaluated, catalog, seed=seed)
    train = folder.read_table(train_periods)
    started, cpu = time.perf_counter(), time.process_time()
    model = (
        fit_classical(train, catalog)
        if name == "classical"
        else fit_baseline(name, train, catalog, seed=seed)
    )
    facts = {
        "train_rows": train.num_rows,
        "fit_seconds": round(time.perf_counter() - started, 1),
        "fit_cpu_seconds": round(time.process_time() - cpu, 1),
    }
    return model.score(evaluated, catalog), facts


def report(table: pa.Table, scores: np.ndarray) -> dict[str, Any]:
    return metrics_by_period(
        table["period"].to_numpy(),
        table["user_id"].to_numpy(zero_copy_only=False),
        table["label"].to_numpy(),
        scores,
    )


def markdown(title: str, reports: dict[str, dict[str, Any]], periods: list[int]) -> str:
    head = " | ".join(f"D{p} AUC | D{p} UAUC" for p in periods)
    lines = [f"\n{title}\n", f"| variant | {head} |", "|---|" + "---|---|" * len(periods)]
    for name, values in reports.items():
        cells = []
        for p in periods:
            slice_ = values["periods"][str(p)]
            cells += [f"{slice_['auc']:.3f}", f"{slice_['uauc']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", default="recicl-work/samples/ml-latest-small-d8")
    parser.add_argument("--train", default="0-5", help="training periods")
    parser.add_argument("--eval", default="6-9", help="evaluated periods")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cap", type=int, default=500, help="the experiment's max_eval_samples")
    parser.add_argument("--variants", default=None, help="comma-separated; default all")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args()

    folder = SamplesFolder.at(args.samples)
    folder.require_manifest()
    catalog = pq.read_table(folder.catalog_path)
    train_periods = parse_periods(args.train) or []
    eval_periods = parse_periods(args.eval) or []
    evaluated = folder.read_table(eval_periods)
    variants = (
        args.variants.split(",")
        if args.variants
        else ["demo-rate", "classical", *BASELINES, *RETRAINED_BASELINES]
    )
    counts = [int(np.sum(evaluated["period"].to_numpy() == p)) for p in eval_periods]
    print(f"samples {folder.root}: fitted on D{train_periods[0]}-D{train_periods[-1]}, "
          f"evaluated {', '.join(f'D{p}' for p in eval_periods)} ({counts} samples)")  # fmt: skip
    results: dict[str, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        draw = subsample_per_period(evaluated, args.cap, seed)
        in_draw = pc.is_in(evaluated["sample_id"], draw["sample_id"]).to_numpy(zero_copy_only=False)
        drawn = evaluated.filter(pa.array(in_draw))
        every: dict[str, dict[str, Any]] = {}
        subset: dict[str, dict[str, Any]] = {}
        facts: dict[str, Any] = {}
        for name in variants:
            scores, facts[name] = fitted_scores(
                name, folder, train_periods, evaluated, catalog, seed
            )
            every[name], subset[name] = report(evaluated, scores), report(drawn, scores[in_draw])
            print(f"  seed {seed}: {name} {facts[name]}", flush=True)
        print(markdown(f"seed {seed}, every sample", every, eval_periods))
        print(markdown(f"seed {seed}, {args.cap} per period (seeded draw)", subset, eval_periods))
        results[str(seed)] = {"every": every, "draw": subset, "facts": facts}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
