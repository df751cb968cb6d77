"""Sample building throughput: the Ray Data pipeline vs a single-process vectorized reference.

Both paths run the same validation and per-user transform on the same synthetic log
(default 1,000,000 events) and write the same Parquet layout; each runs in its own process so
peak memory is its own. Three figures for the Ray path:

* in-process, warm: ``build_samples`` a second time in a process whose Ray runtime and worker
  processes are already up (what a long-running cluster sees);
* in-process, cold: the first build of that process, on fresh worker processes (Ray start-up
  itself excluded);
* end to end: ``recicl samples build`` as a user runs it, a fresh CLI process timed from its
  start to its exit (imports, Ray start-up and shutdown included).

Prints a table with samples/s, the time ratio to the reference and peak RSS (summed over the
process and its children; Ray's shared object store is counted once per process that maps
it). With ``--repeats N`` every path runs N times, alternating, and the table gives the median
and the range.

    python benchmarks/bench_samples.py [--events 1000000] [--users 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _peak_rss_sampler(stop: threading.Event, result: dict, pid: int | None = None) -> None:
    """Peak summed RSS of a process (default: this one) and its children (Ray workers), sampled
    every 50 ms."""
    import psutil

    me = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        total = 0
        with contextlib.suppress(psutil.Error):  # the process may have exited
            procs = [me, *me.children(recursive=True)]
        for proc in procs:
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
        "samples": manifest.samples,
        "peak_bytes": result["peak"],
        "cold_seconds": cold_seconds,
    }


def run_cli(source: Path, output: Path, env: dict[str, str]) -> dict:
    """``recicl samples build`` in a fresh process, timed from its start to its exit."""
    command = [
        sys.executable, "-m", "recicl.cli", "samples", "build", "--source", "parquet",
        "--path", str(source), "--output", str(output), "--periods", "10",
    ]  # fmt: skip
    stop, result = threading.Event(), {}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    sampler = threading.Thread(target=_peak_rss_sampler, args=(stop, result, process.pid))
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"recicl samples build failed ({process.returncode}):\n{stderr}")
    from recicl.data.samples_folder import SamplesFolder

    manifest = SamplesFolder(output).require_manifest()
    return {"seconds": seconds, "samples": manifest.samples, "peak_bytes": result["peak"]}


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


def _row(name: str, runs: list[dict], ref_seconds: float, key: str = "seconds") -> str:
    seconds = [run[key] for run in runs]
    median = statistics.median(seconds)
    spread = f"{min(seconds):.2f}-{max(seconds):.2f}" if len(seconds) > 1 else ""
    rate = runs[0]["samples"] / median
    peak = max(run["peak_bytes"] for run in runs) / 2**30 if key == "seconds" else None
    peak_text = f"{peak:8.2f}GB" if peak is not None else f"{'':>10}"
    return (
        f"{name:44} {median:8.2f} {spread:>12} {rate:11,.0f} {peak_text} "
        f"{median / ref_seconds:10.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of every path, alternating")
    parser.add_argument("--mode", choices=["ray", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode:  # child process: run one path and print its JSON result
        runner = run_ray if args.mode == "ray" else run_reference
        print(json.dumps(runner(args.source, args.output)))
        return

    from recicl.data.synth import SynthSpec, write_synthetic

    results: dict[str, list[dict]] = {"reference": [], "ray": [], "cli": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        write_synthetic(
            SynthSpec(users=args.users, events_per_user=max(1, args.events // args.users)), source
        )
        env = {**os.environ, "RAY_DATA_LOG_LEVEL": "WARNING", "RAY_USAGE_STATS_ENABLED": "0"}
        for repeat in range(args.repeats):
            for mode in ("reference", "ray", "cli"):
                output = Path(tmp) / f"{mode}-{repeat}"
                if mode == "cli":
                    results[mode].append(run_cli(source, output, env))
                    continue
                completed = subprocess.run(
                    [sys.executable, __file__, "--mode", mode, "--source", str(source),
                     "--output", str(output)],
                    capture_output=True, text=True, env=env, check=True,
                )  # fmt: skip
                last = [ln for ln in completed.stdout.splitlines() if ln.startswith("{")][-1]
                results[mode].append(json.loads(last))

    ref = results["reference"]
    counts = {run["samples"] for runs in results.values() for run in runs}
    assert len(counts) == 1, f"the paths disagree on the sample count: {counts}"
    ref_seconds = statistics.median(run["seconds"] for run in ref)
    print(f"\nsample building, {args.events:,} events of {args.users:,} users, "
          f"{os.cpu_count()} cores, {args.repeats} run(s) per path (median, range)")  # fmt: skip
    print(
        f"{'path':44} {'seconds':>8} {'range':>12} {'samples/s':>11} {'peak RSS':>10} "
        f"{'time ratio':>10}"
    )
    print(_row("single-process vectorized (reference)", ref, ref_seconds))
    print(_row("Ray Data pipeline, in-process, warm", results["ray"], ref_seconds))
    print(_row("Ray Data pipeline, in-process, cold workers", results["ray"], ref_seconds,
               key="cold_seconds"))  # fmt: skip
    print(_row("`recicl samples build` end to end (CLI)", results["cli"], ref_seconds))
    print(
        "reference and in-process rows time the build alone; the CLI row is a fresh process "
        "from start to exit (imports, Ray start-up and shutdown included)"
    )


if __name__ == "__main__":
    main()
