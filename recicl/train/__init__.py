"""Training: Ray Train workers running DeepSpeed ZeRO-2/3 or DDP on ICL prompts.

``train(cfg)`` is the one entry point (CLI ``recicl train``, ``ray_jobs/train.py``); the DeepSpeed
config it uses comes from the pure ``build_deepspeed_config(train_cfg, world_size)``.
"""

from recicl.train.ds_config import build_deepspeed_config, use_bf16
from recicl.train.trainer import TrainError, TrainResult, same_base, train, warm_start_config

__all__ = [
    "TrainError",
    "TrainResult",
    "build_deepspeed_config",
    "same_base",
    "train",
    "use_bf16",
    "warm_start_config",
]
