"""The per-worker training loop run by Ray Train (``train_loop_per_worker``).

Flow on every rank: load tokenizer → strategy setup (model, DeepSpeed/DDP, optimizer, LR) →
restore the latest checkpoint if Ray gives one → epochs of length-grouped micro-batches from the
rank's dataset shard → validation AUC at each epoch end → checkpoints via ``ray.train.report``.
Rank 0 also writes per-step metrics to MLflow (Ray Train V2 keeps only metrics attached to
checkpoints, so step curves live in MLflow).

Lockstep: every collective (gradient all-reduce, ZeRO-3 parameter gathers, ``report``) needs all
ranks, so before each micro-batch the ranks agree (one tiny all-reduce) on whether *all* of them
still have data; validation runs until *every* rank is done, a rank without data forwarding a
one-token dummy batch whose output is discarded.

Test-only fault hook: with ``RECICL_FAULT_AT_STEP=N`` (and ``RECICL_FAULT_MARKER=<file>``) rank 0
exits hard after optimizer step N (``RECICL_FAULT_DELAY_S`` later, default 5 s), once: the marker
file records that the fault happened, so the restarted attempt runs through.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recicl.config import ReciclConfig

log = logging.getLogger(__name__)

FAULT_STEP_ENV = "RECICL_FAULT_AT_STEP"
FAULT_MARKER_ENV = "RECICL_FAULT_MARKER"
FAULT_DELAY_ENV = "RECICL_FAULT_DELAY_S"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_DATASET, VAL_DATASET = "train", "val"


@dataclass
class TrainPlan:
    """What the driver computed for the workers (same on every rank)."""

    total_steps: int
    steps_per_epoch: int
    micro_batches_per_epoch: int  # per rank, a multiple of grad_accum
    train_rows: int
    val_rows: int
    tracking_uri: str | None
    run_id: str | None
    run_name: str


@dataclass
class TrainerState:
    """Progress saved in every checkpoint (rank 0's copy is authoritative)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    micro_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0  # per rank
    best_val_auc: float | None = None
    last_val_auc: float | None = None


def _all_reduce(value: float, op: str, device: Any) -> float:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    reduce_op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op]
    dist.all_reduce(tensor, op=reduce_op)
    return float(tensor.item())


def _all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _MetricsLogger:
    """Rank-0 MLflow writer: buffers ``(key, value, step)`` rows and flushes them in batches."""

    def __init__(self, plan: TrainPlan, enabled: bool) -> None:
        self.enabled = enabled and plan.tracking_uri is not None and plan.run_id is not None
        self.plan = plan
        self.rows: list[tuple[str, float, int]] = []

    def add(self, step: int, **metrics: float | None) -> None:
        if self.enabled:
            self.rows.extend((k, float(v), step) for k, v in metrics.items() if v is not None)

    def flush(self) -> None:
        if not (self.enabled and self.rows):
            return
        from recicl.registry import log_metrics

        try:
            assert self.plan.tracking_uri and self.plan.run_id
            log_metrics(self.plan.tracking_uri, self.plan.run_id, self.rows)
            self.rows = []
        except Exception as error:  # metrics must not kill a multi-hour run
            log.warning("MLflow logging failed (%s); keeping %d rows", error, len(self.rows))

    def tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from recicl.registry import client

        try:
            assert self.plan.tracking_uri and self.plan.run_id
            mlc = client(self.plan.tracking_uri)
            for key, value in tags.items():
                mlc.set_tag(self.plan.run_id, key, value)
        except Exception as error:
            log.warning("MLflow tagging failed: %s", error)


def _system_info(world_size: int, strategy_line: str) -> dict[str, str]:
    import deepspeed
    import ray
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "sys.hostname": platform.node(),
        "sys.cpus": str(os.cpu_count()),
        "sys.gpu": gpu,
        "sys.world_size": str(world_size),
        "sys.strategy": strategy_line,
        "sys.python": platform.python_version(),
        "sys.torch": torch.__version__,
        "sys.deepspeed": deepspeed.__version__,
        "sys.transformers": transformers.__version__,
        "sys.ray": ray.__version__,
    }


def _maybe_fault(step: int, rank: int, run_name: str) -> None:
    """Test hook: die hard once at optimizer step N (see module docstring)."""
    target = os.environ.get(FAULT_STEP_ENV)
    if not target or rank != 0 or step != int(target):
        return
    marker = Path(
        os.environ.get(FAULT_MARKER_ENV) or Path(tempfile.gettempdir()) / f"recicl-fault-{run_name}"
    )
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fault injected at step {step}\n")
    # Ray Train registers a reported checkpoint only when its controller next polls the workers
    # (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s): a worker dying right after `report` can take
    # that checkpoint with it. Wait past one poll, as a crash some time after a checkpoint would.
    delay = float(os.environ.get(FAULT_DELAY_ENV, "5"))
    print(f"[recicl] {FAULT_STEP_ENV}: killing rank 0 at step {step} in {delay:g}s", flush=True)
    time.sleep(delay)
    os._exit(17)


