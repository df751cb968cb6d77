"""Ray job: evaluate a model version on sample periods (Ray Data actor pool of replicas).

    ray job submit --working-dir . -- python ray_jobs/evaluate.py \
        --model models:/recicl@champion --samples recicl-work/samples/ml-latest-small --periods 6-9

Thin on purpose: the same library call as ``recicl evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.config import load_config, parse_periods
from recicl.evaluate.batch import evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate a recicl model on samples.")
    parser.add_argument("--model", required=True, help="models:/name/N, models:/name@alias, dir")
    parser.add_argument("--samples", required=True, type=Path, help="Samples folder.")
    parser.add_argument("--periods", help="e.g. 6-9; default all periods.")
    parser.add_argument("--output", type=Path, help="Report JSON path.")
    parser.add_argument("--config", type=Path, help="YAML config (MLflow, replicas).")
    args = parser.parse_args()
    report = evaluate_model(
        load_config(args.config),
        args.model,
        args.samples,
        parse_periods(args.periods),
        args.output,
    )
    print(json.dumps({"overall": report["overall"], "report": report["report_path"]}, indent=2))


if __name__ == "__main__":
    main()
