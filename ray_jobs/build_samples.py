"""Ray job: build ICL samples.

    ray job submit --working-dir . -- python ray_jobs/build_samples.py \
        --config ray_jobs/configs/ml-latest-small.yaml

Thin on purpose: the same library call as ``recicl samples build``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.config import load_config, with_overrides
from recicl.data.pipeline import build_samples
from recicl.reports import print_samples_summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Build RecICL samples with Ray Data.")
    parser.add_argument("--config", type=Path, help="YAML config (see README).")
    parser.add_argument("--path", help="Override data.path.")
    parser.add_argument("--output", help="Override samples.output.")
    args = parser.parse_args()
    cfg = with_overrides(
        load_config(args.config), {"data.path": args.path, "samples.output": args.output}
    )
    print_samples_summary(build_samples(cfg))


if __name__ == "__main__":
    main()
