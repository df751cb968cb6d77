"""DeepSpeed (ZeRO-2/3) and DDP behind one small interface used by the training loop.

Both wrap the (peft) causal LM itself and call
:func:`recicl.modeling.answer_logits` on the *wrapper* (DDP module / DeepSpeed engine), so that
DDP's gradient hooks and ZeRO-3's parameter gathering run, while the Yes/No read-out stays in
:mod:`recicl.modeling`. Each strategy owns: forward, backward, optimizer step (with gradient
accumulation and clipping), stepping the LR schedule of :mod:`recicl.train.schedule`,
checkpoint save/load, and saving the trainable weights (LoRA adapter, or the whole model with
``model.lora.enabled: false``) as safetensors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recicl.config import ReciclConfig
from recicl.prompts import AnswerTokens
from recicl.train.ds_config import build_deepspeed_config, use_bf16
from recicl.train.schedule import build_lr_scheduler

if TYPE_CHECKING:
    from recicl.modeling.scoring import TrainingLogits

log = logging.getLogger(__name__)

DS_CHECKPOINT_DIR = "deepspeed"
DS_TAG = "state"
DDP_STATE_FILE = "ddp_state.pt"
ADAPTER_DIR = "adapter"


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def count_parameters(module: nn.Module) -> tuple[int, int, int]:
    """(total, trainable, largest layer) parameter counts; works on ZeRO-3 partitioned params."""
    seen: dict[int, int] = {}
    trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        n = int(getattr(p, "ds_numel", p.numel()))
        seen[id(p)] = n
        trainable += n if p.requires_grad else 0
    largest = 0
    for m in module.modules():
        largest = max(
            largest, sum(int(getattr(p, "ds_numel", p.numel())) for p in m.parameters(False))
        )
    return sum(seen.values()), trainable, largest


@runtime_checkable
class SavesPretrained(Protocol):
    """A Hugging Face (``PreTrainedModel``) or peft (``PeftModel``) model: both can write
    themselves as safetensors. (To a type checker a bare ``nn.Module`` attribute is a tensor.)"""

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None: ...


def save_pretrained_weights(model: nn.Module, output: Path) -> None:
    """LoRA adapter (``adapter_model.safetensors`` + config) for a peft model, else the full
    model's ``save_pretrained`` (safetensors). Call with gathered parameters under ZeRO-3."""
    if not isinstance(model, SavesPretrained):
        raise TypeError(f"{type(model).__name__} has no save_pretrained: not an HF/peft model")
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output), safe_serialization=True)


