"""Ray job: tune the model on ICL samples (Ray Train + DeepSpeed ZeRO / DDP), log to MLflow.

    ray job submit --working-dir . -- python ray_jobs/train.py \
        --config ray_jobs/configs/qwen2.5-7b-zero3.yaml

Thin on purpose: the same library call as ``recicl train``. Resubmitting with the same
``--run-name`` resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.config import load_config, with_overrides
from recicl.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description="Tune a causal LM on RecICL prompts.")
    parser.add_argument("--config", type=Path, help="YAML config (see README).")
    parser.add_argument("--samples", help="Override train.samples_dir.")
    parser.add_argument("--model", help="Override model.name_or_path.")
    parser.add_argument("--strategy", choices=["deepspeed", "ddp"], help="Override train.strategy.")
    parser.add_argument("--zero-stage", type=int, choices=[2, 3], help="Override train.zero_stage.")
    parser.add_argument("--num-workers", type=int, help="Override train.num_workers.")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="train.use_gpu=true")
    parser.add_argument("--run-name", help="Override train.run_name (reuse it to resume).")
    args = parser.parse_args()
    cfg = with_overrides(
        load_config(args.config),
        {
            "train.samples_dir": args.samples,
            "model.name_or_path": args.model,
            "train.strategy": args.strategy,
            "train.zero_stage": args.zero_stage,
            "train.num_workers": args.num_workers,
            "train.use_gpu": args.use_gpu,
            "train.run_name": args.run_name,
        },
    )
    result = train(cfg)
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "registered_model": result.registered_model,
                "version": result.version,
                "checkpoint": result.checkpoint_path,
                "metrics": result.metrics,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
