"""The DeepSpeed config JSON, generated from :class:`~recicl.config.TrainConfig` (pure, no I/O).

Choices (each verified on the pinned DeepSpeed 0.19):

* The optimizer lives in the DS config (AdamW). ``torch_adam: true`` makes DeepSpeed use
  ``torch.optim.AdamW`` instead of compiling FusedAdam / DeepSpeedCPUAdam at start-up (no
  compiler or CUDA toolkit needed; with LoRA the optimizer step is a negligible share of the
  time). The only exception is ZeRO-Offload on GPU machines, where DeepSpeed's vectorised
  ``DeepSpeedCPUAdam`` is several times faster than torch on the host.
* ``zero_force_ds_cpu_optimizer: false`` whenever torch's AdamW may meet an offloaded optimizer
  (otherwise DeepSpeed refuses it).
* ``train_batch_size`` = micro-batch x accumulation x ``world_size``: DeepSpeed asserts it
  against the world size it actually sees, so a config built for the wrong cluster fails fast.
* The LR schedule is *not* in here: the training loop passes one LambdaLR (linear warm-up, linear
  decay) to DeepSpeed and to DDP alike, so both strategies follow the same curve.
* bf16: ``auto`` means "on GPU only" (bf16 matmuls are slow on most CPUs).
"""

from __future__ import annotations

from typing import Any

from recicl.config import TrainConfig


def use_bf16(train_cfg: TrainConfig, on_gpu: bool | None = None) -> bool:
    """Resolve ``bf16: auto`` (GPU only) and ``if-native`` (where the device computes bf16
    natively, :func:`recicl.modeling.hardware.native_bf16`) against the device kind
    (``on_gpu`` defaults to ``use_gpu``)."""
    on_gpu = train_cfg.use_gpu if on_gpu is None else on_gpu
    if train_cfg.bf16 == "auto":
        return on_gpu
    if train_cfg.bf16 == "if-native":
        from recicl.modeling.hardware import native_bf16

        return native_bf16(on_gpu)
    return bool(train_cfg.bf16)


def build_deepspeed_config(
    train_cfg: TrainConfig,
    world_size: int,
    *,
    on_gpu: bool | None = None,
) -> dict[str, Any]:
    """DeepSpeed config for ``train_cfg`` on ``world_size`` data-parallel ranks.

    ``on_gpu`` defaults to ``train_cfg.use_gpu``; it picks bf16 (when ``auto``), bucket sizes,
    comm overlap and the optimizer implementation.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    on_gpu = train_cfg.use_gpu if on_gpu is None else on_gpu
    bf16 = use_bf16(train_cfg, on_gpu)
    offload = train_cfg.offload_optimizer
    torch_adam = not (on_gpu and offload)

    optimizer_params: dict[str, Any] = {
        "lr": train_cfg.lr,
        "betas": list(train_cfg.adam_betas),
        "eps": 1e-8,
        "weight_decay": train_cfg.weight_decay,
    }
    if torch_adam:
        optimizer_params["torch_adam"] = True

    zero: dict[str, Any] = {
        "stage": train_cfg.zero_stage,
        "overlap_comm": bool(on_gpu),
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 50_000_000 if on_gpu else 5_000_000,
    }
    if train_cfg.zero_stage == 2:
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = 50_000_000 if on_gpu else 5_000_000
    else:
        zero.update(
            {
                "stage3_prefetch_bucket_size": 50_000_000 if on_gpu else 5_000_000,
                # Tensors below the threshold stay whole on every rank. On CPU (tests, demos with
                # tiny models) partition everything, so that small LoRA tensors go through the
                # same sharding/gathering paths as a 7B model's do on GPUs.
                "stage3_param_persistence_threshold": 100_000 if on_gpu else 0,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                # weights are saved by gathering just the trainable params (GatheredParameters):
                # a LoRA adapter, never the whole 16-bit model; all of them with full fine-tuning
                "stage3_gather_16bit_weights_on_model_save": False,
            }
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(on_gpu)}

    config: dict[str, Any] = {
        "train_batch_size": train_cfg.batch_size * train_cfg.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": train_cfg.batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,  # progress is logged by recicl, not by DeepSpeed
        "wall_clock_breakdown": False,
    }
    if train_cfg.max_grad_norm is not None:
        config["gradient_clipping"] = train_cfg.max_grad_norm
    if torch_adam:
        config["zero_force_ds_cpu_optimizer"] = False
    return config
