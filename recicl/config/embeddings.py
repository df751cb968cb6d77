"""Section for item embeddings (``embeddings``): which encoder turns catalog text into vectors.

Used by `recicl embed items` and by sample builds whose policies retrieve by similarity. The
default encoder ships inside its wheel (WordLlama, 256-d static token embeddings, MIT), so a
fresh install embeds a catalog with no download and no model folder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recicl.config.base import StrictModel

EncoderName = Literal["wordllama", "llm", "sentence-transformers"]


class EmbeddingsConfig(StrictModel):
    """How catalog items (title + attributes) become unit vectors for similarity retrieval."""

    encoder: EncoderName = Field(
        "wordllama",
        description="wordllama: bundled static token embeddings, offline, fast on CPUs; llm: the "
        "LLM's last hidden layer mean-pooled over the item's tokens (as ReLLa); "
        "sentence-transformers: a local sentence-transformers model folder (pip install "
        "sentence-transformers).",
    )
    model: str | None = Field(
        None,
        description="llm: model folder or id, null = model.name_or_path; sentence-transformers: "
        "the local model folder (required); wordllama: ignored.",
    )
    dim: int | None = Field(
        None,
        ge=1,
        description="Vector size. wordllama: 64, 128 or 256 (its Matryoshka prefixes), null = "
        "256; sentence-transformers: truncate to this (Matryoshka models), null = the model's; "
        "llm: must be null (the hidden size).",
    )
    batch_size: int = Field(256, ge=1, description="Items per batch handed to one encoder replica.")
    concurrency: int | None = Field(
        None,
        ge=1,
        description="Encoder replicas (Ray Data actor pool); null = the machine's cores on a "
        "local runtime, the cluster's CPUs on a cluster (at least 1).",
    )
    max_text_tokens: int = Field(
        64,
        ge=4,
        le=8192,
        description="llm: an item's text is cut to this many tokens (special tokens included).",
    )
