"""What the demonstration policies cost: sample building and served scoring, against `recent`.

Two tables, each with ratios to the ``recent`` policy measured in the same run:

(a) **Sample build** on the bundled MovieLens (100,836 events, real titles): ``build_samples``
    in one process with Ray warm (a first recent build starts the workers), once per policy,
    with the item vectors read from a file so the row measures selection only; one more row
    embeds the catalog inside the build (WordLlama on the actor pool), as a first build does.
(b) **Served scoring** of one request (``run_jobs`` on an in-process ``ServingModel``, the code a
    Serve replica runs) with N candidates for a user with 60 stored events: under ``recent``
    every candidate shares one prefix; under the retrieval policies each candidate has its own
    demonstrations, so a request costs up to N full prompts. Tiny random model by default,
    ``--model DIR`` for a real one (e.g. .cache/models/gemma-3-270m).

(c) **Model-free readers** (``--readers``), per policy and period, on the bundled MovieLens
    (D6-D9) and on synthetic drift data (every user switches genres at about 60 % of the
    timeline): the AUC of two scores a sample's demonstrations give without any model. The
    like rate (share of Yes among them) and a similarity vote (sum over demonstrations of
    similarity to the target x (+1 liked, -1 not)), the verdict a reader that copies similar
    demonstrations would reach. It shows what each policy puts *in* the prompt, not what a
    model makes of it (the Gemma table in docs/results/demo-policies.md does that).

    python benchmarks/bench_policies.py [--repeats 3] [--sizes 5,20] [--model DIR] [--skip-build]
    python benchmarks/bench_policies.py --readers
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

POLICIES = {
    "recent": {},
    "semantic": {"demo_policy": "semantic", "history_policy": "semantic"},
    "mixed": {"demo_policy": "mixed", "history_policy": "semantic"},
    "quality": {"demo_policy": "quality"},
}
QUALITY = {"features": ["similarity", "age", "liked", "similarity_x_liked"],
           "weights": [1.0, -0.5, 0.1, 0.0]}  # fmt: skip


def bench_build(root: Path, repeats: int) -> list[dict]:
    import json

    from recicl.config import build_config
    from recicl.data.item_embeddings import ItemEmbeddings
    from recicl.data.pipeline import build_samples
    from recicl.embeddings import embed_catalog

    def config(name: str, **samples):
        return build_config({"samples": {"output": str(root / name), "num_demos": 8, **samples}})

    first = build_samples(config("warm-up"))  # Ray and its workers up; the catalog on disk
    catalog_cfg = config("x")
    import pyarrow.parquet as pq

    catalog = pq.read_table(root / "warm-up" / "catalog.parquet")
    started = time.perf_counter()
    vectors = embed_catalog(catalog, catalog_cfg)
    embed_seconds = time.perf_counter() - started
    vectors_path = vectors.save(root / "vectors.parquet")
    quality_path = root / "quality.json"
    quality_path.write_text(json.dumps(QUALITY))
    assert isinstance(vectors, ItemEmbeddings)
    rows = []
    for name, policy in POLICIES.items():
        extra = {"embeddings": str(vectors_path)} if name != "recent" else {}
        if name == "quality":
            extra["demo_quality"] = str(quality_path)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            build_samples(config(name, **policy, **extra))
            seconds.append(time.perf_counter() - t0)
        rows.append({"path": f"build, {name}", "seconds": seconds})
    t0 = time.perf_counter()
    build_samples(
        config("embeds", **POLICIES["semantic"]), embedder=lambda c: embed_catalog(c, catalog_cfg)
    )
    rows.append(
        {"path": "build, semantic, embedding the catalog", "seconds": [time.perf_counter() - t0]}
    )
    for row in rows:
        row["samples"] = first["samples"]
    print(f"\nembedding {len(vectors):,} catalog items alone: {embed_seconds:.1f} s "
          f"({len(vectors) / embed_seconds:,.0f} items/s, WordLlama, actor pool)")  # fmt: skip
    return rows


def bench_serving(root: Path, sizes: list[int], repeats: int, model_dir: str | None) -> list[dict]:
    import numpy as np
    import pyarrow.parquet as pq

    from recicl.config import ModelConfig, PromptConfig
    from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
    from recicl.data.retrieval import DemoQuality
    from recicl.data.samples import Selection
    from recicl.modeling import answer_token_ids, init_tiny_model, load_model, load_tokenizer
    from recicl.modeling.prefix_sharing import CandidateScorer
    from recicl.prompts import PromptBuilder
    from recicl.serve.api.backend import ModelJob
    from recicl.serve.context import contexts_for
    from recicl.serve.serving_model import ServingModel, group_by_context, run_jobs
    from recicl.serve.store import Event

    catalog_path = next(root.glob("*/catalog.parquet"), None)
    if catalog_path is None:
        from recicl.config import build_config
        from recicl.data.pipeline import build_samples

        build_samples(build_config({"samples": {"output": str(root / "serve-samples")}}))
        catalog_path = root / "serve-samples" / "catalog.parquet"
    catalog = pq.read_table(catalog_path)
    prompt = PromptConfig(demo_history_len=0)
    if model_dir is None:
        model_dir = str(init_tiny_model(catalog_path, root / "tiny", prompt_config=prompt))
    model_cfg = ModelConfig(name_or_path=model_dir)
    model = load_model(model_cfg, for_training=False)
    tokenizer = load_tokenizer(model_cfg)
    builder = PromptBuilder(prompt, catalog, tokenizer)
    scorer = CandidateScorer(model, tokenizer, builder, answer_token_ids(tokenizer))
    ids = [str(i) for i in catalog["item_id"].to_pylist()]
    vectors_file = root / "vectors.parquet"
    if vectors_file.is_file():
        vectors = ItemEmbeddings.load(vectors_file)
    else:  # no build table: random vectors cost the same to select with
        rng = np.random.default_rng(0)
        vectors = ItemEmbeddings(tuple(ids), unit_rows(rng.normal(size=(len(ids), 64))))
    rng = np.random.default_rng(1)
    events = tuple(
        Event("u", ids[int(i)], int(rng.integers(0, 2)), 1_000 + t)
        for t, i in enumerate(rng.choice(len(ids), 60, replace=False))
    )
    rows = []
    for n in sizes:
        candidates = tuple(ids[1000 : 1000 + n])
        timings: dict[str, float] = {}
        prompts: dict[str, int] = {}
        for name, policy in POLICIES.items():
            selection = Selection(
                demo_policy=policy.get("demo_policy", "recent"),
                history_policy=policy.get("history_policy", "recent"),
                window=200,
                embeddings=vectors,
                quality=DemoQuality(tuple(QUALITY["weights"])),
            )
            served = ServingModel(
                version="1", label="bench/1", scorer=scorer, catalog_ids=frozenset(ids),
                catalog_order=ids, catalog_path=str(catalog_path), num_demos=8, history_len=10,
                prompt_format="recicl", rating_range=None, selection=selection,
            )  # fmt: skip
            job = ModelJob("u", events, candidates)
            run_jobs(served, [job])  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run_jobs(served, [job])
                times.append(time.perf_counter() - t0)
            timings[name] = statistics.median(times)
            contexts = contexts_for(events, list(candidates), 8, 10, selection)
            prompts[name] = len(group_by_context(list(candidates), contexts)[0])
        for name in POLICIES:
            rows.append(
                {
                    "N": n,
                    "policy": name,
                    "ms": timings[name] * 1e3,
                    "prefixes": prompts[name],
                    "ratio": timings[name] / timings["recent"],
                }
            )
    return rows


def reader_aucs(folder_path: Path, periods: list[int]) -> dict[int, tuple[float, float]]:
    """(like-rate AUC, similarity-vote AUC) per period of a built samples folder."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from recicl.data.item_embeddings import ItemEmbeddings, similarities
    from recicl.data.samples_folder import SamplesFolder

    folder = SamplesFolder.at(folder_path)
    vectors = ItemEmbeddings.load(folder.embeddings_path)
    out = {}
    for period in periods:
        table = folder.read_table([period])
        labels = np.asarray(table["label"].to_pylist())
        rate, vote = [], []
        for target, demos in zip(
            table["item_id"].to_pylist(), table["demos"].to_pylist(), strict=True
        ):
            ys = np.array([2 * d["label"] - 1 for d in demos], dtype=float)
            rate.append(float((ys > 0).mean()))
            sims = similarities(
                vectors.vectors([target]), vectors.vectors([d["item_id"] for d in demos])
            )[0]
            vote.append(float((sims * ys).sum()))
        out[period] = (roc_auc_score(labels, rate), roc_auc_score(labels, vote))
    return out


