"""A tiny random Llama + BPE tokenizer made from a catalog: tests, demos and CPU runs.

Why not a hub model: nothing may be downloaded in tests/CI, and a few-hundred-kilobyte model
trains and serves in seconds on a laptop while exercising the exact code paths of a real one
(Auto classes, LoRA targets q/k/v/o_proj, SDPA, safetensors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from recicl.config import PromptConfig, TinyModelSettings
from recicl.errors import ReciclError
from recicl.prompts import AnswerTokenError, PromptBuilder, answer_token_ids

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>"]
_MAX_CATALOG_ITEMS = 50_000  # enough text to learn merges; keeps init at seconds for big catalogs
_TEMPLATE_REPEATS = 200  # makes template words (and " Yes"/" No") the most frequent merges


def _corpus(catalog_path: Path, prompt_config: PromptConfig) -> Iterator[str]:
    """Rendered prompts covering every catalog title (up to a cap) and every template wording.

    Rendering through :class:`PromptBuilder` (not raw titles) means the tokenizer learns the text
    exactly as prompts show it: quoted, cleaned, with attributes.
    """
    catalog = pq.read_table(catalog_path).slice(0, _MAX_CATALOG_ITEMS)
    builder = PromptBuilder(prompt_config, catalog)
    items = [str(i) for i in catalog.column("item_id").to_pylist() if i is not None] or ["0"]
    for start in range(0, len(items), 8):
        chunk = (items[start : start + 8] * 8)[:8]
        yield builder.render(
            chunk[:5],
            [
                {"item_id": chunk[5], "label": 1, "history": chunk[:2]},
                {"item_id": chunk[6], "label": 0, "history": []},
            ],
            chunk[7],
        )
    sample = items[:3]
    demos = [{"item_id": sample[0], "label": 1, "history": sample}, {"item_id": "x", "label": 0}]
    for domain in ("movie", "book", "generic"):
        for fmt in ("recicl", "tallrec", "rella"):
            config = prompt_config.model_copy(update={"domain": domain, "format": fmt})
            text = PromptBuilder(config, catalog).render(sample, demos, sample[-1])
            for _ in range(_TEMPLATE_REPEATS):
                yield text


def _train_tokenizer(corpus: Iterator[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE (GPT-2/Llama-3 style): any text is encodable (no unknown characters), and
    # words keep their leading space, so " Yes"/" No" become single tokens.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos = tokenizer.token_to_id("<s>")
    # Like Llama: BOS before every text, no EOS (the answer must follow "Answer:" directly).
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",  # nosec B106  # a special token's text, not a password
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def init_tiny_model(
    catalog_path: str | Path,
    output: str | Path,
    settings: TinyModelSettings | None = None,
    prompt_config: PromptConfig | None = None,
) -> Path:
    """Train a BPE tokenizer on the catalog's prompts, build a seeded random Llama, save both.

    The folder loads with ``AutoTokenizer``/``AutoModelForCausalLM`` (set it as
    ``model.name_or_path``). Same catalog + settings → identical files.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = settings or TinyModelSettings()
    prompt_config = prompt_config or PromptConfig()
    catalog_path, output = Path(catalog_path), Path(output)
    if not catalog_path.is_file():
        raise ReciclError(f"catalog {catalog_path} does not exist (expected catalog.parquet)")
    if output.exists() and not output.is_dir():
        raise ReciclError(f"output {output} exists and is not a folder")

    tokenizer = _train_tokenizer(_corpus(catalog_path, prompt_config), settings.vocab_size)
    try:
        answer_token_ids(tokenizer)
    except AnswerTokenError as error:
        raise ReciclError(
            f"the tiny tokenizer did not learn single-token answers ({error}); "
            "raise model.tiny.vocab_size"
        ) from None

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=max(2048, prompt_config.max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=settings.init_std or settings.hidden_size**-0.5,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG stream untouched
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / "recicl_tiny.json").write_text(
        json.dumps(
            {"settings": settings.model_dump(), "prompt": prompt_config.model_dump()},
            indent=2,
            sort_keys=True,
        )
    )
    return output
