"""The FLOP ideal that bench_serve reports next to the token-count ideal of prefix sharing."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from benchmarks.flops import forward_flops, sharing_flop_ideal


def llama(hidden: int, inter: int, heads: int = 4) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        num_hidden_layers=2,
    )


def test_forward_flops_counts_projections_mlp_and_attention():
    config = llama(64, 128)
    # per token per layer: 2 x (q, o: 64x64 each; k, v: 64x64 each; gate/up/down: 3 x 64x128)
    per_token = 2 * (4 * 64 * 64 + 3 * 64 * 128)
    assert forward_flops(config, 10, 0) == 2 * 10 * per_token
    assert forward_flops(config, 0, 7) == 2 * 7 * 4 * 64  # QK^T and AV: 2 x 2 x hidden each


@pytest.mark.parametrize("n", [1, 5, 20, 100])
def test_flop_ideal_is_below_the_token_ideal(n):
    prefix, suffix = 540, 17
    token_ideal = n * (prefix + suffix) / (prefix + n * suffix)
    tiny = sharing_flop_ideal(llama(64, 128), n, prefix, suffix)
    wide = sharing_flop_ideal(llama(4096, 11008, heads=32), n, prefix, suffix)
    if n == 1:
        assert tiny == pytest.approx(1.0) and wide == pytest.approx(1.0)
        return
    # suffix tokens still attend over the whole prefix: sharing saves less than tokens suggest,
    # and less the more attention weighs against the per-token work (a narrow model)
    assert tiny < wide < token_ideal
    assert wide > 0.9 * token_ideal  # at 7B width the token count is nearly the whole story