def bench_readers(root: Path, quality_file: Path | None) -> None:
    import json
    import shutil

    import pyarrow.parquet as pq

    from recicl.config import build_config
    from recicl.data.pipeline import build_samples
    from recicl.data.synth import SynthSpec, write_synthetic
    from recicl.embeddings import embed_catalog

    synth = root / "synth"
    spec = SynthSpec(users=400, events_per_user=60, seed=0)
    write_synthetic(spec, synth)
    drift_period = int(spec.drift_at * 10)
    sources = {
        "MovieLens": ({}, [6, 7, 8, 9]),
        "synthetic drift": ({"source": "parquet", "path": str(synth)}, list(range(1, 10))),
    }
    quality_path = quality_file or root / "reader-quality.json"
    if quality_file is None:
        quality_path.write_text(json.dumps(QUALITY))
    for source, (data, periods) in sources.items():
        results: dict[str, Path] = {}
        vectors_path = root / f"r-{source}-vectors.parquet"
        for name, policy in POLICIES.items():
            extra: dict = {"demo_quality": str(quality_path)} if name == "quality" else {}
            if name != "recent":
                extra["embeddings"] = str(vectors_path)
            folder = root / f"r-{source}-{name}"
            cfg = build_config(
                {"data": data, "samples": {"output": str(folder), "num_demos": 8,
                 "periods": 10, **policy, **extra}}
            )  # fmt: skip
            build_samples(cfg)
            if name == "recent":  # one set of vectors for every policy and for the readers
                catalog = pq.read_table(folder / "catalog.parquet")
                embed_catalog(catalog, cfg).save(vectors_path)
                shutil.copy(vectors_path, folder / "item_embeddings.parquet")
            results[name] = folder
        aucs = {name: reader_aucs(folder, periods) for name, folder in results.items()}
        note = f" (drift at ~D{drift_period})" if source.startswith("synthetic") else ""
        print(f"\n(c) model-free readers, {source}{note}: like-rate AUC / similarity-vote AUC\n")
        print("| policy | " + " | ".join(f"D{p}" for p in periods) + " |")
        print("|---|" + "---|" * len(periods))
        for name in POLICIES:
            cells = [f"{aucs[name][p][0]:.3f} / {aucs[name][p][1]:.3f}" for p in periods]
            print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="5,20")
    parser.add_argument("--model", help="HF folder to serve with (default: a tiny random model)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for (b)")
    parser.add_argument("--skip-build", action="store_true", help="table (b) only")
    parser.add_argument("--readers", action="store_true", help="table (c) only")
    parser.add_argument(
        "--quality", type=Path, help="(c): a fitted demo_quality.json (default: fixed weights)"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as tmp:
        root = Path(tmp)
        if args.readers:
            bench_readers(root, args.quality)
            return
        if not args.skip_build:
            rows = bench_build(root, args.repeats)
            base = statistics.median(rows[0]["seconds"])
            print("\n(a) sample build, bundled MovieLens, 8 demos, Ray warm, median of "
                  f"{args.repeats}\n")  # fmt: skip
            print("| path | seconds (median, range) | samples/s | ratio to recent |")
            print("|---|---|---|---|")
            for row in rows:
                s = row["seconds"]
                med = statistics.median(s)
                print(f"| {row['path']} | {med:.2f} ({min(s):.2f}-{max(s):.2f}) | "
                      f"{row['samples'] / med:,.0f} | {med / base:.2f}x |")  # fmt: skip
        rows = bench_serving(
            root, [int(n) for n in args.sizes.split(",")], args.repeats, args.model
        )
        label = args.model or "tiny random model"
        print(f"\n(b) one served request, 60 stored events, 8 demos, {label}, "
              f"{args.threads} threads, median of {args.repeats}\n")  # fmt: skip
        print("| N candidates | policy | ms | distinct prefixes | ratio to recent |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['N']} | {row['policy']} | {row['ms']:.1f} | {row['prefixes']} | "
                  f"{row['ratio']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
