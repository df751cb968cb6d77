"""Sections for what runs around training: Ray, MLflow, serving, evaluation, experiments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recicl.config.base import StrictModel


class RayConfig(StrictModel):
    """How to reach Ray. Production: set RAY_ADDRESS; locally an embedded runtime starts."""

    address: str | None = Field(None, description="Ray address; null = $RAY_ADDRESS or local.")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local runtime; null = max(4, cores)."
    )
    parquet_footer_actors: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes Ray Data's Parquet reader starts to read file footers on every "
        "read (Ray's default: 32, seconds of fixed cost per read on a small machine); null = "
        "one per 16 cluster CPUs, 1 to 32. $RAY_DATA_PARQUET_FOOTER_NUM_ACTORS, when set, wins.",
    )


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
    "zero-shot",
    "tallrec",
    "tallrec+demos",
    "recicl",
    "recicl+stats",
    "recicl+codes",
    "recicl+stats+codes",
    "classical",
    "demo-rate",
    "retrained",
    # the baselines of recicl/evaluate/baselines.py (BASELINES), and each refitted per period
    "logistic",
    "boosted-trees",
    "mf",
    "sasrec",
    "din",
    "logistic-retrained",
    "boosted-trees-retrained",
    "mf-retrained",
    "sasrec-retrained",
    "din-retrained",
]
#: Typed once here so that the default list is checked against :data:`StreamingVariant`.
DEFAULT_STREAMING_VARIANTS: tuple[StreamingVariant, ...] = (
    "zero-shot",
    "tallrec",
    "recicl",
    "classical",
)


class ExperimentConfig(StrictModel):
    """The streaming protocol: train once on early periods, evaluate every later one unchanged."""

    train_periods: str | list[int] = Field(
        "0-5", description="Periods the variants are tuned on (e.g. '0-5')."
    )
    eval_periods: str | list[int] | None = Field(
        None, description="Periods evaluated without any update; null = every later period."
    )
    variants: list[StreamingVariant] = Field(
        default_factory=lambda: list(DEFAULT_STREAMING_VARIANTS),
        description="Variants side by side: zero-shot, tallrec, tallrec+demos (the "
        "TALLRec-tuned model given the same demonstrations at inference), recicl, recicl+stats "
        "(recicl with frozen item statistics in its prompts, prompt.item_stats), recicl+codes and "
        "recicl+stats+codes (taste codes, prompt.item_codes, alone or with them), classical, "
        "demo-rate (no model: the share of Yes among the sample's demonstrations, i.e. the "
        "user's recent like rate), retrained (recicl re-tuned up to each period: the costly "
        "upper bound); non-LLM baselines fitted on the training periods (docs/baselines.md): "
        "logistic and boosted-trees (leak-free like-rate signals), mf (matrix factorization), "
        "sasrec, din; '<baseline>-retrained' refits one per evaluated period on every period "
        "before it.",
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
