"""The served model over HTTP against the forward-pass limit: /v1/score and /v1/recommend.

What a user of ``serve run serve_configs/local.yaml`` waits for, beside two references measured
in the same run on the same machine:

* **in-process**: the replica's own code path (``serving_model.run_jobs`` on a version loaded
  by ``load_serving_model`` from the same registry), called directly in this process with the
  replica's thread count: the HTTP column minus this one is what Serve, the ingress, the
  interaction store and HTTP add;
* **forward limit**: one plain forward pass of the same model over the request's own tokens
  (the shared prefix followed by every candidate's question, concatenated; no cache, the LM head
  at one position). Prefix sharing cannot do less work than reading each token once, so
  ``limit / HTTP`` is the share of the forward-limited ideal the service reaches.

The model is registered on a temporary MLflow store (SQLite) as the champion: by default the
imported Gemma 3 270M as it is, in ``--dtype`` (bfloat16, as the CPU recipe tunes and serves
it). A tuned LoRA version is merged into the same shapes when a replica loads it, so it costs
the same. The catalog is the bundled MovieLens; the recipe's prompt settings come from
``--config``. The app runs on 127.0.0.1 as ``serve_configs/local.yaml`` sets it up: the model
replica holds 1.5 CPUs (2 torch threads), the ingress 0.5. Requests are sequential (latency,
not throughput: ``bench_serve.py`` loads the service), each case warmed up once.

    python benchmarks/bench_served.py [--model .cache/models/gemma-3-270m] [--repeats 15]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import (  # noqa: E402  (after the path fix)
    _best_time,
    _free_port,
    _percentile,
)
from recicl.serve.serving_model import run_jobs  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MOVIELENS = ROOT / "recicl" / "datasets" / "ml-latest-small"
CONTEXT_USER = 414  # a MovieLens user with hundreds of ratings: their newest events are the context
REPLICA_CPUS = 1.5  # as serve_configs/local.yaml: 2 torch threads on a 2-core machine


@dataclass(frozen=True)
class Case:
    """One kind of request: which route, how many stored events, how many candidates."""

    route: str  # "score" or "recommend"
    context: int
    candidates: int

    @property
    def name(self) -> str:
        return f"/v1/{self.route} {self.candidates} cand, {self.context} events"


def movielens_catalog(folder: Path) -> Path:
    """The bundled MovieLens movies as a recicl catalog (CATALOG schema), in ``folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recicl.data.schema import CATALOG

    with (MOVIELENS / "movies.csv").open(newline="", encoding="utf-8") as handle:
        rows = [
            {
                "item_id": row["movieId"],
                "title": row["title"],
                "attributes": [("genres", row["genres"])]
                if row["genres"] != "(no genres listed)"
                else [],
            }
            for row in csv.DictReader(handle)
        ]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG), folder / "catalog.parquet")
    return folder / "catalog.parquet"


def user_events(context: int) -> list[dict]:
    """The newest ``context`` ratings of CONTEXT_USER as /v1/events rows (liked: rating >= 4),
    re-timed to end now (so that /v1/recommend's recent-popular pool sees them)."""
    with (MOVIELENS / "ratings.csv").open(newline="", encoding="utf-8") as handle:
        mine = [row for row in csv.DictReader(handle) if int(row["userId"]) == CONTEXT_USER]
    mine.sort(key=lambda row: int(row["timestamp"]))
    newest = mine[-context:] if context else []
    now = int(time.time())
    return [
        {
            "user_id": f"u{context}",
            "item_id": row["movieId"],
            "label": int(float(row["rating"]) >= 4.0),
            "timestamp": now - len(newest) + k,
        }
        for k, row in enumerate(newest)
    ]


def register(root: Path, model_dir: str, config: str, dtype: str, pool: int):
    """The recipe's config pointed at a temporary workdir, and ``model_dir`` registered in it as
    the champion (full weights, the recipe's prompt, the MovieLens catalog)."""
    from recicl.config import load_config, with_overrides
    from recicl.modeling.packaged import package_full_model
    from recicl.registry import default_tracking_uri, register_model_folder

    samples = root / "samples"
    movielens_catalog(samples)
    cfg = with_overrides(
        load_config(config),
        {
            "workdir": str(root / "work"),
            # its own store even where $MLFLOW_TRACKING_URI names a real one
            "mlflow.tracking_uri": default_tracking_uri(root / "work"),
            "model.name_or_path": model_dir,
            "model.dtype": dtype,
            "ray.num_cpus": 2,
            "serve.host": "127.0.0.1",
            "serve.port": _free_port(),
            "serve.max_candidates": 200,
            "serve.candidate_pool_size": max(pool, 1),
            "serve.num_cpus": REPLICA_CPUS,
        },
    )
    packaged = package_full_model(
        model_dir, root / "packaged", prompt=cfg.prompt, samples_dir=samples, model=cfg.model
    )
    version = register_model_folder(cfg, packaged, alias="champion")
    return cfg, version


