"""Test helpers shared by several modules: packaging and registering models without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from recicl.config import ModelConfig, PromptConfig, ReciclConfig


def package_plain_model(
    model_dir: Path, output: Path, *, samples_dir: Path, prompt: PromptConfig
) -> Path:
    """A registered-version folder (layout: recicl.registry) holding full weights of a plain HF
    model folder, e.g. an untrained tiny model."""
    from recicl.registry import MODEL_MANIFEST

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
        "data": {"samples_dir": str(samples_dir)},
    }
    (output / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output


def register_folder(cfg: ReciclConfig, folder: Path, *, alias: str | None = None) -> str:
    """Log ``folder`` as a run's model artifacts and register a new version (optionally aliased)."""
    from recicl import registry

    uri = registry.resolve_tracking_uri(cfg)
    experiment = registry.ensure_experiment(cfg, uri)
    mlc = registry.client(uri)
    run = mlc.create_run(experiment, run_name=f"register-{folder.name}")
    version = registry.log_model_version(
        tracking_uri=uri,
        run_id=run.info.run_id,
        model_dir=folder,
        registered_model=cfg.mlflow.registered_model,
    )
    mlc.set_terminated(run.info.run_id)
    assert version is not None
    if alias:
        mlc.set_registered_model_alias(cfg.mlflow.registered_model, alias, version)
    return version
