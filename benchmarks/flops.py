"""FLOP and MFU arithmetic shared by the benchmarks: pure functions of a model config, unit-tested
on any machine, kept apart so that the serving and GPU benchmarks count FLOPs the same way.

* :func:`forward_flops` — a Llama/Qwen2-shaped forward pass: per-token projections and MLP
  plus QK^T and attention-times-V per attended (query, key) pair; the LM head is left out (it
  runs at the answer position only). :func:`sharing_flop_ideal` uses it for the best speedup
  prefix sharing can give a shape (``bench_serve.py``).
* :func:`lora_step_flops` — one LoRA training pass on a frozen base: the forward pass and the
  backward pass's input gradients (the frozen linear layers once more, attention twice more:
  dQ/dK and dP/dV), i.e. ``2 x linear + 3 x attention``; no weight gradients of the base (that
  would be the 6·N·T of full fine-tuning) and no recomputation.
* :func:`throughput` — tokens/s, MFU (those model FLOPs) and HFU (plus the forward pass that
  gradient checkpointing recomputes) over :func:`peak_bf16_tflops`, the dense-bf16 datasheet
  peak of a GPU named as CUDA names it (``gpu_smoke.py``).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

# Dense (no sparsity) bf16 tensor-core peak per GPU in TFLOPS, from NVIDIA's datasheets.
# Matched against the words of torch.cuda.get_device_name(); first match wins, so the more
# specific variants (PCIe, NVL) come first. GPUs without bf16 tensor cores (V100, T4) are absent.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("GB200",), 2500.0),
    (("B200",), 2250.0),
    (("B100",), 1750.0),
    (("GH200",), 989.0),
    (("H200", "NVL"), 835.0),
    (("H200",), 989.0),  # SXM
    (("H100", "NVL"), 835.0),
    (("H100", "PCIE"), 756.0),
    (("H100",), 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("H800", "PCIE"), 756.0),
    (("H800",), 989.0),
    (("H20",), 148.0),
    (("A100",), 312.0),  # SXM4 and PCIe, 40 and 80 GB
    (("A800",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("RTX", "4090"), 165.0),
    (("RTX", "6000", "ADA"), 364.0),
]


def forward_flops(config: Any, tokens: float, attended_pairs: float) -> float:
    """Multiply-adds x 2 of a Llama forward pass over ``tokens`` new tokens that attend to
    ``attended_pairs`` (query, key) pairs in all: the per-token projections and MLP plus
    QK^T and attention-times-V. The LM head is left out (it runs at the answer position only,
    once per candidate either way)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv_dim = config.num_key_value_heads * head_dim
    per_token = 2 * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter)
    per_pair = 2 * 2 * config.num_attention_heads * head_dim
    return config.num_hidden_layers * (tokens * per_token + attended_pairs * per_pair)


def sharing_flop_ideal(config: Any, n: int, prefix: int, suffix: float) -> float:
    """FLOPs of N full prompts over FLOPs of one prefix plus N suffixes on its cache."""
    full = prefix + suffix
    naive = forward_flops(config, n * full, n * full * (full + 1) / 2)
    shared = forward_flops(
        config,
        prefix + n * suffix,
        prefix * (prefix + 1) / 2 + n * (suffix * prefix + suffix * (suffix + 1) / 2),
    )
    return naive / shared


def lora_step_flops(config: Any, tokens: float, attended_pairs: float) -> float:
    """Model FLOPs of one LoRA training pass (frozen base) over ``tokens`` tokens attending to
    ``attended_pairs`` (query, key) pairs: forward + input-gradient backward, i.e. the linear
    layers twice and attention three times (see the module docstring)."""
    linear = forward_flops(config, tokens, 0)
    attention = forward_flops(config, 0, attended_pairs)
    return 2 * linear + 3 * attention


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOPS of one GPU named ``device_name`` (as CUDA names it), or None."""
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if all(word in words for word in pattern):
            return tflops
    return None


@dataclass
class Throughput:
    samples_per_s: float
    tokens_per_s: float
    step_seconds: float
    model_tflops_per_gpu: float
    mfu: float | None
    hfu: float | None


def throughput(
    config: Any,
    samples_per_s: float,
    lengths: list[int],
    *,
    world: int,
    samples_per_step: int,
    peak_tflops: float | None,
    recompute: bool,
) -> Throughput:
    """Tokens/s, MFU and HFU from a measured samples/s and the prompts' token lengths."""
    mean_tokens = statistics.fmean(lengths)
    mean_pairs = statistics.fmean(n * (n + 1) / 2 for n in lengths)
    per_sample = lora_step_flops(config, mean_tokens, mean_pairs)
    hardware = per_sample + (forward_flops(config, mean_tokens, mean_pairs) if recompute else 0)
    per_gpu = samples_per_s * per_sample / world
    mfu = hfu = None
    if peak_tflops:
        mfu = per_gpu / (peak_tflops * 1e12)
        hfu = samples_per_s * hardware / world / (peak_tflops * 1e12)
    return Throughput(
        samples_per_s=samples_per_s,
        tokens_per_s=samples_per_s * mean_tokens,
        step_seconds=samples_per_step / samples_per_s,
        model_tflops_per_gpu=per_gpu / 1e12,
        mfu=mfu,
        hfu=hfu,
    )
