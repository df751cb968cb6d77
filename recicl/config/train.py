"""The ``train`` section: Ray Train with DeepSpeed ZeRO or DDP, optimizer, data order, checkpoints.

Its own module because it is the largest section (every knob of a training run).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recicl.config.base import StrictModel, parse_periods


class PerturbConfig(StrictModel):
    """Perturbed in-context samples (LRGD robustness; recicl/data/perturb.py): what is done to
    a sample's demonstrations and history. Shares are exact counts, round(share * n)."""

    share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the training samples whose context is perturbed, drawn by a "
        "seeded hash of the sample id (validation samples never are); 0 = off.",
    )
    demo_dropout: float = Field(
        0.0, ge=0, le=1, description="Share of a sample's demonstrations dropped."
    )
    shuffle: bool = Field(
        False, description="Demonstrations in a random order instead of time order."
    )
    label_flip: float = Field(
        0.0, ge=0, le=1, description="Share of the demonstrations whose label is flipped."
    )
    foreign_demos: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability that a sample's demonstrations are replaced by another "
        "user's (from the same batch, only events older than the sample's target).",
    )
    history_drop: float = Field(0.0, ge=0, le=1, description="Share of the history items dropped.")

    @property
    def active(self) -> bool:
        """Whether anything is perturbed at all."""
        changes = (self.demo_dropout, self.shuffle, self.label_flip, self.foreign_demos)
        return self.share > 0 and (any(changes) or self.history_drop > 0)


#: Doc shared by the two places a regularisation weight is set (stage 1 and later stages).
_CONSISTENCY_DOC = (
    "Weight of a consistency loss (Jensen-Shannon divergence between the Yes/No predictions "
    "on a sample's clean context and on its perturbed twin, `perturb`; the clean side is the "
    "target and gets no gradient from it). Needs an active `perturb`: the model then trains on "
    "the clean samples, and the twins only through this term. 0 = off: the perturbed contexts "
    "replace the clean ones instead."
)
_ANCHOR_DOC = (
    "Weight of an L2 penalty (0.5 x the squared distance of the tuned weights from the weights "
    "the stage started from): each weight is pulled back by this weight x its change, like "
    "weight decay towards the start (L2-SP; 0.01-0.1). LRGD: a robustness stage must not "
    "forget what the stage before it learned. In stage 1 the start is the base or the "
    "`init_from` version. 0 = off. Not with ZeRO-3, which never holds a whole tensor on one "
    "rank."
)


class TrainStage(StrictModel):
    """A later stage of the same training run (``train.stages``): it starts from the weights
    the stage before ended with, with its own steps, LR schedule, perturbation and
    regularisation (LRGD's two-stage optimisation: stage 1 tunes in-context learning, stage 2
    makes it robust to its demonstrations). One run, one registered version."""

    name: str = Field(
        "robust",
        pattern=r"^[a-z0-9_-]{1,32}$",
        description="Label of the stage in logs (lowercase letters, digits, _ and -).",
    )
    max_steps: int = Field(..., ge=1, description="Optimizer steps of this stage.")
    lr: float = Field(..., gt=0, description="Peak learning rate of this stage.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the stage's steps warming its LR up from 0."
    )
    perturb: PerturbConfig = Field(
        default_factory=PerturbConfig,
        description="Perturbed contexts in this stage (the same for every stage that perturbs).",
    )
    consistency_weight: float = Field(0.0, ge=0, description=_CONSISTENCY_DOC)
    anchor_weight: float = Field(0.0, ge=0, description=_ANCHOR_DOC)


