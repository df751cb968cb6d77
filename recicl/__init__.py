"""recicl: LLM recommenders that follow a user's new interests through in-context learning.

The package is layered left to right: ``data`` (events → samples), ``prompts``, ``modeling``,
``train``, ``evaluate``, ``registry``, ``serve``. Each layer imports only from the ones to its
left plus ``config``.
"""

__version__ = "0.1.0"
