"""recicl: LLM recommenders that follow a user's new interests through in-context learning.

The package is layered, lowest first; a module imports only from its own unit and from lower
layers, and units on one line are siblings that never import each other (so training and
evaluation stay independent, and whatever needs both sits above them):

1. ``recicl``, ``errors``, ``lazy``: the version, user-fixable error types, lazy package exports.
2. ``config``: the typed YAML configuration of every stage.
3. ``raycluster``, ``deploy``: connecting to Ray (cluster or embedded); KubeRay manifests.
4. ``data``, ``prompts``: events → ICL samples (readers, periods, Ray Data pipeline); the one
   prompt builder that training, evaluation and serving share.
5. ``modeling``, ``reports``: loading, importing, packaging and scoring models; the console
   tables printed after a build, evaluation or experiment.
6. ``registry``, ``embeddings``: MLflow runs and registered versions; item embeddings.
7. ``train``, ``evaluate``: Ray Train LoRA tuning; batch scoring, metrics and baselines.
8. ``promotion``, ``serve``: the registry's promotion gate; the Ray Serve app, HTTP API and
   interaction store.
9. ``experiments``, ``updates``: protocols that train and evaluate (streaming, taste switch);
   the update loop (monitor the feedback log, re-tune, roll back).
10. ``demo``: the whole loop end to end on the bundled data.
11. ``cli``: the ``recicl`` command line.

The table ``LAYERS`` in ``tests/unit/test_layers.py`` is this order, and that test enforces it on
every import, including those inside functions and under ``TYPE_CHECKING``.
"""

__version__ = "0.1.0"
