"""What an LLM row adds to a non-LLM one, sample by sample: a fixed blend of their scores.

Reads the per-sample scores a streaming run keeps (``<output>/scores/<variant>.parquet``, one
file per variant scored on the evaluated draw; ``bench_quality.py`` runs put them under
``<output>/seed-N[/part-K]/scores``) and reports, per evaluated period, AUC and UAUC of each row
and of their **blend**: the mean of the two scores' logits. The blend has no weight fitted on any
evaluated sample (nothing to leak, nothing tuned to this data): if it beats the better of the
two on every period, each row carries something the other lacks; if it does not, the LLM row adds
nothing the non-LLM one does not already know.

    python benchmarks/bench_blend.py --scores recicl-work/quality-full/seed-0 \
        --rows recicl,logistic [--json recicl-work/blend.json]

Both rows must have scored the same samples (the same draw: the same ``train.seed`` and
``experiment.max_eval_samples``); a mismatch is an error, not a silent inner join.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recicl.evaluate.metrics import metrics_by_period
from recicl.modeling.signals import blend_scores


def find_scores(folder: Path, row: str) -> Path:
    """The one ``scores/<row>.parquet`` under ``folder`` (any depth: seed and part folders)."""
    found = sorted(folder.rglob(f"scores/{row}.parquet"))
    if len(found) != 1:
        where = ", ".join(str(p) for p in found) or "none"
        sys.exit(f"--rows {row}: expected one scores/{row}.parquet under {folder}, found {where}")
    return found[0]


def blend_report(first: pa.Table, second: pa.Table) -> dict[str, dict[str, Any]]:
    """Per-period metrics of ``first``, ``second`` and the mean of their logits (both tables:
    sample_id, period, user_id, label, score)."""
    first, second = first.sort_by("sample_id"), second.sort_by("sample_id")
    if first["sample_id"] != second["sample_id"] or first["label"] != second["label"]:
        raise SystemExit(
            "the two rows scored different samples: run them with the same train.seed and "
            "experiment.max_eval_samples (the same evaluated draw)"
        )
    periods = first["period"].to_numpy()
    users = first["user_id"].to_numpy(zero_copy_only=False)
    labels = first["label"].to_numpy()
    a, b = first["score"].to_numpy(), second["score"].to_numpy()
    blended = blend_scores(a, b)
    return {
        name: metrics_by_period(periods, users, labels, scores)
        for name, scores in (("first", a), ("second", b), ("blend", blended))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scores", type=Path, required=True, help="a streaming output folder")
    parser.add_argument("--rows", required=True, help="two variants, e.g. recicl,logistic")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if len(rows) != 2:
        sys.exit(f"--rows: give two variants separated by a comma, got {args.rows!r}")
    tables = [pq.read_table(find_scores(args.scores, row)) for row in rows]
    report = blend_report(*tables)
    names = {"first": rows[0], "second": rows[1], "blend": f"{rows[0]} + {rows[1]} (blend)"}
    periods = sorted(report["first"]["periods"], key=int)
    print(f"| row | {' | '.join(f'D{p} AUC / UAUC' for p in periods)} | mean AUC | mean UAUC |")
    print("|---|" + "---|" * (len(periods) + 2))
    for key, name in names.items():
        cells = [report[key]["periods"][p] for p in periods]
        text = " | ".join(f"{c['auc']:.3f} / {c['uauc']:.3f}" for c in cells)
        mean_auc = np.mean([c["auc"] for c in cells])
        mean_uauc = np.mean([c["uauc"] for c in cells])
        print(f"| {name} | {text} | {mean_auc:.3f} | {mean_uauc:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({names[k]: v for k, v in report.items()}, indent=1))


if __name__ == "__main__":
    main()
