"""Ray job: re-tune the champion on the log plus what serving stored, exactly ``recicl retune``.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/retune.py --config ray_jobs/configs/retune-warm.yaml --run-name retune-1

Resubmitting with the same --run-name resumes where it stopped (export, samples, the training
checkpoint, evaluation). Exit status 0 with a new version in shadow or split, 2 on a usage or
input error (no champion, no new events, another base model: nothing is registered).

A thin wrapper on purpose: the arguments go unchanged to the CLI command, so its options, help
and exit codes are defined once (``recicl.cli``), not re-declared here to drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.cli import app

if __name__ == "__main__":
    app(args=["retune", *sys.argv[1:]], prog_name="recicl")
