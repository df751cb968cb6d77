"""Item-embedding throughput: one encoder in this process vs the Ray Data actor pool job.

The catalog is the bundled MovieLens latest-small (9,742 movies, title + genres). Three paths,
each from a loaded config to the vectors in catalog order, encoder loading included:

* ``in-process``: :func:`recicl.embeddings.embed_in_process`, one encoder, batch after batch,
  no Ray (the baseline every ratio is against);
* ``ray pool xN``: :func:`recicl.embeddings.embed_catalog`, the job `recicl embed items` runs,
  with N replicas (``embeddings.concurrency``). Ray itself is started once before timing, as in
  a long-running driver; each job still starts its own actors (worker processes importing Ray,
  pyarrow and the encoder) and loads the encoder in each.

Also printed, not timed against: the encoder's pure ``encode`` rate once loaded (what the pool's
fixed costs are compared with). Each path runs ``--repeats`` times, alternating; the table shows
the median and the range. The job's vectors are checked against the baseline's (bit for bit
for WordLlama; for an LLM within two steps of the file's 2**-16 grid, since its float sums
depend in the last bits on how a batch is padded).

    python benchmarks/bench_embed.py [--repeats 3]
    python benchmarks/bench_embed.py --encoder llm --model .cache/models/gemma-3-270m --limit 256

A 268M-parameter model encodes a few items per second per core, so ``--limit N`` embeds the
first N catalog items only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def movielens_catalog():
    """The bundled MovieLens catalog in the CATALOG schema, read by the project's own reader."""
    from recicl.config import BUNDLED_MOVIELENS
    from recicl.data.readers.movielens import read_movielens

    return read_movielens(BUNDLED_MOVIELENS).catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="wordllama", choices=["wordllama", "llm"])
    parser.add_argument("--model", default=None, help="llm: model folder (HF format).")
    parser.add_argument("--limit", type=int, default=None, help="Embed the first N items only.")
    parser.add_argument("--batch-size", type=int, default=None, help="embeddings.batch_size.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pools", default="1,2", help="Replica counts of the Ray path.")
    args = parser.parse_args()

    import numpy as np
    import ray.data

    from recicl.config import build_config
    from recicl.data.item_embeddings import GRID
    from recicl.embeddings import embed_catalog, embed_in_process, load_encoder
    from recicl.embeddings.encoders import EncoderSpec, catalog_texts
    from recicl.raycluster import ensure_ray, local_core_limit

    section: dict = {"encoder": args.encoder}
    if args.model:
        section["model"] = args.model
    if args.batch_size:
        section["batch_size"] = args.batch_size
    base = build_config({"embeddings": section})
    ensure_ray(base.ray, dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    catalog = movielens_catalog()
    if args.limit:
        catalog = catalog.slice(0, args.limit)
    items = catalog.num_rows
    pools = [int(p) for p in args.pools.split(",") if p]

    def with_pool(replicas: int):
        return base.model_copy(
            update={"embeddings": base.embeddings.model_copy(update={"concurrency": replicas})}
        )

    paths = {"in-process": lambda: embed_in_process(catalog, base)}
    for replicas in pools:
        paths[f"ray pool x{replicas}"] = lambda r=replicas: embed_catalog(catalog, with_pool(r))

    seconds: dict[str, list[float]] = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - started)

    reference = outputs["in-process"].matrix
    checks = {}
    for name, result in outputs.items():
        if args.encoder == "wordllama":
            checks[name] = "identical" if np.array_equal(result.matrix, reference) else "DIFFER"
        else:
            # unit vectors on the file's 2**-16 grid: a last-bit difference in a float sum
            # may round a component to the next grid step, so allow two steps
            gap = float(np.abs(result.matrix - reference).max())
            ok = gap <= 2 * GRID
            checks[name] = f"max |diff| {gap:.1e}" + ("" if ok else " (over 2 grid steps!)")

    encoder = load_encoder(EncoderSpec.from_config(base))
    texts = catalog_texts(catalog)
    size = base.embeddings.batch_size
    started = time.perf_counter()
    for start in range(0, items, size):
        encoder.encode(texts[start : start + size])
    encode_only = time.perf_counter() - started

    model = outputs["in-process"].metadata.get("model")
    print(
        f"\nitem embeddings: {items:,} MovieLens items, encoder {args.encoder} ({model}, "
        f"{outputs['in-process'].dim}-d), batch {size}, {args.repeats} repeats (median, range); "
        f"{os.cpu_count()} CPU cores, local cores for Ray Data: {local_core_limit()}"
    )
    header = f"{'path':<16}{'seconds':>10}{'range':>16}{'items/s':>11}{'vs baseline':>13}  vectors"
    print(header)
    print("-" * len(header))
    baseline = statistics.median(seconds["in-process"])
    for name, values in seconds.items():
        median = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        ratio = baseline / median
        print(
            f"{name:<16}{median:>10.2f}{spread:>16}{items / median:>11,.0f}{ratio:>12.2f}x"
            f"  {checks[name]}"
        )
    print(
        f"(encode only, encoder already loaded, one process: {encode_only:.2f} s, "
        f"{items / encode_only:,.0f} items/s)"
    )


if __name__ == "__main__":
    main()