def candidates_for(case: Case, catalog: list[str], seen: set[str]) -> list[str] | None:
    """/v1/score: the first unseen catalog items; /v1/recommend: None (the app fills its pool)."""
    if case.route == "recommend":
        return None
    return [item for item in catalog if item not in seen][: case.candidates]


def in_process(
    cfg, version: str, cases: list[Case], repeats: int, profile: Case | None = None
) -> dict[Case, dict]:
    """Latency of the replica's code path in this process, the request's tokens, and the
    forward-pass limit for those tokens; with ``profile``, where that case's time goes."""
    import torch

    from recicl.modeling.threads import apply_torch_threads
    from recicl.registry import resolve_tracking_uri
    from recicl.serve.api.backend import ModelJob
    from recicl.serve.context import contexts_for
    from recicl.serve.serving_model import fill_pool, group_by_context, load_serving_model
    from recicl.serve.store.base import Event

    threads = apply_torch_threads("bench (in-process)", cfg.model.num_threads, REPLICA_CPUS)
    model = load_serving_model(cfg, resolve_tracking_uri(cfg), cfg.mlflow.registered_model, version)
    out: dict[Case, dict] = {}
    jobs: dict[Case, ModelJob] = {}
    for case in cases:
        events = tuple(Event(**e) for e in user_events(case.context))
        seen = {e.item_id for e in events}
        candidates = candidates_for(case, model.catalog_order, seen)
        job = ModelJob(
            f"u{case.context}",
            events,
            None if candidates is None else tuple(candidates),
            exclude=frozenset(seen),
            pool_size=case.candidates if candidates is None else 0,
        )
        jobs[case] = job
        items = fill_pool(model, job) if candidates is None else candidates
        contexts = contexts_for(events, items, model.num_demos, model.history_len, model.selection)
        prompts, _ = group_by_context(items, contexts)
        tokens: list[int] = []
        for prompt in prompts:
            prefix, suffixes = model.scorer.encode(prompt)
            tokens += prefix + [t for s in suffixes for t in s]
        times = []
        for k in range(repeats + 1):  # the first one warms up
            started = time.perf_counter()
            reply = run_jobs(model, [job])[0]
            if k:
                times.append(time.perf_counter() - started)
        assert len(reply.scores) == len(items), reply  # type: ignore[union-attr]
        out[case] = {
            "tokens": len(tokens),
            "prefix_tokens": len(model.scorer.encode(prompts[0])[0]),
            "in_process": times,
            "limit": _forward_time(model.scorer.model, tokens, repeats=3),
            "scores": dict(reply.scores),  # type: ignore[union-attr]
        }
    print(f"in-process: torch threads {threads} (torch reports {torch.get_num_threads()})")
    largest = max(jobs, key=lambda c: (c.context, c.candidates))
    _batch_scoring(model, jobs[largest], list(out[largest]["scores"]), cfg.evaluate.batch_size)
    if profile:
        _profile(model, jobs[profile], profile)
    del model
    return out


