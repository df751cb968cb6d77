"""The whole configuration: one section per stage, assembled from the section modules."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from recicl.config.base import StrictModel
from recicl.config.data import DataConfig, SamplesConfig
from recicl.config.embeddings import EmbeddingsConfig
from recicl.config.experiment import ExperimentConfig
from recicl.config.model import ModelConfig, PromptConfig
from recicl.config.services import (
    EvaluateConfig,
    MLflowConfig,
    MonitorConfig,
    RayConfig,
    RetuneConfig,
    ServeConfig,
)
from recicl.config.train import TrainConfig


class ReciclConfig(StrictModel):
    """The whole configuration: one section per stage."""

    workdir: str = Field(
        "recicl-work", description="Folder for embedded state (MLflow DB, events DB, outputs)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    embeddings: EmbeddingsConfig = Field(
        default_factory=EmbeddingsConfig, description="Item embeddings (`recicl embed items`)."
    )
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
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig, description="When live figures say re-tune or roll back."
    )
    retune: RetuneConfig = Field(
        default_factory=RetuneConfig,
        description="Re-tuning the champion on what serving stored (`recicl retune`).",
    )

    def redacted_dump(self) -> dict[str, Any]:
        """The configuration as JSON with its secrets masked: what may be logged to MLflow or
        written into a model version, which anyone who can read the registry can read.
        Secrets are the fields named like one (``admin_token``, ``*_password``, ``*_secret``...)
        and the password of any URL (``redis://:pw@host``, ``https://user:pw@mlflow``)."""
        return _redact(self.model_dump(mode="json"))

    def work_folder(self) -> Path:
        """``workdir`` as an absolute path. A relative one is resolved against the current
        directory, so a command resolves it once (``recicl.registry.Workspace``) and hands the
        result to whatever runs elsewhere (Ray workers, Serve replicas)."""
        return Path(self.workdir).expanduser().resolve()

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all if none), recorded in manifests."""
        dump = self.model_dump(mode="json")
        chosen = {k: dump[k] for k in sections} if sections else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


REDACTED = "***"
#: Field names of secrets: ``admin_token``, ``*_password``... (not ``max_text_tokens``).
_SECRET_KEY = re.compile(
    r"(^|_)(token|password|passwd|secret|credentials?|api_key)$", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", re.IGNORECASE)


def _redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets masked (see :meth:`ReciclConfig.redacted_dump`)."""
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if value is None or value == "":
        return value
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", value)
    return value
