"""Torch threads follow the CPUs a process holds (Ray alone leaves a num_cpus 0.5 replica one
thread), and model.num_threads overrides them."""

from __future__ import annotations

import os

import pytest
import torch

from recicl.config import ModelConfig
from recicl.modeling.threads import apply_torch_threads, torch_threads


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