class Strategy(ABC):
    """What the training loop needs from a parallel strategy.

    Abstract so that a strategy missing one of the loop's operations fails when it is
    constructed, before any training, rather than mid-run at its first checkpoint or validation.
    """

    name = "base"

    def __init__(
        self,
        cfg: ReciclConfig,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        answer_tokens: AnswerTokens,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.answer_tokens = answer_tokens
        self.on_gpu = device.type == "cuda"
        self.bf16 = use_bf16(cfg.train, self.on_gpu)

    @abstractmethod
    def setup(self, total_steps: int) -> None:
        """Load the model, wrap it, build optimizer + LR schedule for ``total_steps`` steps."""

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The underlying (peft) causal LM, unwrapped."""

    def _logits(self, wrapped: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from recicl.modeling import answer_logits

        return answer_logits(wrapped, ids, mask, self.answer_tokens)

    def _training_logits(
        self,
        wrapped: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        demo_positions: Sequence[np.ndarray] | None,
    ) -> TrainingLogits:
        from recicl.modeling import training_logits

        return training_logits(wrapped, ids, mask, self.answer_tokens, demo_positions)

    @abstractmethod
    def train_micro_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_fn: Callable[[TrainingLogits], torch.Tensor],
        demo_positions: Sequence[np.ndarray] | None = None,
    ) -> tuple[float, bool]:
        """Forward + ``loss_fn(logits)`` + backward for one micro-batch; optimizer step at
        accumulation boundaries. ``demo_positions`` (per row) adds the demonstration answers'
        logits (:func:`recicl.modeling.training_logits`). Returns (loss value, whether an
        optimizer step was taken)."""

    @abstractmethod
    def eval_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, 2] answer logits without gradients (every rank calls, same number of times)."""

    @abstractmethod
    def current_lr(self) -> float:
        """The learning rate the next optimizer step will use (logged with that step)."""

    @abstractmethod
    def save_state(self, directory: Path, client_state: dict[str, Any]) -> None:
        """Optimizer/scheduler/trainable weights into ``directory`` (every rank calls)."""

    @abstractmethod
    def load_state(self, directory: Path) -> None:
        """Inverse of :meth:`save_state` (every rank calls)."""

    @abstractmethod
    def save_weights(self, directory: Path) -> None:
        """Trainable weights as safetensors (rank 0 writes; every rank calls)."""


def _load_lm(cfg: ReciclConfig) -> nn.Module:
    """The model to tune: the base with a fresh LoRA adapter, or, for a warm start
    (``train.init_from``, resolved by the driver to a version folder), the version's adapter
    loaded trainable."""
    from recicl.modeling import load_model
    from recicl.modeling.packaged import read_version_manifest

    adapter = None
    if cfg.train.init_from:
        manifest = read_version_manifest(cfg.train.init_from)
        assert manifest is not None, cfg.train.init_from  # checked on the driver
        adapter = Path(cfg.train.init_from) / manifest.adapter_dir
    return load_model(
        cfg.model,
        for_training=True,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        adapter=adapter,
    )


def _print_memory_estimate(lm: nn.Module, cfg: ReciclConfig, world_size: int) -> None:
    """DeepSpeed's own estimate of ZeRO model-state memory for this model and world size."""
    total, trainable, largest = count_parameters(lm)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or world_size
    nodes = max(1, world_size // max(1, local))
    print(
        f"[recicl] model: {total / 1e6:.2f}M params, {trainable / 1e6:.3f}M trainable "
        f"({100 * trainable / max(total, 1):.2f}%), largest layer {largest / 1e6:.2f}M; "
        f"DeepSpeed estimate below assumes every parameter is trained (upper bound with LoRA)",
        flush=True,
    )
    try:
        if cfg.train.zero_stage == 3:
            from deepspeed.runtime.zero.stage3 import (
                estimate_zero3_model_states_mem_needs_all_cold,
            )

            estimate_zero3_model_states_mem_needs_all_cold(
                total_params=total,
                largest_layer_params=largest,
                num_gpus_per_node=local,
                num_nodes=nodes,
            )
        else:
            from deepspeed.runtime.zero.stage_1_and_2 import (
                estimate_zero2_model_states_mem_needs_all_cold,
            )

            estimate_zero2_model_states_mem_needs_all_cold(
                total_params=total, num_gpus_per_node=local, num_nodes=nodes
            )
    except Exception as error:  # an estimate must never stop training
        print(f"[recicl] DeepSpeed memory estimate unavailable: {error}", flush=True)


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def setup(self, total_steps: int) -> None:
        import deepspeed

        if not self.on_gpu:
            # The CPU accelerator JIT-compiles a shared-memory comm op on first init (slow, see
            # docs/performance.md, and it needs a compiler); gloo does the same job for our sizes.
            # Verified on DeepSpeed 0.19: TorchBackend.__init__ calls the module-level
            # build_shm_op(), and a None op makes every collective fall back to torch.distributed.
            # (`import deepspeed.comm.torch as m` would bind the *torch* package: deepspeed.comm
            # has an attribute named torch.)
            import importlib

            ds_comm_torch: Any = importlib.import_module("deepspeed.comm.torch")
            ds_comm_torch.build_shm_op = lambda: None
        # Ray Train already initialised torch.distributed; DeepSpeed wraps that process group.
        deepspeed.init_distributed(
            dist_backend="nccl" if self.on_gpu else "gloo", dist_init_required=False
        )
        self.ds_config = build_deepspeed_config(self.cfg.train, self.world_size, on_gpu=self.on_gpu)
        self._hf_ds_config = None
        if self.cfg.train.zero_stage == 3:
            # Must exist (and stay referenced) before from_pretrained: weights then load straight
            # into ZeRO-3 partitions instead of one full copy per rank in host memory.
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        lm = _load_lm(self.cfg)
        if self.rank == 0:
            _print_memory_estimate(lm, self.cfg, self.world_size)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=lm,
            model_parameters=trainable_parameters(lm),
            config=self.ds_config,
            # DeepSpeed builds the scheduler around the optimizer it creates from the config
            lr_scheduler=functools.partial(
                build_lr_scheduler, total_steps=total_steps, tc=self.cfg.train
            ),
            dist_init_required=False,
        )

    @property
    def model(self) -> nn.Module:
        return self.engine.module

    def train_micro_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_fn: Callable[[TrainingLogits], torch.Tensor],
        demo_positions: Sequence[np.ndarray] | None = None,
    ) -> tuple[float, bool]:
        self.engine.train()
        before = self.engine.global_steps
        loss = loss_fn(
            self._training_logits(self.engine, input_ids, attention_mask, demo_positions)
        )
        self.engine.backward(loss)  # scales by 1/grad_accum itself
        self.engine.step()  # optimizer + LR scheduler only at accumulation boundaries
        return float(loss.detach()), self.engine.global_steps > before

    def eval_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.engine.eval()
        with torch.no_grad():
            return self._logits(self.engine, input_ids, attention_mask)

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save_state(self, directory: Path, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(
            str(directory / DS_CHECKPOINT_DIR),
            tag=DS_TAG,
            client_state=client_state,
            exclude_frozen_parameters=True,
        )

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory / DS_CHECKPOINT_DIR),
            tag=DS_TAG,
            load_module_strict=False,  # frozen base weights are not in the checkpoint
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}")

    def save_weights(self, directory: Path) -> None:
        import deepspeed

        lm = self.model
        gather = (
            # ZeRO-3 keeps only a 1/world shard of each parameter on a rank: without gathering,
            # the saved tensors would be empty (shape [0]): the adapter's, or with full
            # fine-tuning every weight (then this gathers the whole model on every rank)
            deepspeed.zero.GatheredParameters(trainable_parameters(lm), modifier_rank=None)
            if self.cfg.train.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if self.rank == 0:
                save_pretrained_weights(lm, directory)


class DDPStrategy(Strategy):
    name = "ddp"

    def setup(self, total_steps: int) -> None:
        import ray.train.torch

        lm = _load_lm(self.cfg)
        self.lm = lm
        self.wrapped = ray.train.torch.prepare_model(
            lm, parallel_strategy_kwargs={"find_unused_parameters": False}
        )
        self.params = trainable_parameters(lm)
        tc = self.cfg.train
        self.optimizer = torch.optim.AdamW(
            self.params, lr=tc.lr, betas=tc.adam_betas, eps=1e-8, weight_decay=tc.weight_decay
        )
        self.scheduler = build_lr_scheduler(self.optimizer, total_steps, tc)
        self.micro = 0

    @property
    def model(self) -> nn.Module:
        return self.lm

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_micro_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_fn: Callable[[TrainingLogits], torch.Tensor],
        demo_positions: Sequence[np.ndarray] | None = None,
    ) -> tuple[float, bool]:
        self.wrapped.train()
        boundary = (self.micro + 1) % self.cfg.train.grad_accum == 0
        # between boundaries, accumulate locally: DDP's all-reduce only on the last micro-batch
        sync = (
            self.wrapped.no_sync()
            if not boundary and isinstance(self.wrapped, DistributedDataParallel)
            else contextlib.nullcontext()
        )
        with sync:
            with self._autocast():
                logits = self._training_logits(
                    self.wrapped, input_ids, attention_mask, demo_positions
                )
            loss = loss_fn(logits)
            (loss / self.cfg.train.grad_accum).backward()
        self.micro += 1
        if boundary:
            if self.cfg.train.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), boundary

    def eval_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # the unwrapped module: DDP's forward may broadcast buffers (a collective)
        self.lm.eval()
        with torch.no_grad(), self._autocast():
            return self._logits(self.lm, input_ids, attention_mask)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.lm.named_parameters()}
        return {names[id(p)]: p.detach().cpu() for p in self.params}

    def save_state(self, directory: Path, client_state: dict[str, Any]) -> None:
        if self.rank == 0:
            torch.save(
                {
                    "trainable": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "micro": self.micro,
                    "client_state": client_state,
                },
                directory / DDP_STATE_FILE,
            )

    def load_state(self, directory: Path) -> None:
        # weights_only: tensors and plain containers only, so a tampered checkpoint cannot run
        # code when a run resumes from it (the state holds nothing else)
        state = torch.load(directory / DDP_STATE_FILE, map_location="cpu", weights_only=True)
        missing = set(self._trainable_state()) - set(state["trainable"])
        if missing:
            raise RuntimeError(f"checkpoint lacks trainable weights: {sorted(missing)[:5]}")
        result = self.lm.load_state_dict(state["trainable"], strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"unexpected keys in checkpoint: {result.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro = int(state["micro"])

    def save_weights(self, directory: Path) -> None:
        if self.rank == 0:
            save_pretrained_weights(self.model, directory)


def make_strategy(
    cfg: ReciclConfig,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    answer_tokens: AnswerTokens,
) -> Strategy:
    kind = {"deepspeed": DeepSpeedStrategy, "ddp": DDPStrategy}[cfg.train.strategy]
    return kind(cfg, rank=rank, world_size=world_size, device=device, answer_tokens=answer_tokens)


def describe(strategy: Strategy) -> str:
    """One line for logs/MLflow, e.g. 'deepspeed zero-3 bf16 offload'."""
    tc = strategy.cfg.train
    parts = [strategy.name]
    if strategy.name == "deepspeed":
        parts.append(f"zero-{tc.zero_stage}")
        if tc.offload_optimizer:
            parts.append("offload")
    parts.append("bf16" if strategy.bf16 else "fp32")
    return " ".join(parts)


def dump_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
