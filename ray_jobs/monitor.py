"""Ray job: decide whether the champion needs a re-tune or a rollback, exactly ``recicl monitor``.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- \
        python ray_jobs/monitor.py --config my.yaml

Exit code: 0 ok, 10 retune, 11 rollback, 12 no-data (the job's status carries it, so a
scheduler can start a re-tune on 10). A thin wrapper on purpose: the arguments go unchanged to
the CLI command, so its options, help and exit codes are defined once (``recicl.cli``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from recicl.cli import app

if __name__ == "__main__":
    app(args=["monitor", *sys.argv[1:]], prog_name="recicl")
