"""Sample building throughput: the Ray Data pipeline vs a single-process vectorized reference.

Both paths run the same validation and per-user transform on the same synthetic log
(default 1,000,000 events) and write the same Parquet layout; each runs in its own process so
peak memory is its own. Prints a table with rows/s, the Ray/reference ratio and peak RSS.

    python benchmarks/bench_samples.py [--events 1000000] [--users 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _peak_rss_sampler(stop: threading.Event, result: dict) -> None:
    """Peak summed RSS of this process and its children (Ray workers), sampled every 50 ms."""
    import psutil

    me = psutil.Process()
    peak = 0
    while not stop.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker may exit between calls
                total += proc.memory_info().rss
        peak = max(peak, total)
        time.sleep(0.05)
    result["peak"] = peak


def run_ray(source: Path, output: Path) -> dict:
    from recicl.config import build_config
    from recicl.data.pipeline import build_samples
    from recicl.raycluster import ensure_ray

    def config(src: Path, out: Path):
        return build_config(
            {
                "data": {"source": "parquet", "path": str(src)},
                "samples": {"output": str(out), "periods": 10},
            }
        )

    cfg = config(source, output)
    ensure_ray(cfg.ray)  # start-up is not part of the job
    # Warm-up: the same build once on fresh worker processes (they start and import the
    # pipeline, as they already have on a long-running cluster); its time is reported as "cold".
    started = time.perf_counter()
    build_samples(config(source, output.parent / "warmup"))
    cold_seconds = time.perf_counter() - started
    stop, result = threading.Event(), {}
    sampler = threading.Thread(target=_peak_rss_sampler, args=(stop, result))
    sampler.start()
    started = time.perf_counter()
    manifest = build_samples(cfg)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {
        "seconds": seconds,
        "samples": manifest["samples"],
        "peak_bytes": result["peak"],
        "cold_seconds": cold_seconds,
    }


def run_reference(source: Path, output: Path) -> dict:
    import pyarrow as pa
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    from recicl.config import DataConfig
    from recicl.data.periods import assign_periods, equal_count_boundaries
    from recicl.data.readers import raw_events as _raw_events
    from recicl.data.samples import KIND_DUPLICATE, annotate_events, to_samples
    from recicl.data.validate import valid_events, validate_batch

    stop, result = threading.Event(), {}
    sampler = threading.Thread(target=_peak_rss_sampler, args=(stop, result))
    sampler.start()
    started = time.perf_counter()
    raw = pq.read_table(source / "events.parquet")
    catalog = pq.read_table(source / "catalog.parquet")
    raw = _raw_events({c: raw[c].combine_chunks() for c in raw.column_names}, raw.num_rows,
                      keep_types=True)  # fmt: skip
    validated = validate_batch(
        raw, catalog_ids=catalog["item_id"].combine_chunks(), rating_range=None,
        like_threshold=4.0, time_bounds=DataConfig().time_bounds(), timestamp_unit="s",
        has_labels=False,
    )  # fmt: skip
    annotated = annotate_events(valid_events(validated), num_demos=4, history_len=10, min_demos=1)
    kept = annotated.filter(pa.compute.not_equal(annotated["kind"], KIND_DUPLICATE))
    boundaries = equal_count_boundaries(kept["timestamp"].to_numpy(), 10)
    samples = to_samples(
        annotated, pa.array(assign_periods(annotated["timestamp"].to_numpy(), boundaries))
    )
    pds.write_dataset(
        samples, output / "samples", format="parquet", partitioning=["period"],
        partitioning_flavor="hive", existing_data_behavior="overwrite_or_ignore",
    )  # fmt: skip
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {"seconds": seconds, "samples": samples.num_rows, "peak_bytes": result["peak"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--mode", choices=["ray", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode:  # child process: run one path and print its JSON result
        runner = run_ray if args.mode == "ray" else run_reference
        print(json.dumps(runner(args.source, args.output)))
        return

    from recicl.data.synth import SynthSpec, write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        write_synthetic(
            SynthSpec(users=args.users, events_per_user=max(1, args.events // args.users)), source
        )
        results = {}
        env = {**os.environ, "RAY_DATA_LOG_LEVEL": "WARNING", "RAY_USAGE_STATS_ENABLED": "0"}
        for mode in ("reference", "ray"):
            completed = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--source", str(source),
                 "--output", str(Path(tmp) / mode)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            last = [ln for ln in completed.stdout.splitlines() if ln.startswith("{")][-1]
            results[mode] = json.loads(last)

    ref, ray_ = results["reference"], results["ray"]
    assert ref["samples"] == ray_["samples"], "the two paths disagree on the sample count"
    rows = [
        ("single-process vectorized (reference)", ref),
        ("Ray Data pipeline", ray_),
    ]
    print(f"\nsample building, {args.events:,} events of {args.users:,} users, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"{'path':40} {'seconds':>8} {'samples/s':>11} {'peak RSS':>10} {'time ratio':>10}")
    for name, result in rows:
        rate = result["samples"] / result["seconds"]
        ratio = result["seconds"] / ref["seconds"]
        print(
            f"{name:40} {result['seconds']:8.2f} {rate:11,.0f} "
            f"{result['peak_bytes'] / 2**30:8.2f}GB {ratio:10.2f}x"
        )
    cold = ray_["cold_seconds"]
    print(
        f"Ray path measured on its second build; the first, on fresh worker processes, took "
        f"{cold:.2f}s ({ray_['samples'] / cold:,.0f} samples/s, {cold / ref['seconds']:.2f}x)"
    )


if __name__ == "__main__":
    main()
