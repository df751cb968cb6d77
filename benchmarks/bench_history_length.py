"""ReLLa's history-length study: AUC against the length K of the rated history, newest vs SUBR.

ReLLa's observation is that an LLM reads long behaviour histories poorly when they are the newest
K items, and better when they are the K most similar to the asked-about item (SUBR). In recicl
ReLLa's rated history is the sample's demonstrations (``prompt.format: rella``), so K is
``samples.num_demos``. For each K the samples are built (with their ``semantic`` copy) into
``<samples.output>-k<K>`` and the streaming protocol runs the ReLLa rows over the seeds
(``benchmarks/bench_quality.py`` runs each seed, and reuses finished ones):

* ``rella``: tuned on the newest K rated items, scored with them;
* ``reit``: tuned on the newest and the retrieved K (ReiT), scored with the retrieved K;
* ``zero-shot+subr`` (``--variants``): the untuned model with the retrieved K.

The table: AUC averaged over the evaluated periods, min–max over the seeds, one row per K.

    python benchmarks/bench_history_length.py \
        --config ray_jobs/configs/streaming-movielens-rella.yaml --lengths 5,10,20,30 --seeds 0,1

Each K's runs are kept under ``<output>/k<K>/seed-<s>/``. Numbers are measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_quality import _span, run_seed  # noqa: E402  (after the path fix)


def length_settings(config: Path, length: int) -> dict[str, Any]:
    """Overrides for one history length: K rated items, in a samples folder of their own."""
    from recicl.config import load_config
    from recicl.data.samples_folder import configured_samples_dir

    cfg = load_config(config)
    base = configured_samples_dir(cfg) or "recicl-work/samples/history"
    folder = f"{base.rstrip('/')}-k{length}"
    return {
        "samples.num_demos": length,
        "samples.retrieval_window": max(cfg.samples.retrieval_window, length),
        "samples.output": folder,
        "train.samples_dir": folder,
    }


def mean_auc(result: dict, variant: str) -> float | None:
    """A run's AUC of ``variant`` averaged over its evaluated periods."""
    values = [row["auc"] for row in result["rows"] if row["variant"] == variant]
    return sum(values) / len(values) if values else None


def markdown(table: dict[int, dict[str, list]], variants: list[str]) -> str:
    lines = ["| K | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for length, cells in sorted(table.items()):
        lines.append(f"| {length} | " + " | ".join(_span(cells[v]) for v in variants) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--lengths", default="5,10,20,30")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="rella,reit")
    parser.add_argument("--output", type=Path, default=Path("recicl-work/history-length"))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    lengths = [int(k) for k in args.lengths.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[int, dict[str, list]] = {}
    for length in lengths:
        settings = {**length_settings(args.config, length), "experiment.variants": variants}
        cells = table.setdefault(length, {v: [] for v in variants})
        for seed in seeds:
            folder = args.output / f"k{length}" / f"seed-{seed}"
            result = run_seed(args.config, seed, folder, [], [], settings)
            for variant in variants:
                cells[variant].append(mean_auc(result, variant))
            line = ", ".join(f"{v} {_span(cells[v][-1:])}" for v in variants)
            print(f"[history] K={length} seed {seed}: {line}", flush=True)
    command = "python benchmarks/bench_history_length.py " + shlex.join(sys.argv[1:])
    text = markdown(table, variants)
    print(f"\nmean AUC over the evaluated periods (min–max over seeds {seeds}); {command}\n{text}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text(text)
    (args.output / "summary.json").write_text(
        json.dumps({"command": command, "table": table}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
