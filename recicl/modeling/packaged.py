"""Loading a *packaged* model: the folder a registered version downloads to, or a plain HF folder.

Evaluation and serving both score with "whatever model version X is", so both go through this
one loader. A packaged folder (written by training, layout in ``recicl.registry``) carries its
own prompt configuration: scoring a model with a different template than it was tuned on would be
train/serve skew, so the folder's prompt config wins over the caller's unless the folder has none
(a plain base model, e.g. the zero-shot baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recicl.config import ModelConfig, PromptConfig
from recicl.errors import ReciclError

MODEL_MANIFEST = "recicl_model.json"


class PackagedModelError(ReciclError):
    """A model folder that cannot be used for scoring."""


@dataclass
class PackagedModel:
    """Everything needed to score prompts with one model version."""

    model: Any
    tokenizer: Any
    prompt: PromptConfig
    manifest: dict[str, Any]
    label: str  # human-readable identity: "recicl/3", or the folder name

    @property
    def answer_tokens(self) -> Any:
        from recicl.prompts import answer_token_ids

        return answer_token_ids(self.tokenizer)


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / MODEL_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def load_packaged_model(
    model_dir: str | Path,
    *,
    prompt: PromptConfig | None = None,
    model_cfg: ModelConfig | None = None,
    label: str | None = None,
    device: str = "cpu",
    force_prompt: bool = False,
) -> PackagedModel:
    """Load base model + adapter (or full weights) + tokenizer from ``model_dir``.

    ``model_dir`` is either a packaged version folder (has ``recicl_model.json``) or a plain
    Hugging Face causal-LM folder, scored as is with ``prompt`` (zero-shot). ``force_prompt``:
    score a packaged version with ``prompt`` instead of the one it was tuned with, on purpose
    (the streaming experiment's ``tallrec+demos``: a model tuned without demonstrations, given
    them at inference).
    """
    if force_prompt and prompt is None:
        raise PackagedModelError("force_prompt needs a prompt to force")
    from recicl.modeling.loading import load_model, load_tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PackagedModelError(f"model folder {model_dir} does not exist")
    manifest = read_manifest(model_dir)
    base_cfg = model_cfg or ModelConfig()
    if manifest is None:
        cfg = base_cfg.model_copy(update={"name_or_path": str(model_dir)})
        model = load_model(cfg, for_training=False)
        tokenizer = load_tokenizer(cfg)
        return PackagedModel(
            model.to(device), tokenizer, prompt or PromptConfig(), {}, label or model_dir.name
        )

    saved = ModelConfig.model_validate(manifest["model"])
    base = manifest.get("base_model_artifact")
    base_path = str(model_dir / base) if base else manifest["base_model"]
    adapter_dir = model_dir / manifest.get("adapter_dir", "adapter")
    if manifest.get("weights") == "full":
        cfg = saved.model_copy(update={"name_or_path": str(adapter_dir)})
        model = load_model(cfg, for_training=False)
    else:
        cfg = saved.model_copy(update={"name_or_path": base_path})
        model = load_model(cfg, for_training=False, adapter=adapter_dir)
    tokenizer_cfg = saved.model_copy(
        update={"name_or_path": str(model_dir / manifest.get("tokenizer_dir", "tokenizer"))}
    )
    tokenizer = load_tokenizer(tokenizer_cfg)
    return PackagedModel(
        model=model.to(device),
        tokenizer=tokenizer,
        prompt=prompt
        if force_prompt and prompt
        else PromptConfig.model_validate(manifest["prompt"]),
        manifest=manifest,
        label=label or model_dir.name,
    )


def package_full_model(
    model_dir: str | Path,
    output: str | Path,
    *,
    prompt: PromptConfig,
    samples_dir: str | Path | None = None,
) -> Path:
    """Wrap a plain HF model folder (e.g. an untrained tiny or a zero-shot base model) as a
    packaged version folder with full weights, ready for ``registry.register_model_folder``."""
    import shutil

    model_dir, output = Path(model_dir), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, output / "weights", dirs_exist_ok=True)
    manifest = {
        "format_version": 1,
        "base_model": str(model_dir),
        "base_model_artifact": None,
        "weights": "full",
        "adapter_dir": "weights",
        "tokenizer_dir": "weights",
        "prompt": prompt.model_dump(mode="json"),
        "model": ModelConfig(name_or_path=str(model_dir)).model_dump(mode="json"),
        "data": {"samples_dir": None if samples_dir is None else str(samples_dir)},
    }
    (output / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return output
