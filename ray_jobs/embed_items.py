"""Ray job: embed every catalog item, exactly ``recicl embed items`` (Ray Data actor pool).

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/embed_items.py --samples DIR

A thin wrapper on purpose: the arguments go unchanged to the CLI command, so its options, help
and exit codes are defined once (``recicl.cli``), not re-declared here to drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.cli import app

if __name__ == "__main__":
    app(args=["embed", "items", *sys.argv[1:]], prog_name="recicl")
