"""Typed configuration for every stage, loaded from YAML.

Why pydantic with ``extra="forbid"`` everywhere: a typo in a YAML key (``num_demo``) must fail
loudly and name the key, not silently fall back to a default and produce a different dataset.
Each field's ``description`` is the documentation users see (``recicl config show``) and the
README's configuration table is generated from the same text.

Import everything from here (``from recicl.config import ReciclConfig``); the modules are:

- :mod:`~recicl.config.base`: the strict base model, :class:`ConfigError`, period syntax;
- :mod:`~recicl.config.data`, :mod:`~recicl.config.embeddings`, :mod:`~recicl.config.model`,
  :mod:`~recicl.config.train`, :mod:`~recicl.config.services`,
  :mod:`~recicl.config.experiment`: the sections, grouped by stage
  (:mod:`~recicl.config.access`: ``serve.access``, the API's credentials, rates and quotas);
- :mod:`~recicl.config.root`: :class:`ReciclConfig`, one field per section;
- :mod:`~recicl.config.loading`: YAML files and flag overrides → a validated config;
- :mod:`~recicl.config.reference`: the generated key/default/meaning table.
"""

from recicl.config.access import AccessConfig
from recicl.config.base import ConfigError, StrictModel, parse_periods
from recicl.config.data import (
    BUNDLED_MOVIELENS,
    CatalogMapping,
    ColumnMapping,
    DataConfig,
    SamplesConfig,
    SourceName,
    TimestampUnit,
)
from recicl.config.embeddings import EmbeddingsConfig, EncoderName
from recicl.config.experiment import ExperimentConfig, PerturbationName, StreamingVariant
from recicl.config.loading import build_config, load_config, with_overrides
from recicl.config.model import (
    ITEM_STATS_META_KEY,
    LoraSettings,
    ModelConfig,
    PromptConfig,
    TinyModelSettings,
)
from recicl.config.reference import reference_markdown, reference_rows
from recicl.config.root import ReciclConfig
from recicl.config.services import (
    EvaluateConfig,
    FeedbackConfig,
    LivePromotionConfig,
    MLflowConfig,
    MonitorConfig,
    RayConfig,
    RetuneConfig,
    ServeConfig,
    ShadowConfig,
    SplitConfig,
    TrafficConfig,
)
from recicl.config.train import PerturbConfig, TrainConfig, TrainStage

__all__ = [
    "BUNDLED_MOVIELENS",
    "ITEM_STATS_META_KEY",
    "AccessConfig",
    "CatalogMapping",
    "ColumnMapping",
    "ConfigError",
    "DataConfig",
    "EmbeddingsConfig",
    "EncoderName",
    "EvaluateConfig",
    "ExperimentConfig",
    "FeedbackConfig",
    "LivePromotionConfig",
    "LoraSettings",
    "MLflowConfig",
    "ModelConfig",
    "MonitorConfig",
    "PerturbConfig",
    "PerturbationName",
    "PromptConfig",
    "RayConfig",
    "ReciclConfig",
    "RetuneConfig",
    "SamplesConfig",
    "ServeConfig",
    "ShadowConfig",
    "SourceName",
    "SplitConfig",
    "StreamingVariant",
    "StrictModel",
    "TimestampUnit",
    "TinyModelSettings",
    "TrafficConfig",
    "TrainConfig",
    "TrainStage",
    "build_config",
    "load_config",
    "parse_periods",
    "reference_markdown",
    "reference_rows",
    "with_overrides",
]