def _profile(model, job, case: Case) -> None:
    """Where one request of ``case`` spends its time: torch's operators (self CPU time), and
    the Python functions of the path around them."""
    import cProfile
    import pstats

    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_jobs(model, [job])
    print(f"\nprofile of one {case.name} (torch operators, by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    python = cProfile.Profile()
    python.runcall(run_jobs, model, [job])
    print(f"profile of one {case.name} (Python functions, by cumulative time):")
    pstats.Stats(python).sort_stats("cumulative").print_stats(18)


def _batch_scoring(model, job, items: list[str], batch_size: int, repeats: int = 3) -> None:
    """Batch scoring (what `recicl evaluate` and the streaming experiment's actors run): whole
    prompts, each the largest case's prefix plus one of its candidates, ``batch_size`` a
    forward pass, against plain forward passes over the same padded batches."""
    import torch

    from recicl.modeling import score_prompts
    from recicl.modeling.scoring import last_position
    from recicl.serve.context import contexts_for
    from recicl.serve.serving_model import group_by_context

    contexts = contexts_for(job.events, items, model.num_demos, model.history_len, model.selection)
    prefix, suffixes = model.scorer.encode(group_by_context(items, contexts)[0][0])
    prompts = [prefix + suffix for suffix in suffixes][:batch_size]
    prompts = (prompts * (batch_size // len(prompts) + 1))[:batch_size]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), model.scorer.pad_id)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
    tokens = sum(len(p) for p in prompts)

    def scored() -> None:
        score_prompts(
            model.scorer.model,
            model.scorer.tokenizer,
            prompts,
            batch_size,
            answer_tokens=model.scorer.answer_tokens,
        )

    def forward() -> None:
        with torch.inference_mode():
            model.scorer.model(input_ids=ids, use_cache=False, logits_to_keep=last_position(ids))

    best = {"scored": _warm_best(scored, repeats), "forward": _warm_best(forward, repeats)}
    print(
        f"batch scoring: {len(prompts)} prompts of {tokens / len(prompts):.0f} tokens: "
        f"{tokens / best['scored']:,.0f} tokens/s ({len(prompts) / best['scored']:.2f} prompts/s); "
        f"plain forward over the same batch {tokens / best['forward']:,.0f} tokens/s: "
        f"{best['forward'] / best['scored']:.0%} of the limit"
    )


def _warm_best(fn, repeats: int) -> float:
    fn()  # warm-up
    return _best_time(fn, repeats)


def _forward_time(model, tokens: list[int], repeats: int) -> float:
    """Best time of one plain forward pass over ``tokens`` (LM head at the last position)."""
    import torch

    from recicl.modeling.scoring import last_position

    ids = torch.tensor([tokens])

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=last_position(ids))

    return _warm_best(forward, repeats)


def over_http(cfg, cases: list[Case], repeats: int, expected: dict[Case, dict]) -> dict[Case, list]:
    """Latency of each case through the running app (sequential requests)."""
    import httpx
    from ray import serve

    from recicl.serve.app import start_app

    url = start_app(cfg, timeout=600)
    out: dict[Case, list] = {}
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            served = client.get("/v1/models").json()["served"]
            print(f"served: {served['model']} (torch threads {served['torch_threads']})")
            for context in {case.context for case in cases}:  # each user's events, once
                if context:
                    client.post("/v1/events", json=user_events(context)).raise_for_status()
            for case in cases:
                user = f"u{case.context}"
                wanted = list(expected[case]["scores"])
                if case.route == "score":
                    body, path = {"user_id": user, "candidates": wanted}, "/v1/score"
                else:
                    body, path = {"user_id": user, "k": 10}, "/v1/recommend"
                times = []
                for k in range(repeats + 1):
                    started = time.perf_counter()
                    reply = client.post(path, json=body)
                    elapsed = time.perf_counter() - started
                    reply.raise_for_status()
                    if k:
                        times.append(elapsed)
                got = reply.json()
                _check(case, got, expected[case]["scores"])
                out[case] = times
    finally:
        serve.shutdown()
    return out


def _check(case: Case, reply: dict, expected: dict[str, float]) -> None:
    """The HTTP answer scores what the in-process run scored, with the same scores."""
    if case.route == "score":
        served = {row["item_id"]: row["score"] for row in reply["scores"]}
    else:
        if reply["candidates_scored"] != len(expected):
            raise SystemExit(f"{case.name}: served {reply['candidates_scored']} candidates")
        served = {row["item_id"]: row["score"] for row in reply["items"]}
    missing = sorted(set(served) - set(expected))
    if missing:
        raise SystemExit(f"{case.name}: HTTP scored items the in-process run did not: {missing}")
    worst = max(abs(served[item] - expected[item]) for item in served)
    if worst > 1e-4:
        raise SystemExit(f"{case.name}: HTTP and in-process scores differ by {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".cache/models/gemma-3-270m"))
    parser.add_argument("--config", default=str(ROOT / "ray_jobs/configs/gemma3-270m-cpu.yaml"))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=15, help="timed requests per case")
    parser.add_argument("--sizes", default="1,5,20", help="/v1/score candidate counts")
    parser.add_argument("--contexts", default="0,24", help="stored events of the user")
    parser.add_argument("--pool", type=int, default=100, help="/v1/recommend pool (0: skip)")
    parser.add_argument(
        "--profile", action="store_true", help="profile one request of the largest /v1/score case"
    )
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        raise SystemExit(f"no HF model folder at {args.model}: run `make model` first")
    contexts = [int(c) for c in args.contexts.split(",")]
    cases = [Case("score", c, int(n)) for c in contexts for n in args.sizes.split(",") if n.strip()]
    if args.pool:
        cases.append(Case("recommend", max(contexts), args.pool))
    root = Path(tempfile.mkdtemp(prefix="bench-served-"))
    try:
        cfg, version = register(root, args.model, args.config, args.dtype, args.pool)
        profiled = max(
            (c for c in cases if c.route == "score"), key=lambda c: (c.context, c.candidates)
        )
        local = in_process(cfg, version, cases, args.repeats, profiled if args.profile else None)
        served = over_http(cfg, cases, args.repeats, local)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nServed {Path(args.model).name} ({args.dtype}), {args.repeats} sequential requests a "
        f"case after one warm-up; limit = one forward pass over the request's tokens (best of 3)"
    )
    print(
        "| request | tokens (prefix) | HTTP p50 ms | HTTP p99 ms | in-process p50 ms "
        "| forward limit ms | HTTP / in-process | limit / HTTP p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        row, http = local[case], served[case]
        p50, p99 = _percentile(http, 50) * 1e3, _percentile(http, 99) * 1e3
        own = statistics.median(row["in_process"]) * 1e3
        limit = row["limit"] * 1e3
        print(
            f"| {case.name} | {row['tokens']} ({row['prefix_tokens']}) | {p50:,.0f} | {p99:,.0f} "
            f"| {own:,.0f} | {limit:,.0f} | {p50 / own:.2f}x | {limit / p50:.0%} |"
        )


if __name__ == "__main__":
    main()
