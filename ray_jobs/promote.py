"""Ray job: move a registry alias to a version only if it is not worse, exactly ``recicl promote``.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/promote.py --version 4 \
        --samples recicl-work/samples/ml-latest-small

Exit status 1 when the gate refuses (so a pipeline can stop there), 2 on a usage or input error.

A thin wrapper on purpose: the arguments go unchanged to the CLI command, so its options, help
and exit codes are defined once (``recicl.cli``), not re-declared here to drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.cli import app

if __name__ == "__main__":
    app(args=["promote", *sys.argv[1:]], prog_name="recicl")
