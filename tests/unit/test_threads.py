"""Torch threads follow the CPUs a process holds (Ray alone leaves a num_cpus 0.5 replica one
thread), and model.num_threads overrides them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from recicl.config import ModelConfig
from recicl.modeling.threads import apply_torch_threads, openmp_threads, torch_threads


@pytest.mark.parametrize(
    ("configured", "allotment", "want"),
    [
        (None, 4.0, 4),  # a replica holding 4 CPUs
        (None, 1.5, 2),  # packed beside an ingress holding 0.5: both cores
        (None, 0.5, 1),  # never 0
        (3, 0.5, 3),  # the config wins
        (None, None, max(1, os.cpu_count() or 1)),  # asked Ray for none: the host's cores
    ],
)
def test_threads_from_the_allotment_or_the_config(configured, allotment, want):
    assert torch_threads(configured, allotment) == want


def test_apply_sets_torch_and_says_so(capsys):
    before = torch.get_num_threads()
    try:
        assert apply_torch_threads("test replica", None, allotment=2.0) == 2
        assert torch.get_num_threads() == 2
        assert apply_torch_threads("test replica", 1, allotment=2.0) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "test replica: torch threads 2 (CPU allotment 2.0)" in out
    assert "test replica: torch threads 1 (model.num_threads)" in out


def test_num_threads_is_validated():
    assert ModelConfig(num_threads=8).num_threads == 8
    with pytest.raises(ValueError, match="num_threads"):
        ModelConfig(num_threads=0)


def test_the_model_thread_keeps_the_count_and_loads_leave_no_thread_behind():
    """Under Ray's OMP_NUM_THREADS=1, a thread started after apply_torch_threads(2) works on one
    OpenMP thread (the pitfall). ModelThread runs every call in one OS thread, on the count set
    there, and a load in a thread that has ended by the time it returns (an OpenMP team per
    thread that lives on is what halved the served model's speed)."""
    if openmp_threads() is None:
        pytest.skip("torch loaded no libgomp here: a thread's OpenMP count cannot be read")
    code = textwrap.dedent(
        """
        import asyncio, json, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from recicl.modeling.threads import (
            ModelThread, apply_torch_threads, openmp_threads, threads_in_use,
        )

        async def main():
            apply_torch_threads("test", 2)
            with ThreadPoolExecutor(1) as pool:
                plain = pool.submit(openmp_threads).result()
            model = ModelThread(2)
            first = await model.run(threading.get_ident)
            again = await model.run(threading.get_ident)
            load = await model.run_apart(threading.get_ident)
            time.sleep(0.2)
            alive = [t.name for t in threading.enumerate() if t.name.startswith("recicl-load")]
            used = [model.threads_in_use, await model.run(threads_in_use)]
            return [plain, *used, first == again, load != first, alive]

        print(json.dumps(asyncio.run(main())))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 2, 2, True, True, []]
