"""What one Ray Train worker does, phase by phase: :class:`TrainRecipe`.

``run()`` = :meth:`~TrainRecipe.setup` (tokenizer, strategy: model, DeepSpeed/DDP, optimizer, LR
schedule) → :meth:`~TrainRecipe.resume` (the latest checkpoint, if Ray gives one) → per epoch
:meth:`~TrainRecipe.train_epoch` (length-grouped micro-batches from the rank's dataset shard,
then :meth:`~TrainRecipe.validate` and :meth:`~TrainRecipe.save_checkpoint` at the epoch's end).
The objective is :class:`recicl.train.loss.AnswerLoss`, the LR schedule
:mod:`recicl.train.schedule`, the step curves :class:`recicl.train.tracking.MetricsLogger`
(rank 0 only).

Lockstep: every collective (gradient all-reduce, ZeRO-3 parameter gathers, ``report``) needs all
ranks, so before each micro-batch the ranks agree (one tiny all-reduce) on whether *all* of them
still have data; validation runs until *every* rank is done, a rank without data forwarding a
one-token dummy batch whose output is discarded.

Resume: a checkpoint holds the strategy state (weights, optimizer, scheduler) and the
:class:`~recicl.train.contract.TrainerState`; the epoch's batches come in the same order on every
attempt (seeded by epoch), so skipping the ``micro_in_epoch`` already consumed continues exactly
where the checkpoint was taken.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from recicl.config import ReciclConfig
from recicl.modeling import load_tokenizer
from recicl.modeling.scoring import TrainingLogits
from recicl.modeling.threads import apply_torch_threads
from recicl.train.batching import PaddingStats, group_by_length, pad_batch
from recicl.train.contract import (
    TRAIN_DATASET,
    TRAINER_STATE_FILE,
    VAL_DATASET,
    TrainerState,
    TrainPlan,
    maybe_fault,
)
from recicl.train.loss import AnswerLoss, StageObjective, anchor_penalty, consistency_divergence
from recicl.train.schedule import stage_starts
from recicl.train.sources import answer_tokens
from recicl.train.strategies import (
    ADAPTER_DIR,
    Strategy,
    describe,
    dump_json,
    make_strategy,
    trainable_parameters,
)
from recicl.train.tracking import MetricsLogger, MLflowSink

log = logging.getLogger(__name__)
#: Validation batches between two progress lines in the job's log.
_VAL_LOG_EVERY = 20
#: Weights a stage's anchor penalty measures against, in checkpoints taken during that stage.
ANCHOR_FILE = "anchor.pt"

Batch = dict[str, np.ndarray]
_REDUCE_OPS = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(value: float, op: str, device: torch.device) -> float:
    """``value`` reduced over the ranks with ``op`` (min/max/sum); itself on a single rank."""
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=_REDUCE_OPS[op])
    return float(tensor.item())


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list on a single rank)."""
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def system_info(world_size: int, strategy_line: str) -> dict[str, str]:
    """Run tags describing the machine and library versions (rank 0's view)."""
    import deepspeed
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


def _chunks(shard: Any, rows: int) -> Iterator[Batch]:
    """Windows of ``rows`` rows from a Ray dataset shard (the input of length grouping)."""
    return shard.iter_batches(
        batch_size=rows, batch_format="numpy", prefetch_batches=2, drop_last=False
    )


