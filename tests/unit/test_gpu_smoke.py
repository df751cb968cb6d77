"""The pure parts of benchmarks/gpu_smoke.py: the 7B shape, FLOPs/MFU, the peak-FLOPs table and
the refusal on machines without a GPU (the run itself needs Ray and a GPU, or --cpu-dry-run)."""

from __future__ import annotations

import pytest

from benchmarks import gpu_smoke, gpu_smoke_model
from benchmarks.flops import forward_flops, lora_step_flops, peak_bf16_tflops, throughput

QWEN25_7B_PARAMS = 7_615_616_512  # Qwen/Qwen2.5-7B-Instruct's safetensors hold this many


def test_7b_shape_has_qwen25_7b_parameter_count():
    import torch
    from transformers import Qwen2ForCausalLM

    config = gpu_smoke_model.model_config(
        "qwen2.5-7b", bos_token_id=0, eos_token_id=1, pad_token_id=2
    )
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        3584,
        28,
        18944,
    )
    assert (config.num_attention_heads, config.num_key_value_heads) == (28, 4)
    assert gpu_smoke_model.parameter_count(config) == QWEN25_7B_PARAMS
    with torch.device("meta"):  # the real module tree, no memory
        model = Qwen2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == QWEN25_7B_PARAMS


def test_tiny_shape_formula_matches_the_module():
    import torch
    from transformers import Qwen2ForCausalLM

    config = gpu_smoke_model.model_config("tiny", vocab_size=600)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert gpu_smoke_model.parameter_count(config) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="vocab_size"):
        gpu_smoke_model.model_config("tiny")


def test_lora_step_flops_are_two_forwards_of_the_linears_and_three_of_attention():
    config = gpu_smoke_model.model_config("qwen2.5-7b")
    linear_weights = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)
    assert forward_flops(config, 1, 0) == 2 * linear_weights  # ~2 x 6.5B per token
    tokens, pairs = 1000, 1000 * 1001 / 2
    attention = forward_flops(config, 0, pairs)
    assert lora_step_flops(config, tokens, pairs) == pytest.approx(
        2 * forward_flops(config, tokens, 0) + 3 * attention
    )
    # a frozen-base LoRA step costs 2/3 of the 6·N·T of full fine-tuning (non-embedding N)
    per_token = lora_step_flops(config, 1, 0)
    assert per_token == pytest.approx(4 * linear_weights)


def test_throughput_and_mfu():
    config = gpu_smoke_model.model_config("qwen2.5-7b")
    lengths = [1000, 1000]
    numbers = throughput(
        config, 20.0, lengths, world=8, samples_per_step=128, peak_tflops=989.0, recompute=True
    )
    per_sample = lora_step_flops(config, 1000, 1000 * 1001 / 2)
    assert numbers.tokens_per_s == pytest.approx(20_000)
    assert numbers.step_seconds == pytest.approx(6.4)
    assert numbers.mfu == pytest.approx(20 * per_sample / 8 / 989e12)
    assert 1.0 < numbers.hfu / numbers.mfu < 1.5  # one recomputed forward of ~2/3 the step
    unknown = throughput(
        config, 20.0, lengths, world=8, samples_per_step=128, peak_tflops=None, recompute=False
    )
    assert unknown.mfu is None and unknown.hfu is None


def test_steady_rate_leaves_out_warm_up_and_averages_time_not_rates():
    per_step = [(1, 0.5), (2, 3.0), (3, 10.0), (4, 5.0)]
    rate, used = gpu_smoke_model.steady_rate(per_step, warmup_steps=2)
    assert used == 2 and rate == pytest.approx(2 / (1 / 10 + 1 / 5))
    with pytest.raises(RuntimeError, match="raise --steps"):
        gpu_smoke_model.steady_rate(per_step, warmup_steps=4)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA A10", 125.0),  # not A100
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),  # not L4
        ("NVIDIA L40", 181.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("Tesla V100-SXM2-32GB", None),  # no bf16 tensor cores
        ("Tesla T4", None),
        ("none", None),
    ],
)
def test_peak_lookup(name, tflops):
    assert peak_bf16_tflops(name) == tflops


def test_refuses_without_a_gpu_and_names_the_dry_run(monkeypatch, capsys):
    import torch

    assert gpu_smoke_model.gpu_refusal(4, "2.13.0", "12.8") is None
    message = gpu_smoke_model.gpu_refusal(0, "2.13.0+cpu", None)
    assert message and "no CUDA GPU" in message and "CPU-only build" in message
    assert "--cpu-dry-run" in message

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert gpu_smoke.main([]) == 2  # before Ray or any model is touched
    assert "--cpu-dry-run" in capsys.readouterr().err


def test_defaults_follow_the_mode():
    gpu = gpu_smoke.parse_args([])
    assert (gpu.shape, gpu.steps, gpu.batch_size, gpu.grad_accum) == ("qwen2.5-7b", 8, 4, 4)
    dry = gpu_smoke.parse_args(["--cpu-dry-run"])
    assert (dry.shape, dry.steps, dry.max_length) == ("tiny", 4, 256)
    with pytest.raises(SystemExit):
        gpu_smoke.parse_args(["--steps", "2"])
