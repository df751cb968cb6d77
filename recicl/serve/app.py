"""The Ray Serve application: build it, start it, run it until a signal.

Two deployments::

    HTTP ──► ReciclAPI (ingress, N replicas)                   ReciclModel (M replicas)
               routes (recicl.serve.api, no Ray):          ──►  champion version + explicit
               validation, the interaction store,               versions (@serve.multiplexed),
               the model by handle (recicl.serve.ingress)       @serve.batch, prefix-shared
                                                                scoring (model_deployment)

**Real-time personalization.** ``POST /v1/events`` appends to the durable interaction store
(:mod:`recicl.serve.store`); ``/v1/score`` and ``/v1/recommend`` read the user's newest stored
events on every request and build the prompt from them with the training semantics
(:func:`recicl.serve.context.context_from_events`), so a new taste shows in the very next request
without retraining.

**Which model.** The model replicas follow ``serve.alias`` (default ``champion``) and hot-swap
when it moves (:mod:`recicl.serve.model_deployment`). A request's optional ``model``
(``"recicl@challenger"``, ``"recicl/3"``) is resolved to a version by the ingress and routed as
the multiplexed model id, if ``serve.selectable_models`` lists it (default: none, 403). Every
score/recommend response carries ``model_version`` and the ``arm`` that answered:
``serve.traffic`` (and ``PUT /admin/traffic``) can send a share of users to a candidate version
(split) or score a candidate beside the champion without answering (shadow), see
:mod:`recicl.serve.traffic`.

**Errors.** JSON ``{"error": code, "detail": text naming the field}``, 4xx for bad input, see
:mod:`recicl.serve.api.errors`. Item ids not in the served version's catalog are 422
``unknown_items`` unless ``serve.allow_unknown_items``; ratings outside the served version's
scale are 422. Unknown *users* are not an error: they are scored cold-start.

The serve config's ``import_path: recicl.serve.app:app_builder`` points here.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application

from recicl.config import ConfigError, ReciclConfig, load_config, with_overrides
from recicl.serve.ingress import IngressDeployment
from recicl.serve.model_deployment import ModelDeployment
from recicl.serve.settings import APP_NAME, ServeError, model_user_config, resolve_settings
from recicl.serve.traffic import check_configured_traffic


def build_app(cfg: ReciclConfig) -> Application:
    """The Serve application for ``cfg`` (ingress bound to the model deployment)."""
    settings = resolve_settings(cfg)
    sc = cfg.serve
    check_configured_traffic(sc.traffic, settings.tracking_uri, settings.model_name)
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    model_options: dict[str, Any] = {
        "max_ongoing_requests": max(2 * sc.max_batch_size, 8),
        "ray_actor_options": {
            "num_cpus": sc.num_cpus,
            "num_gpus": sc.num_gpus,
            "runtime_env": env,
        },
        "user_config": model_user_config(cfg),
        "graceful_shutdown_timeout_s": 20,
    }
    if sc.max_replicas is not None and sc.max_replicas > sc.num_replicas:
        model_options["autoscaling_config"] = {
            "min_replicas": sc.num_replicas,
            "max_replicas": sc.max_replicas,
            "target_ongoing_requests": sc.target_ongoing_requests,
            "upscale_delay_s": sc.upscale_delay_seconds,
            "downscale_delay_s": sc.downscale_delay_seconds,
        }
    else:
        model_options["num_replicas"] = sc.num_replicas
    model = ModelDeployment.options(**model_options).bind(settings)
    return IngressDeployment.options(
        num_replicas=sc.ingress_replicas,
        ray_actor_options={"num_cpus": sc.ingress_num_cpus, "runtime_env": env},
    ).bind(model, settings)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve config entry point (``import_path: recicl.serve.app:app_builder``).

    ``args``: ``config`` (a recicl YAML file; null = defaults) and ``overrides`` (dotted keys,
    e.g. ``{"serve.store_url": "redis://redis:6379/0"}``), applied on top of the file.
    """
    args = dict(args or {})
    config = args.pop("config", None)
    overrides = args.pop("overrides", None) or {}
    if args:
        raise ConfigError(
            f"unknown application args {sorted(args)}: use 'config' (YAML path) and "
            "'overrides' (dotted keys)"
        )
    if not isinstance(overrides, dict):
        raise ConfigError("application arg 'overrides' must be a mapping of dotted keys")
    cfg = with_overrides(load_config(config), overrides)
    return build_app(cfg)


def server_url(cfg: ReciclConfig) -> str:
    prefix = cfg.serve.route_prefix.rstrip("/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}{prefix}"


def start_app(cfg: ReciclConfig, *, wait: bool = True, timeout: float = 180.0) -> str:
    """Start Serve's HTTP proxy on ``serve.host:serve.port``, deploy the app, and return its URL;
    with ``wait``, only once ``/healthz`` answers 200 (a model version is loaded)."""
    import httpx

    from recicl.raycluster import ensure_ray

    ensure_ray(cfg.ray)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix=cfg.serve.route_prefix)
    url = server_url(cfg)
    if not wait:
        return url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServeError(f"the app at {url} did not become healthy within {timeout:.0f}s")


def run_server(
    cfg: ReciclConfig, *, blocking: bool = True, on_ready: Callable[[str], None] | None = None
) -> str:
    """Start Serve (HTTP on ``serve.host:serve.port``), deploy the app, return its URL.

    ``blocking``: wait until SIGTERM/SIGINT, then shut Serve down. Without it the app keeps
    running only as long as the Ray cluster does (use a cluster: ``RAY_ADDRESS``).
    """
    url = start_app(cfg, wait=False)
    if on_ready is not None:
        on_ready(url)
    if blocking:
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            serve.shutdown()
    return url


__all__ = ["app_builder", "build_app", "run_server", "server_url", "start_app"]
