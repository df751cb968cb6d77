"""Serving: the HTTP API (``api``, Ray-free), the Serve deployments (``ingress``,
``model_deployment``), app building (``app``), prompt context and the interaction store."""