class TrainConfig(StrictModel):
    """How to tune the model on ICL samples with Ray Train (DeepSpeed ZeRO or DDP)."""

    samples_dir: str | None = Field(
        None,
        description="Folder written by `recicl samples build` (samples/, catalog.parquet, "
        "manifest.json); a local or shared-mount path. null = samples.output.",
    )
    instructions: str | None = Field(
        None,
        description="Train on an instruction-format Yes/No file instead of a samples folder: "
        "Alpaca/TALLRec records (instruction, input, output 'Yes.'/'No.') as a JSON array "
        "(.json) or one record a line (.jsonl), a local path. Rendered with "
        "instruction_template exactly as `recicl evaluate --samples FILE` scores them. The "
        "samples folder, periods and augmented copies are then not used.",
    )
    val_instructions: str | None = Field(
        None,
        description="With `instructions`: a file of the same format for the per-epoch "
        "validation AUC (capped by max_val_samples). null = no validation.",
    )
    instruction_template: Literal["alpaca", "answer"] = Field(
        "alpaca",
        description="With `instructions`: alpaca (the Alpaca preamble and '### Response:', as "
        "TALLRec) or answer (instruction, input, 'Answer:'). Recorded in the version, whose "
        "evaluation on instruction files uses it by default.",
    )
    train_periods: list[int] | None = Field(
        None,
        description="Periods to train on: a list or a string like '0-5' or '0,2,4-6'. "
        "null = every period found except the validation ones.",
    )
    val_periods: list[int] | None = Field(
        None,
        description="Periods for the per-epoch validation AUC (same syntax). null = the newest "
        "period found (if there are at least two); [] = no validation.",
    )
    strategy: Literal["deepspeed", "ddp"] = Field(
        "deepspeed", description="deepspeed (ZeRO, optimizer state sharded) or ddp (plain torch)."
    )
    zero_stage: Literal[2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 2 shards optimizer state + gradients, 3 also the "
        "weights (needed when one copy of the base model does not fit a GPU).",
    )
    offload_optimizer: bool = Field(
        False, description="DeepSpeed only: keep optimizer state in CPU memory (ZeRO-Offload)."
    )
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU nodes).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); false = CPU (gloo).")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="Logical CPUs reserved per worker (leave some for Ray Data)."
    )
    batch_size: int = Field(8, ge=1, description="Micro-batch size per worker (samples).")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Validation batch size per worker; null = 2 x batch_size."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Fraction of the steps spent warming the LR up linearly "
        "from 0; afterwards `lr_schedule` applies.",
    )
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear",
        description="After warm-up: linear = decay linearly to 0 at the last step; constant = "
        "keep the peak LR (short runs that must not slow down before they have learned).",
    )
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.999),
        description="AdamW (beta1, beta2). A lower beta2 (0.98, 0.95) adapts faster when the "
        "gradient scale changes, as it does when a small model starts using its context.",
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"adam_betas must both be in [0, 1), got {list(value)}")
        return value

    max_train_samples: int | float | None = Field(
        None,
        description="Few-shot training: keep only this many training samples (an integer), or "
        "this fraction of them (a number in (0, 1), e.g. 0.1), chosen by a seeded hash of the "
        "sample id (`seed`): reproducible, and nested (the 16 chosen are among the 64). "
        "null = all. Validation samples are capped by max_val_samples only.",
    )
    max_val_samples: int | None = Field(
        2000,
        ge=1,
        description="Validate on at most this many samples of val_periods each time (chosen "
        "by a seeded hash of the sample id, the same ones every epoch and every run): 2,000 "
        "resolve AUC to about ±0.01, and a whole period of a real log with a real LLM is "
        "tens of minutes of scoring per epoch. null = every sample.",
    )

    @field_validator("max_train_samples")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if value is None or isinstance(value, bool):
            return None if value is None else int(value)
        if isinstance(value, float) and not value.is_integer():
            if not 0 < value < 1:
                raise ValueError(
                    f"max_train_samples {value}: give a count (e.g. 256) or a fraction in (0, 1)"
                )
            return value
        if value < 1:
            raise ValueError(f"max_train_samples must be at least 1, got {value}")
        return int(value)

    use_augmented: bool = Field(
        True,
        description="Also train on the augmented copies a samples folder holds "
        "(samples.augment: the same samples with other demonstration policies, mixed in as "
        "ReLLa's retrieval-enhanced tuning). Validation uses the main samples only.",
    )
    perturb: PerturbConfig = Field(
        default_factory=PerturbConfig,
        description="Perturb the context of a share of the training samples (robust "
        "in-context tuning); off by default.",
    )
    consistency_weight: float = Field(0.0, ge=0, description=_CONSISTENCY_DOC)
    anchor_weight: float = Field(0.0, ge=0, description=_ANCHOR_DOC)
    stages: list[TrainStage] = Field(
        default_factory=list,
        description="Later stages of the same run, after the first (whose settings are this "
        "section's own: max_steps or epochs, lr, warmup_ratio, perturb, consistency_weight, "
        "anchor_weight). E.g. LRGD's robustness stage: [{name: robust, max_steps: 50, lr: "
        "1.0e-4, perturb: {share: 0.5, label_flip: 0.25}, consistency_weight: 1.0, "
        "anchor_weight: 0.01}]. [] = one stage.",
    )
    epochs: int = Field(1, ge=1, description="Passes over the training periods.")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps (overrides `epochs`, "
        "cycling through the data as often as needed); null = epochs x steps per epoch. With "
        "`stages`, the first stage's steps: the run takes these plus each stage's max_steps.",
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this; null = no clipping."
    )
    demo_loss_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of a loss on every in-context demonstration's answer, added to the "
        "query's (each demo is a solved example, predicted from the demos before it). 0 = the "
        "query's answer only. Speeds up learning to read demonstrations (see README).",
    )
    class_weights: tuple[float, float] | None = Field(
        None,
        description="Cross-entropy weights for [No, Yes] (e.g. [1.0, 3.0] when likes are "
        "rare); null = unweighted.",
    )
    bf16: bool | Literal["auto", "if-native"] = Field(
        "auto",
        description="bfloat16 mixed precision; auto = on GPU only (slow on most CPUs); "
        "if-native = where the device computes bf16 natively (a GPU with bf16, a CPU with AMX "
        "or AVX-512-BF16 units): pair it with model.dtype: bfloat16-if-native.",
    )
    length_grouping: bool = Field(
        True,
        description="Group prompts of similar token length into the same batch (less "
        "padding); batch order is still shuffled every epoch.",
    )
    shuffle: bool = Field(
        True,
        description="Shuffle the training rows (a seeded, reproducible global shuffle; the same "
        "order every epoch). Stored samples are grouped by period and user: unshuffled, a "
        "micro-batch holds one or two users.",
    )
    group_buffer_batches: int = Field(
        16, ge=1, description="Length grouping window: batches buffered, sorted and regrouped."
    )
    checkpoint_every_steps: int | None = Field(
        None,
        ge=1,
        description="Also checkpoint every N optimizer steps (always at epoch end "
        "and at the last step); null = epochs only.",
    )
    keep_checkpoints: int | None = Field(
        2, ge=1, description="Checkpoints kept in storage (oldest deleted); null = all."
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="Worker-group restarts Ray Train may do after a failure "
        "(resuming from the latest checkpoint); -1 = unlimited.",
    )
    storage_path: str | None = Field(
        None,
        description="Where Ray Train keeps runs and checkpoints (local folder, s3://, "
        "gs://; shared storage for multi-node). null = <workdir>/ray_results.",
    )
    run_name: str | None = Field(
        None,
        description="Ray Train run name; rerunning with the same name resumes from its "
        "latest checkpoint. null = train-<date>-<time>. Letters, digits and . _ - + @ = "
        "only: it names folders under the work folder that a rerun replaces.",
    )

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not re.fullmatch(r"[A-Za-z0-9_.+@=-]{1,128}", value) or value.strip(".") == ""
        ):
            raise ValueError(
                f"run_name {value!r}: use 1-128 letters, digits or . _ - + @ = (no path "
                "separators, not '.' or '..'): it names <workdir>/trained/<run_name>, which a "
                "rerun deletes and rewrites"
            )
        return value

    init_from: str | None = Field(
        None,
        description="Warm start: a registered version (models:/recicl@champion, "
        "models:/recicl/3) or a version folder whose LoRA adapter this run continues instead "
        "of a fresh one. Its base model and LoRA shape must be this config's. Optimizer "
        "state and learning-rate schedule start fresh, warm-up included: a version carries "
        "weights only, and the new periods are a new optimisation problem. null = from the base.",
    )
    blend: Literal["none", "logistic"] = Field(
        "none",
        description="logistic: also fit a logistic regression on leak-free count signals of "
        "the training samples (the demonstrations' like rate, the user's and the item's "
        "like rate and count, frozen at the end of training) and ship it with the version; "
        "evaluation and serving then score the mean of its logit and the LLM's. It adds what "
        "the LLM reads poorly (how well liked an item is): docs/quality.md measures the blend. "
        "Needs a samples folder (not `instructions`). none = the LLM's score alone.",
    )
    seed: int = Field(0, description="Seed for the LoRA init and the data order.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (less memory, ~30% slower)."
    )
    materialize_data: bool = Field(
        True,
        description="Tokenize once before training and keep the tokens in Ray's object "
        "store (spilled to disk when large); false = stream and re-tokenize every epoch (for "
        "data far beyond the cluster's object store).",
    )
    log_every_steps: int = Field(
        1, ge=1, description="Log loss/LR to MLflow every N optimizer steps."
    )

    @property
    def perturbation(self) -> PerturbConfig | None:
        """The one perturbation of the run's stages (each perturbed sample has one twin
        context, encoded once), or None when no stage perturbs."""
        specs = [spec for spec in (self.perturb, *(s.perturb for s in self.stages)) if spec.active]
        return specs[0] if specs else None

    @model_validator(mode="after")
    def _stages_are_consistent(self) -> TrainConfig:
        stages: list[tuple[str, PerturbConfig, float, float]] = [
            ("train", self.perturb, self.consistency_weight, self.anchor_weight),
            *(
                (f"train.stages[{k}]", s.perturb, s.consistency_weight, s.anchor_weight)
                for k, s in enumerate(self.stages)
            ),
        ]
        active = [spec for _, spec, _, _ in stages if spec.active]
        if any(spec != active[0] for spec in active):
            raise ValueError(
                "the stages perturb differently: every stage that perturbs must use the same "
                "`perturb` settings (each sample has one perturbed twin, encoded once)"
            )
        for where, spec, consistency, anchor in stages:
            if consistency and not spec.active:
                raise ValueError(
                    f"{where}.consistency_weight is set but {where}.perturb perturbs nothing: "
                    "set perturb.share and what to perturb (e.g. label_flip: 0.25), or drop it"
                )
            if anchor and self.strategy == "deepspeed" and self.zero_stage == 3:
                raise ValueError(
                    f"{where}.anchor_weight needs whole weights on each rank: use zero_stage 2 "
                    "or strategy ddp, or set it to 0"
                )
        names = [stage.name for stage in self.stages]
        if len(set(names)) < len(names):
            raise ValueError(f"train.stages: names {names} repeat; give each stage its own name")
        if (active or self.stages) and self.instructions:
            raise ValueError(
                "train.instructions trains on an instruction file, which has no in-context "
                "samples to perturb or stage: drop train.perturb/train.stages, or train on a "
                "samples folder"
            )
        return self

    @model_validator(mode="after")
    def _blend_needs_samples(self) -> TrainConfig:
        if self.blend != "none" and self.instructions:
            raise ValueError(
                f"blend {self.blend!r} is fitted on a samples folder's count signals, and "
                "instructions is set: train on samples, or set blend: none"
            )
        return self

    @model_validator(mode="after")
    def _val_instructions_need_instructions(self) -> TrainConfig:
        if self.val_instructions and not self.instructions:
            raise ValueError(
                "val_instructions is set but instructions is not: give the training file too "
                "(--instructions FILE), or drop val_instructions"
            )
        return self

    @field_validator("train_periods", "val_periods", mode="before")
    @classmethod
    def _parse_periods(cls, value: Any) -> list[int] | None:
        return parse_periods(value)