class TrainRecipe:
    """One worker's training run; every rank runs the same phases in the same order."""

    def __init__(self, cfg: ReciclConfig, plan: TrainPlan) -> None:
        self.cfg = cfg
        self.plan = plan
        self.tc = cfg.train
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.state = TrainerState()
        self.done = False  # the run's last optimizer step is taken
        self.last_reported_step = -1  # step of the latest checkpoint reported (or resumed)
        self.window_loss: list[float] = []  # micro-batch losses of the current optimizer step
        self.window_terms: dict[str, list[float]] = {}  # the loss's parts, the same micro-batches
        self.objectives = StageObjective.of(self.tc)
        self.stage_starts = stage_starts(self.tc, plan.total_steps)
        # (stage index, the tuned weights when it began) while a stage with an anchor runs
        self.anchor: tuple[int, list[torch.Tensor]] | None = None
        self.step_started = time.perf_counter()
        self.step_samples = 0
        self.eval_batch = self.tc.eval_batch_size or 2 * self.tc.batch_size

    # -- phases ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Setup, resume, epochs until the plan's last step, and a checkpoint for the final
        state if no report carried it yet."""
        setup_seconds = self.setup()
        resumed = self.resume()
        tags = None
        if self.tracker.enabled:
            tags = {
                **system_info(self.world, describe(self.strategy)),
                "sys.torch_threads": str(self.threads),
            }
        self.tracker.start_attempt(
            self.state.step, setup_seconds=setup_seconds, resumed=resumed, tags=tags
        )
        self.done = self.state.step >= self.plan.total_steps
        while not self.done:
            self.train_epoch()
        if self.last_reported_step != self.state.step:  # resumed at the very end: report again
            self.save_checkpoint({})
        self.tracker.flush()

    def setup(self) -> float:
        """Seeds, tokenizer, strategy (model, optimizer, LR schedule), loss, data shards, metric
        logger. Returns the seconds the strategy's setup took (model load + wrapping)."""
        tc = self.tc
        self.threads = apply_torch_threads(f"train worker {self.rank}", self.cfg.model.num_threads)
        torch.manual_seed(tc.seed)  # same LoRA init on every rank (DDP/DeepSpeed also broadcast)
        np.random.seed(tc.seed + self.rank)
        tokenizer = load_tokenizer(self.cfg.model)
        self.pad_id: int = tokenizer.pad_token_id
        self.strategy: Strategy = make_strategy(
            self.cfg,
            rank=self.rank,
            world_size=self.world,
            device=self.device,
            answer_tokens=answer_tokens(tc, tokenizer),  # the source's (instruction template)
        )
        started = time.perf_counter()
        self.strategy.setup(self.plan.total_steps)
        setup_seconds = time.perf_counter() - started
        self.loss = AnswerLoss.from_config(tc, self.device)
        self.train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
        self.val_shard = ray.train.get_dataset_shard(VAL_DATASET) if self.plan.val_rows else None
        sink = None
        if self.rank == 0 and self.plan.tracking_uri and self.plan.run_id:
            sink = MLflowSink(self.plan.tracking_uri, self.plan.run_id)
        self.tracker = MetricsLogger(sink, every_steps=tc.log_every_steps)
        return setup_seconds

    def resume(self) -> bool:
        """Restore the latest checkpoint when Ray gives one (a restart after a failure, or a rerun
        of the same run name). Returns whether it did."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return False
        with checkpoint.as_directory() as directory:
            self.strategy.load_state(Path(directory))
            saved = json.loads((Path(directory) / TRAINER_STATE_FILE).read_text())
            anchor_file = Path(directory) / ANCHOR_FILE
            if anchor_file.exists():
                held = torch.load(anchor_file, map_location="cpu", weights_only=True)
                tensors = [held["tensors"][name].to(self.device) for name in self._tuned_names()]
                self.anchor = (int(held["stage"]), tensors)
        self.state = TrainerState(**saved)
        self.last_reported_step = self.state.step
        if self.rank == 0:
            print(f"[recicl] resumed from checkpoint at step {self.state.step}", flush=True)
        return True

    def train_epoch(self) -> None:
        """The current epoch's remaining micro-batches (all of them unless resumed mid-epoch),
        then its validation and checkpoint. Stops early at the run's last optimizer step."""
        limit = self.plan.micro_batches_per_epoch
        padding = PaddingStats()
        batches = self._epoch_batches()
        exhausted = False
        while self.state.micro_in_epoch < limit:
            batch = next(batches, None)
            if all_reduce(float(batch is not None), "min", self.device) == 0:
                exhausted = True  # a rank ran dry: no rank may step alone
                break
            assert batch is not None
            self._train_micro_batch(batch, padding)
            if self.done:
                break
        if self.state.micro_in_epoch == 0:  # not one batch this epoch: fail instead of spinning
            raise RuntimeError(
                f"epoch {self.state.epoch}: no training batch reached rank {self.rank}; "
                "is the shard empty?"
            )
        if not self.done:  # drain the few leftover rows so all ranks start the next epoch together
            for _ in batches:
                pass
        if exhausted and self.rank == 0 and self.state.micro_in_epoch < limit:
            log.warning(
                "epoch %d ended after %d of %d micro-batches (a shard ran dry)",
                self.state.epoch,
                self.state.micro_in_epoch,
                limit,
            )
        epoch_complete = not self.done or self.state.micro_in_epoch >= limit
        metrics: dict[str, Any] = {"padding_fraction": padding.padding_fraction}
        # micro-batches of an incomplete accumulation (shard ran dry)
        self.window_loss, self.window_terms = [], {}
        if self.val_shard is not None:
            metrics.update(self.validate())
        self.tracker.add(
            self.state.step,
            epoch_padding_fraction=metrics["padding_fraction"],
            **{k: v for k, v in metrics.items() if k.startswith("val_")},
        )
        if epoch_complete:
            self.state.epoch += 1
            self.state.micro_in_epoch = 0
        if self.state.step != self.last_reported_step:
            self.save_checkpoint(metrics)

    def validate(self) -> dict[str, float]:
        """AUC and log-loss over the validation split (train.max_val_samples of it; all ranks'
        rows gathered), with a progress line every few batches; records the last and best AUC
        in the trainer state."""
        from sklearn.metrics import log_loss, roc_auc_score

        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        batches = iter(
            group_by_length(
                _chunks(self.val_shard, self.eval_batch * self.tc.group_buffer_batches),
                self.eval_batch,
                seed=(self.tc.seed, 0),
            )
        )
        dummy = (
            torch.full((1, 1), self.pad_id, dtype=torch.long, device=self.device),
            torch.ones((1, 1), dtype=torch.long, device=self.device),
        )
        while True:
            batch = next(batches, None)
            if all_reduce(float(batch is not None), "max", self.device) == 0:
                break
            if batch is None:  # keep ZeRO-3 gathers in lockstep with ranks that have data
                self.strategy.eval_forward(*dummy)
                continue
            ids, mask, label = self._to_device(batch)
            logits = self.strategy.eval_forward(ids, mask)
            scores.append(torch.softmax(logits.float(), -1)[:, 1].cpu().numpy())
            labels.append(label.cpu().numpy())
            if self.rank == 0 and len(labels) % _VAL_LOG_EVERY == 0:  # minutes with a real LLM
                share = -(-self.plan.val_rows // self.world)
                done = sum(len(part) for part in labels)
                print(f"[recicl] validation: {done} of ~{share} samples on rank 0", flush=True)
        parts = all_gather(
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
            self.state.last_val_auc = out["val_auc"]
            self.state.best_val_auc = max(self.state.best_val_auc or 0.0, out["val_auc"])
        return out

    def save_checkpoint(self, metrics: dict[str, Any]) -> None:
        """Strategy state, adapter and trainer state into a Ray Train checkpoint, reported with
        ``metrics`` (every rank calls; each writes its own shard of the strategy state)."""
        with tempfile.TemporaryDirectory(prefix="recicl-ckpt-") as tmp:
            directory = Path(tmp)
            self.strategy.save_state(directory, client_state={"recicl_step": self.state.step})
            self.strategy.save_weights(directory / ADAPTER_DIR)
            if self.rank == 0:
                dump_json(directory / TRAINER_STATE_FILE, asdict(self.state))
                if self.anchor is not None:
                    stage, weights = self.anchor
                    tensors = dict(zip(self._tuned_names(), weights, strict=True))
                    torch.save({"stage": stage, "tensors": tensors}, directory / ANCHOR_FILE)
            self.tracker.flush()
            ray.train.report(
                {**metrics, "step": self.state.step, "epoch": self.state.epoch},
                checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                checkpoint_dir_name=f"checkpoint_step{self.state.step:07d}",
            )
        self.last_reported_step = self.state.step

    # -- helpers --------------------------------------------------------------------------------

    def _epoch_batches(self) -> Iterator[Batch]:
        """The current epoch's micro-batches (seeded by epoch: the same order on every attempt),
        past the ``micro_in_epoch`` a resumed checkpoint had already consumed."""
        batches = iter(
            group_by_length(
                _chunks(self.train_shard, self.tc.batch_size * self.tc.group_buffer_batches),
                self.tc.batch_size,
                seed=(self.tc.seed, self.state.epoch + 1),
                length_grouping=self.tc.length_grouping,
            )
        )
        for _ in range(self.state.micro_in_epoch):
            if next(batches, None) is None:
                break
        return batches

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids, attention mask, labels) of a batch, left-padded, on the worker's device."""
        ids, mask = pad_batch(batch["input_ids"], self.pad_id)
        return (
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(mask).to(self.device),
            torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)).to(self.device),
        )

    def _stage_of_step(self, step: int) -> int:
        """Index of the stage that optimizer step ``step`` (0-based) belongs to."""
        return max(k for k, start in enumerate(self.stage_starts) if start <= step)

    def _stage(self) -> int:
        """Index of the stage the next optimizer step belongs to (``train.stages``)."""
        return self._stage_of_step(self.state.step)

    def _tuned_names(self) -> list[str]:
        return [n for n, p in self.strategy.model.named_parameters() if p.requires_grad]

    def _anchor_for(self, stage: int) -> list[torch.Tensor] | None:
        """The weights stage ``stage`` started from, when its anchor penalty is on: taken at its
        first step, or restored from a checkpoint taken during the same stage."""
        if not self.objectives[stage].anchor_weight:
            return None
        if self.anchor is None or self.anchor[0] != stage:
            if self.state.step != self.stage_starts[stage]:
                raise RuntimeError(
                    f"stage {self.objectives[stage].name} resumed at step {self.state.step} "
                    "without the weights it started from (no anchor in the checkpoint)"
                )
            params = trainable_parameters(self.strategy.model)
            self.anchor = (stage, [p.detach().float().clone() for p in params])
        return self.anchor[1]

    def _stage_rows(
        self, batch: Batch, objective: StageObjective
    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """(token rows, their demonstration answer positions, the clean rows whose twin is in
        the forward pass): the clean rows, with twins replacing them or appended after them
        as the stage says (:class:`~recicl.train.loss.StageObjective`)."""
        ids, answers = list(batch["input_ids"]), list(batch["demo_answers"])
        paired = np.zeros(0, dtype=np.int64)
        if not objective.perturb.active or "twin_length" not in batch:
            return ids, answers, paired
        twins = np.flatnonzero(np.asarray(batch["twin_length"]) > 0)
        if objective.replaces:
            for row in twins:
                ids[row] = batch["twin_input_ids"][row]
                answers[row] = batch["twin_demo_answers"][row]
            return ids, answers, paired
        ids += [batch["twin_input_ids"][row] for row in twins]
        answers += [np.zeros(0, dtype=np.int32) for _ in twins]  # twins: the query alone
        return ids, answers, twins

    def _train_micro_batch(self, batch: Batch, padding: PaddingStats) -> None:
        """Forward/backward of one micro-batch as its stage says; at accumulation boundaries
        the optimizer step's bookkeeping (metrics, fault hook, periodic checkpoint)."""
        stage = self._stage()
        objective = self.objectives[stage]
        rows, answers, paired = self._stage_rows(batch, objective)
        padding.add(np.asarray([len(row) for row in rows]))  # what is fed, twins included
        ids_np, mask_np = pad_batch(rows, self.pad_id)
        ids = torch.from_numpy(ids_np).to(self.device)
        mask = torch.from_numpy(mask_np).to(self.device)
        label = torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)).to(self.device)
        anchor = self._anchor_for(stage)
        terms: dict[str, torch.Tensor] = {}

        def loss_fn(logits: TrainingLogits) -> torch.Tensor:
            n = len(label)
            loss = answer = self.loss(logits._replace(query=logits.query[:n]), label)
            terms["answer"] = answer.detach()
            if objective.pairs:
                where = torch.as_tensor(paired, device=logits.query.device)
                divergence = consistency_divergence(logits.query[where], logits.query[n:])
                loss = loss + objective.consistency_weight * divergence
                terms["consistency"] = divergence.detach()
            if anchor is not None:
                penalty = anchor_penalty(trainable_parameters(self.strategy.model), anchor)
                loss = loss + objective.anchor_weight * penalty
                terms["anchor"] = penalty.detach()
            return loss

        lr = self.strategy.current_lr()  # the LR this micro-batch's step will use
        loss, stepped = self.strategy.train_micro_batch(
            ids, mask, loss_fn, answers if self.loss.uses_demos else None
        )
        self.window_loss.append(loss)
        if len(self.objectives) > 1 or len(terms) > 1:  # more than the answers' loss to log
            for key, value in terms.items():
                self.window_terms.setdefault(key, []).append(float(value))
        self.state.micro_in_epoch += 1
        self.state.samples_seen += len(label)
        self.step_samples += len(label)
        if stepped:
            self._after_optimizer_step(lr, padding)

    def _after_optimizer_step(self, lr: float, padding: PaddingStats) -> None:
        state, tc = self.state, self.tc
        state.step += 1
        mean_loss = all_reduce(float(np.mean(self.window_loss)), "sum", self.device) / self.world
        # the same keys on every rank (the stage's objective), so the reductions pair up
        parts = {
            f"loss_{key}": all_reduce(float(np.mean(values)), "sum", self.device) / self.world
            for key, values in sorted(self.window_terms.items())
        }
        self.window_loss, self.window_terms = [], {}
        if self.rank == 0 and self.tracker.is_due(state.step):
            self._log_step(mean_loss, lr, padding, parts)
        self.step_started, self.step_samples = time.perf_counter(), 0
        maybe_fault(state.step, self.rank, self.plan.run_name)
        if state.step >= self.plan.total_steps:
            self.done = True
            return
        every = tc.checkpoint_every_steps
        # (at the epoch's last micro-batch the epoch-end checkpoint follows anyway)
        limit = self.plan.micro_batches_per_epoch
        if every and state.step % every == 0 and state.micro_in_epoch < limit:
            self.save_checkpoint({"loss": mean_loss})

    def _log_step(
        self, mean_loss: float, lr: float, padding: PaddingStats, parts: dict[str, float]
    ) -> None:
        """Rank 0: the step's curves to MLflow (the loss's parts and the stage too, when the
        run has them) and a console line (a real LLM on CPUs takes minutes between
        checkpoints)."""
        state = self.state
        stage = self._stage_of_step(state.step - 1)
        seconds = time.perf_counter() - self.step_started
        rate = self.step_samples * self.world / max(seconds, 1e-9)
        self.tracker.add(
            state.step,
            loss=mean_loss,
            lr=lr,
            epoch=state.epoch + state.micro_in_epoch / max(self.plan.micro_batches_per_epoch, 1),
            padding_fraction=padding.padding_fraction,
            samples_per_second=rate,
            **parts,
            **({"stage": float(stage)} if len(self.objectives) > 1 else {}),
        )
        named = f" [{self.objectives[stage].name}]" if len(self.objectives) > 1 else ""
        detail = "".join(f" {key} {value:.4f}" for key, value in parts.items())
        print(
            f"[recicl] step {state.step}/{self.plan.total_steps}{named} loss {mean_loss:.4f}"
            f"{detail} lr {lr:.2e} {rate:.2f} samples/s",
            flush=True,
        )
