"""The pure parts of the GPU path check (benchmarks/gpu_smoke.py), unit-tested on any machine:
the model shapes (Qwen2.5-7B's, and a tiny one for the CPU dry run), the parameter count, the
no-GPU refusal, and the steady samples/s from the per-step rates training logs. The FLOP and MFU
arithmetic is :mod:`benchmarks.flops`, shared with the serving benchmark."""

from __future__ import annotations

import os
from typing import Any

# Qwen2.5-7B (config.json of Qwen/Qwen2.5-7B-Instruct), written out so nothing is downloaded.
QWEN25_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}
# The dry run's shape: the same architecture (GQA, q/k/v biases), a few hundred kilobytes.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}
SHAPES = {"qwen2.5-7b": QWEN25_7B, "tiny": TINY}

# ---------------------------------------------------------------------------------------------
# pure parts (unit-tested)


def gpu_refusal(device_count: int, torch_version: str, cuda_version: str | None) -> str | None:
    """Why this machine cannot run the GPU check (None when it can)."""
    if device_count > 0:
        return None
    build = f"built for CUDA {cuda_version}" if cuda_version else "a CPU-only build"
    return (
        f"gpu_smoke: no CUDA GPU is visible here (torch {torch_version}, {build}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
        "This check trains a 7B-shaped model with DeepSpeed ZeRO-3, bf16 and NCCL, one worker "
        "per GPU: run it on a GPU node. To exercise the same script path on CPU (tiny shape, "
        "gloo, fp32, ZeRO-3), pass --cpu-dry-run."
    )


def model_config(shape: str, vocab_size: int | None = None, **token_ids: int) -> Any:
    """The ``Qwen2Config`` of ``shape``; ``vocab_size`` for shapes without their own (tiny)."""
    from transformers import Qwen2Config

    fields: dict[str, Any] = dict(SHAPES[shape])
    fields.setdefault("vocab_size", vocab_size)
    if fields["vocab_size"] is None:
        raise ValueError(f"shape {shape!r} needs a vocab_size (the tokenizer's)")
    return Qwen2Config(**fields, **token_ids)


def parameter_count(config: Any) -> int:
    """Parameters of a Qwen2 causal LM by formula: embeddings, untied LM head, per layer q/k/v
    (with biases) and o projections, gate/up/down MLP and two RMSNorms, and the final norm."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_dim = config.num_attention_heads * head_dim
    kv_dim = config.num_key_value_heads * head_dim
    attention = hidden * q_dim + q_dim + 2 * (hidden * kv_dim + kv_dim) + q_dim * hidden
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return layers * per_layer + embeddings + hidden


def steady_rate(per_step: list[tuple[int, float]], warmup_steps: int) -> tuple[float, int]:
    """(samples/s, steps used) over the steps after ``warmup_steps``: every step carries the same
    number of samples, so the aggregate rate is the harmonic mean of the per-step rates."""
    rates = [rate for step, rate in sorted(per_step) if step > warmup_steps and rate > 0]
    if not rates:
        raise RuntimeError(
            f"no per-step throughput after {warmup_steps} warm-up steps; raise --steps"
        )
    return len(rates) / sum(1.0 / r for r in rates), len(rates)