def _chunks(shard: Any, rows: int) -> Iterator[dict[str, np.ndarray]]:
    return shard.iter_batches(
        batch_size=rows, batch_format="numpy", prefetch_batches=2, drop_last=False
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` = {"cfg": ReciclConfig dump, "plan": TrainPlan dump}."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from recicl.modeling import answer_token_ids, load_tokenizer
    from recicl.train.batching import PaddingStats, group_by_length, pad_batch
    from recicl.train.strategies import ADAPTER_DIR, describe, dump_json, make_strategy

    cfg = ReciclConfig.model_validate(config["cfg"])
    plan = TrainPlan(**config["plan"])
    tc = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(tc.seed)  # same LoRA init on every rank (DDP/DeepSpeed also broadcast)
    np.random.seed(tc.seed + rank)

    tokenizer = load_tokenizer(cfg.model)
    tokens = answer_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id
    strategy = make_strategy(cfg, rank=rank, world_size=world, device=device, answer_tokens=tokens)
    setup_started = time.perf_counter()
    strategy.setup(plan.total_steps)
    setup_seconds = time.perf_counter() - setup_started

    state = TrainerState()
    resumed_from: int | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure, or a rerun of the same run name
        with checkpoint.as_directory() as directory:
            strategy.load_state(Path(directory))
            state = TrainerState(**json.loads((Path(directory) / TRAINER_STATE_FILE).read_text()))
        resumed_from = state.step
        if rank == 0:
            print(f"[recicl] resumed from checkpoint at step {state.step}", flush=True)

    logger = _MetricsLogger(plan, enabled=rank == 0)
    if rank == 0:
        logger.tags(_system_info(world, describe(strategy)))
        logger.add(state.step, setup_seconds=setup_seconds)
        if resumed_from is not None:
            logger.add(state.step, resumed_from_step=resumed_from)
        logger.flush()

    demo_weight = tc.demo_loss_weight
    weights = None
    if tc.class_weights is not None:
        weights = torch.tensor(tc.class_weights, dtype=torch.float32, device=device)

    def to_device(batch: dict[str, np.ndarray]) -> tuple[Any, Any, Any]:
        ids, mask = pad_batch(batch["input_ids"], pad_id)
        return (
            torch.from_numpy(ids).to(device),
            torch.from_numpy(mask).to(device),
            torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)).to(device),
        )

    eval_batch = tc.eval_batch_size or 2 * tc.batch_size
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    val_shard = ray.train.get_dataset_shard(VAL_DATASET) if plan.val_rows else None

    def validate() -> dict[str, float]:
        from sklearn.metrics import log_loss, roc_auc_score

        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        iterator = iter(
            group_by_length(
                _chunks(val_shard, eval_batch * tc.group_buffer_batches),
                eval_batch,
                seed=(tc.seed, 0),
            )
        )
        dummy = (
            torch.full((1, 1), pad_id, dtype=torch.long, device=device),
            torch.ones((1, 1), dtype=torch.long, device=device),
        )
        while True:
            batch = next(iterator, None)
            if _all_reduce(float(batch is not None), "max", device) == 0:
                break
            if batch is None:  # keep ZeRO-3 gathers in lockstep with ranks that have data
                strategy.eval_forward(*dummy)
                continue
            ids, mask, label = to_device(batch)
            logits = strategy.eval_forward(ids, mask)
            scores.append(torch.softmax(logits.float(), -1)[:, 1].cpu().numpy())
            labels.append(label.cpu().numpy())
        parts = _all_gather(
            (
                np.concatenate(scores) if scores else np.zeros(0),
                np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
            )
        )
        all_scores = np.concatenate([p[0] for p in parts])
        all_labels = np.concatenate([p[1] for p in parts])
        out = {"val_samples": float(len(all_labels))}
        if len(np.unique(all_labels)) == 2:
            out["val_auc"] = float(roc_auc_score(all_labels, all_scores))
            out["val_logloss"] = float(log_loss(all_labels, np.clip(all_scores, 1e-7, 1 - 1e-7)))
        return out

    def save_and_report(metrics: dict[str, Any]) -> None:
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory(prefix="recicl-ckpt-") as tmp:
            directory = Path(tmp)
            strategy.save_state(directory, client_state={"recicl_step": state.step})
            strategy.save_weights(directory / ADAPTER_DIR)
            if rank == 0:
                dump_json(directory / TRAINER_STATE_FILE, asdict(state))
            logger.flush()
            ray.train.report(
                {**metrics, "step": state.step, "epoch": state.epoch},
                checkpoint=Checkpoint.from_directory(str(directory)),
                checkpoint_dir_name=f"checkpoint_step{state.step:07d}",
            )

    limit = plan.micro_batches_per_epoch
    padding = PaddingStats()
    window_loss: list[float] = []
    step_started = time.perf_counter()
    step_samples = 0
    last_reported_step = state.step if resumed_from is not None else -1
    done = state.step >= plan.total_steps
    while not done:
        padding = PaddingStats()
        iterator = iter(
            group_by_length(
                _chunks(train_shard, tc.batch_size * tc.group_buffer_batches),
                tc.batch_size,
                seed=(tc.seed, state.epoch + 1),
                length_grouping=tc.length_grouping,
            )
        )
        for _ in range(state.micro_in_epoch):  # resuming mid-epoch: skip consumed batches
            if next(iterator, None) is None:
                break
        exhausted = False
        while state.micro_in_epoch < limit:
            batch = next(iterator, None)
            if _all_reduce(float(batch is not None), "min", device) == 0:
                exhausted = True
                break
            assert batch is not None
            padding.add(np.asarray(batch["length"]))
            ids, mask, label = to_device(batch)

            def loss_fn(logits: Any, label: Any = label) -> Any:
                loss = F.cross_entropy(logits.query, label, weight=weights)
                if demo_weight and len(logits.demo_labels):
                    demo = F.cross_entropy(logits.demos, logits.demo_labels, weight=weights)
                    loss = loss + demo_weight * demo
                return loss

            lr = strategy.current_lr()  # the LR this micro-batch's step will use
            loss, stepped = strategy.train_micro_batch(
                ids, mask, loss_fn, list(batch["demo_answers"]) if demo_weight else None
            )
            window_loss.append(loss)
            state.micro_in_epoch += 1
            state.samples_seen += len(label)
            step_samples += len(label)
            if not stepped:
                continue
            state.step += 1
            mean_loss = _all_reduce(float(np.mean(window_loss)), "sum", device) / world
            window_loss = []
            if rank == 0 and state.step % tc.log_every_steps == 0:
                seconds = time.perf_counter() - step_started
                rate = step_samples * world / max(seconds, 1e-9)
                logger.add(
                    state.step,
                    loss=mean_loss,
                    lr=lr,
                    epoch=state.epoch + state.micro_in_epoch / max(limit, 1),
                    padding_fraction=padding.padding_fraction,
                    samples_per_second=rate,
                )
                # a console line too: a real LLM on CPUs takes minutes between checkpoints
                print(
                    f"[recicl] step {state.step}/{plan.total_steps} loss {mean_loss:.4f} "
                    f"lr {lr:.2e} {rate:.2f} samples/s",
                    flush=True,
                )
                if len(logger.rows) >= 50:
                    logger.flush()
            step_started, step_samples = time.perf_counter(), 0
            _maybe_fault(state.step, rank, plan.run_name)
            if state.step >= plan.total_steps:
                done = True
                break
            every = tc.checkpoint_every_steps
            # (at the epoch's last micro-batch the epoch-end report follows anyway)
            if every and state.step % every == 0 and state.micro_in_epoch < limit:
                save_and_report({"loss": mean_loss})
                last_reported_step = state.step
        if state.micro_in_epoch == 0:  # not one batch this epoch: fail instead of spinning
            raise RuntimeError(
                f"epoch {state.epoch}: no training batch reached rank {rank}; is the shard empty?"
            )
        if not done:  # drain the few leftover rows so all ranks start the next epoch together
            for _ in iterator:
                pass
        if exhausted and rank == 0 and state.micro_in_epoch < limit:
            log.warning(
                "epoch %d ended after %d of %d micro-batches (a shard ran dry)",
                state.epoch,
                state.micro_in_epoch,
                limit,
            )
        epoch_end = not done or state.micro_in_epoch >= limit
        metrics: dict[str, Any] = {"padding_fraction": padding.padding_fraction}
        window_loss = []  # micro-batches of an incomplete accumulation (shard ran dry)
        if val_shard is not None:
            metrics.update(validate())
            if "val_auc" in metrics:
                state.last_val_auc = metrics["val_auc"]
                state.best_val_auc = max(state.best_val_auc or 0.0, metrics["val_auc"])
        if rank == 0:
            logger.add(
                state.step,
                epoch_padding_fraction=metrics["padding_fraction"],
                **{k: v for k, v in metrics.items() if k.startswith("val_")},
            )
        if epoch_end:
            state.epoch += 1
            state.micro_in_epoch = 0
        if state.step != last_reported_step:
            save_and_report(metrics)
            last_reported_step = state.step

    if last_reported_step != state.step:  # resumed at the very end: report once more
        save_and_report({})
    logger.flush()
