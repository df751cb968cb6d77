"""Training: Ray Train workers running DeepSpeed ZeRO-2/3 or DDP on ICL prompts.

``train(cfg)`` is the one entry point (CLI ``recicl train``, ``ray_jobs/train.py``); the DeepSpeed
config it uses comes from the pure ``build_deepspeed_config(train_cfg, world_size)``.
"""

from recicl.train.ds_config import build_deepspeed_config, use_bf16
from recicl.train.trainer import TrainError, TrainResult, train

__all__ = ["TrainError", "TrainResult", "build_deepspeed_config", "train", "use_bf16"]
