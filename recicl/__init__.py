"""recicl: LLM recommenders that follow a user's new interests through in-context learning.

The package is layered left to right: ``data`` (events → samples), ``prompts``, ``modeling``,
``train``, ``evaluate``, ``serve``; each imports only from the ones to its left plus ``config``,
``errors``, ``raycluster`` and ``registry``. ``registry`` is the MLflow layer every stage that
logs or loads a model version needs (training registers, evaluation and serving load); its
promotion gate calls back into ``evaluate`` lazily, only when it must evaluate a version.
"""

__version__ = "0.1.0"
