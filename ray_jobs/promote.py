"""Ray job: move a registry alias to a version only if it is not worse than the current one.

    ray job submit --working-dir . -- python ray_jobs/promote.py --version 4 \
        --samples recicl-work/samples/ml-latest-small

Thin on purpose: the same library call as ``recicl promote``. Exit status 1 when refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.config import load_config
from recicl.promotion import promote


def main() -> None:
    parser = argparse.ArgumentParser(description="Promote a recicl model version.")
    parser.add_argument("--version", required=True)
    parser.add_argument("--name", help="Registered model (default: config mlflow.registered_model)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--samples", type=Path, help="Samples to compare on.")
    parser.add_argument("--period", type=int, help="Period compared (default: newest).")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--reason")
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.config)
    decision = promote(
        cfg,
        args.name or cfg.mlflow.registered_model,
        args.version,
        args.alias,
        samples_dir=args.samples,
        period=args.period,
        force=args.force,
        reason=args.reason,
    )
    print(decision.message())
    sys.exit(0 if decision.promoted else 1)


if __name__ == "__main__":
    main()
