"""Encoders: an item's text → one float32 vector, chosen by the ``embeddings`` config section.

Three encoders, one interface (:class:`Encoder`: ``encode(texts) -> (n, dim)``):

* ``wordllama`` (default): WordLlama's static token embeddings (``l2_supercat``, 256-d, trained
  from Llama 2 70B's embedding layer), averaged over the text's tokens. The weights and the
  tokenizer ship inside the ``wordllama`` wheel (16 MB), so it runs offline on any machine, and a
  lookup-and-average needs no model forward pass, so a whole catalog embeds quickly on CPU
  (measured: docs/performance.md). Its dimensions are Matryoshka prefixes: ``dim`` 64 or 128
  keeps the first columns.
* ``llm``: the configured LLM's own last hidden layer, mean-pooled over the real tokens with
  the attention mask (as ReLLa builds item vectors). Vectors then live in the space of the
  model that will read the prompts; it costs a forward pass per item.
* ``sentence-transformers``: any sentence-transformers model folder on local disk (an optional
  dependency, imported only when chosen).

Each vector depends on its own text only, never on the other items of its batch (WordLlama
pools each item's tokens separately; the LLM sees explicit position ids, so left padding
changes nothing). That is what makes the Ray Data job's output independent of how the catalog
is split into batches and actors (:mod:`recicl.embeddings.job`). Vectors are returned raw; the
file format normalizes them (:func:`recicl.data.item_embeddings.embeddings_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from recicl.config import ConfigError, EncoderName, ModelConfig, ReciclConfig

#: What the text of an item is made of (recorded in the embeddings file's metadata).
TEXT_RECIPE = "title+attributes"
#: WordLlama's bundled weights: config name and full width; ``dim`` may keep a prefix of them.
WORDLLAMA_CONFIG, WORDLLAMA_DIM = "l2_supercat", 256
WORDLLAMA_DIMS = (64, 128, 256)
#: LLM encoder: texts per forward pass (sorted by length first, so padding stays small).
LLM_CHUNK = 32
ST_INSTALL = "pip install sentence-transformers"


def item_text(title: str | None, attributes: Mapping[str, str] | Sequence[Any] | None) -> str:
    """The text an encoder sees for one catalog item: the title, then each non-empty attribute
    as ``key: value`` in key order, joined by ". ".

    ``item_text("Toy Story (1995)", {"genres": "Adventure|Animation|Children"})`` is
    ``"Toy Story (1995). genres: Adventure|Animation|Children"``.

    Why the attributes: titles alone say little about an item ("Heat"), and genres or a
    category are what makes two items of a catalog similar for a recommender. Keys are sorted
    so that the same item gives the same text whatever order the catalog map was written in.
    ``attributes`` is a mapping or the ``[(key, value), ...]`` pairs Arrow gives for a map.
    """
    pairs = attributes.items() if isinstance(attributes, Mapping) else (attributes or [])
    parts = [str(title).strip()] if title is not None and str(title).strip() else []
    for key, value in sorted((str(k), v) for k, v in pairs):
        if value is not None and str(value).strip():
            parts.append(f"{key}: {str(value).strip()}")
    return ". ".join(parts)


def catalog_texts(catalog: pa.Table) -> list[str]:
    """:func:`item_text` of every row of a table with the CATALOG columns (``title``,
    ``attributes``; a missing ``attributes`` column means none)."""
    titles = catalog["title"].to_pylist()
    if "attributes" in catalog.column_names:
        attributes = catalog["attributes"].to_pylist()
    else:
        attributes = [None] * len(titles)
    return [item_text(t, a) for t, a in zip(titles, attributes, strict=True)]


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an actor needs to load an encoder: plain values (it travels to Ray actors)
    resolved and checked on the driver, so a wrong setting fails before any actor starts."""

    encoder: EncoderName
    model: str  # what produced the vectors, as recorded in the file's metadata
    dim: int | None
    max_text_tokens: int
    model_config: dict[str, Any] | None = None  # llm: the ModelConfig to load, as JSON

    @classmethod
    def from_config(cls, cfg: ReciclConfig) -> EncoderSpec:
        """The encoder ``cfg.embeddings`` asks for; a :class:`ConfigError` naming the key and
        the fix when it cannot work (bad ``dim``, no model, a model folder that is missing)."""
        section = cfg.embeddings
        if section.encoder == "wordllama":
            dim = section.dim or WORDLLAMA_DIM
            if dim not in WORDLLAMA_DIMS:
                raise ConfigError(
                    f"embeddings.dim={section.dim}: the wordllama encoder has "
                    f"{', '.join(map(str, WORDLLAMA_DIMS))} dimensions; set one of them (or "
                    "null for 256)"
                )
            return cls("wordllama", WORDLLAMA_CONFIG, dim, section.max_text_tokens)
        if section.encoder == "llm":
            if section.dim is not None:
                raise ConfigError(
                    f"embeddings.dim={section.dim}: the llm encoder's vectors have the model's "
                    "hidden size; set embeddings.dim to null"
                )
            path = section.model or cfg.model.name_or_path
            if not path:
                raise ConfigError(
                    "embeddings.model is not set and neither is model.name_or_path: the llm "
                    "encoder needs a model folder (set embeddings.model or pass --model DIR)"
                )
            _require_local_folder(path, "llm", looks_local_only=True)
            model_cfg = cfg.model.model_copy(update={"name_or_path": path})
            return cls(
                "llm",
                path,
                None,
                section.max_text_tokens,
                model_config=model_cfg.model_dump(mode="json"),
            )
        if not section.model:
            raise ConfigError(
                "embeddings.model is not set: the sentence-transformers encoder needs a local "
                "model folder (set embeddings.model or pass --model DIR)"
            )
        _import_sentence_transformers()  # first: without the package no folder would do
        _require_local_folder(section.model, "sentence-transformers", looks_local_only=False)
        return cls("sentence-transformers", section.model, section.dim, section.max_text_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_local_folder(path: str, encoder: str, *, looks_local_only: bool) -> None:
    """A missing model folder is a config error, not a download attempt. ``looks_local_only``:
    check only paths that look local (``./x``, ``/x``, ``~/x``, ``.cache/x``); a bare
    ``org/name`` may be a Hugging Face id already in the local cache."""
    candidate = Path(path).expanduser()
    local_looking = path.startswith((".", "/", "~")) or candidate.exists()
    if looks_local_only and not local_looking:
        return
    if not candidate.is_dir():
        raise ConfigError(
            f"embeddings.model: no model folder at {path} for the {encoder} encoder; set "
            "embeddings.model (or --model) to an existing local folder"
        )


def _import_sentence_transformers() -> Any:
    try:
        import sentence_transformers  # optional dependency: pip install sentence-transformers
    except ImportError:
        raise ConfigError(
            "embeddings.encoder=sentence-transformers needs the sentence-transformers package: "
            f"{ST_INSTALL} (or choose embeddings.encoder: wordllama)"
        ) from None
    return sentence_transformers


class Encoder(Protocol):
    """Texts → ``(len(texts), dim)`` float32 vectors (not normalized), one row per text."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def load_encoder(spec: EncoderSpec, threads: int | None = None) -> Encoder:
    """Load the encoder of ``spec`` (once per Ray actor). ``threads``: torch threads for the
    model encoders (a pool of N replicas on C cores should use C // N each)."""
    if spec.encoder == "wordllama":
        return WordLlamaEncoder(spec.dim or WORDLLAMA_DIM)
    if spec.encoder == "llm":
        assert spec.model_config is not None  # EncoderSpec.from_config sets it
        return LLMEncoder(
            ModelConfig.model_validate(spec.model_config), spec.max_text_tokens, threads
        )
    return SentenceTransformerEncoder(spec.model, spec.dim, threads)


class WordLlamaEncoder:
    """Mean of WordLlama's bundled token embeddings over each text's tokens.

    The weights and the tokenizer are read from the files inside the ``wordllama`` wheel, by
    path, and nothing else is tried. Not ``WordLlama.load()``: in wordllama 0.4.0.post1 it
    looks for the tokenizer under ``wordllama/tokenizer/`` while the wheel ships it under
    ``wordllama/tokenizers/``, so it downloads the tokenizer from the Hugging Face Hub on every
    machine (or fails offline, whatever ``HF_HUB_OFFLINE`` says: it uses ``requests``).

    The pooling is our own, per text (``np.add.reduceat`` over the concatenated tokens), with
    the same result as WordLlama's ``embed``: that one pads a batch to its longest text, which
    makes a vector's float sums depend on its batch neighbours; per-text sums make every vector
    bit-identical in any batching.
    """

    def __init__(self, dim: int = WORDLLAMA_DIM) -> None:
        weights, tokenizer = wordllama_files()
        from safetensors import safe_open
        from tokenizers import Tokenizer

        with safe_open(str(weights), framework="np") as handle:
            table = handle.get_tensor("embedding.weight")
        self.table = np.ascontiguousarray(table[:, :dim], dtype=np.float32)
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.dim = int(self.table.shape[1])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [item.ids for item in encoded]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.token_ids(texts)
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not lengths.sum():
            return out
        flat = np.concatenate([np.asarray(i, np.int64) for i in ids])
        flat = np.clip(flat, 0, len(self.table) - 1)  # as WordLlama: ids past the table
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        has_tokens = lengths > 0
        # reduceat sums each [start, next start) segment in order: per text, batch-independent
        sums = np.add.reduceat(self.table[flat], starts[has_tokens], axis=0)
        out[has_tokens] = sums / lengths[has_tokens, None].astype(np.float32)
        return out


def wordllama_files() -> tuple[Path, Path]:
    """Paths of the bundled ``l2_supercat`` weights (256-d) and tokenizer inside the installed
    ``wordllama`` package; a clear error when the package or a file is missing."""
    import importlib.util

    found = importlib.util.find_spec("wordllama")
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            "embeddings.encoder=wordllama needs the wordllama package (a recicl dependency): "
            "pip install 'wordllama>=0.4'"
        )
    root = Path(next(iter(found.submodule_search_locations)))
    weights = root / "weights" / f"{WORDLLAMA_CONFIG}_{WORDLLAMA_DIM}.safetensors"
    tokenizer = root / "tokenizers" / f"{WORDLLAMA_CONFIG}_tokenizer_config.json"
    for path in (weights, tokenizer):
        if not path.is_file():
            raise ConfigError(
                f"the wordllama package at {root} lacks {path.relative_to(root)}: reinstall it "
                "(pip install --force-reinstall 'wordllama>=0.4')"
            )
    return weights, tokenizer


class LLMEncoder:
    """The LLM's last hidden layer (after its final norm), mean-pooled over the real tokens.

    Only the decoder runs (``get_decoder()``): the LM head, a vocabulary-sized matmul per token
    (262k columns for Gemma 3), is not needed for a hidden state. The tokenizer pads on the
    left (:mod:`recicl.modeling.loading`); position ids are counted from each row's first real
    token and padded positions are excluded from the mean, so an item's vector does not depend
    on how long the other texts of its batch are.
    """

    def __init__(self, model_cfg: ModelConfig, max_tokens: int, threads: int | None) -> None:
        from recicl.modeling.loading import load_model, load_tokenizer
        from recicl.modeling.threads import apply_torch_threads

        apply_torch_threads("embedding actor", model_cfg.num_threads, allotment=threads)
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = load_model(model_cfg, for_training=False)
        self.decoder = self.model.get_decoder()
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.get_text_config().hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, padding=False
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), LLM_CHUNK):
            chunk = order[start : start + LLM_CHUNK]
            out[chunk] = self._pooled([ids[i] for i in chunk])
        return out

    def _pooled(self, ids: list[list[int]]) -> np.ndarray:
        import torch

        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = self.decoder(
                input_ids=batch["input_ids"].to(self.model.device),
                attention_mask=mask.to(self.model.device),
                position_ids=positions.to(self.model.device),
                use_cache=False,
            ).last_hidden_state.float()
            real = mask.to(hidden.device).bool().unsqueeze(-1)
            # where, not a product: a padded query row attends to nothing and may hold NaN
            summed = torch.where(real, hidden, torch.zeros_like(hidden)).sum(dim=1)
            counts = real.sum(dim=1).clamp(min=1).to(hidden.dtype)
            return (summed / counts).cpu().numpy()


class SentenceTransformerEncoder:
    """A local sentence-transformers model (``local_files_only``: never a Hub download)."""

    def __init__(self, folder: str, dim: int | None, threads: int | None) -> None:
        from recicl.modeling.threads import apply_torch_threads

        module = _import_sentence_transformers()
        apply_torch_threads("embedding actor", allotment=threads)
        self.model = module.SentenceTransformer(
            str(Path(folder).expanduser()), device="cpu", truncate_dim=dim, local_files_only=True
        )
        self.dim = int(dim or self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=LLM_CHUNK, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
