"""GPU path check: a 7B-shaped model through recicl's real training and serving path.

On a GPU node (one Ray Train worker per GPU, NCCL):

1. synthetic drift events (``recicl.data.synth``) -> ICL samples (``build_samples``, Ray Data);
2. a randomly initialised Qwen2 model with Qwen2.5-7B's dimensions (hidden 3584, 28 layers,
   28 query / 4 KV heads, MLP 18944, vocabulary 152064 rows: 7.62B parameters), written once
   in bfloat16 by a GPU task and cached, with the tiny BPE tokenizer of ``recicl model
   init-tiny`` (nothing is downloaded; the unused embedding rows keep the 7B memory shape);
3. ``recicl.train.train`` with the settings of ``ray_jobs/configs/qwen2.5-7b-zero3.yaml``
   (DeepSpeed ZeRO-3, bf16, LoRA r16 on every linear layer, gradient checkpointing) for a few
   optimizer steps; tokens/s and MFU from the per-step throughput it logs to MLflow;
4. the registered version served by recicl's Ray Serve app on 127.0.0.1 (one GPU per replica);
   one user's events posted, then /v1/score requests timed (the first one and the median of the
   rest).

It prints a table and writes the numbers as JSON (``--output``, default
``<workdir>/gpu_smoke.json``). One command, under 10 minutes on one 8-GPU node or a single GPU
(first run; the cached 15 GB model folder saves about a minute after that)::

    python benchmarks/gpu_smoke.py                       # all visible GPUs
    python benchmarks/gpu_smoke.py --cpu-dry-run         # no GPU: tiny shape, gloo, fp32, ZeRO-3

Without a GPU it refuses (exit 2) unless ``--cpu-dry-run``: the same code path with a tiny
Qwen2 shape on 2 CPU workers (gloo, float32, ZeRO-3), for checking the script itself.

MFU counts the model FLOPs of a LoRA step on a frozen base: the forward pass
(:func:`benchmarks.flops.forward_flops`: projections, MLP, QK^T and AV; the LM head runs
at the answer position only and is left out) and the backward pass's input gradients (the
frozen linear layers once more, attention twice more: dQ/dK and dP/dV), i.e.
``2 x linear + 3 x attention``. No weight gradients of the base (that would be the 6·N·T of full
fine-tuning) and no recomputation; HFU adds the forward pass that gradient checkpointing
recomputes. Tokens are the prompts' real (non-padding) tokens; samples/s is what rank 0 measures
between optimizer steps (times the world size), over the steps after ``--warmup-steps``. Peak:
dense bf16 tensor-core TFLOPS per GPU from the vendor's datasheet, looked up from
``torch.cuda.get_device_name`` (``--peak-tflops`` overrides it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.flops import peak_bf16_tflops, throughput  # noqa: E402  (after the path fix)
from benchmarks.gpu_smoke_model import (  # noqa: E402  (after the path fix above)
    SHAPES,
    gpu_refusal,
    model_config,
    parameter_count,
    steady_rate,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRODUCTION_CONFIG = ROOT / "ray_jobs" / "configs" / "qwen2.5-7b-zero3.yaml"
REGISTERED_MODEL = "recicl-gpu-smoke"
SHAPE_MARKER = "gpu_smoke_shape.json"

# ---------------------------------------------------------------------------------------------
# the run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Timer:
    """Named wall-clock phases, printed as they end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"[gpu_smoke] {name} ...", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        print(f"[gpu_smoke] {name}: {self.seconds[name]:.1f}s", flush=True)


def build_data(run_dir: Path, rows_needed: int, max_length: int) -> Path:
    """Synthetic events -> samples (recicl's Ray Data pipeline), at least ``rows_needed`` of
    them; long histories and 8 demonstrations, so prompts come near ``max_length``."""
    from recicl.config import build_config
    from recicl.data.pipeline import build_samples
    from recicl.data.synth import SynthSpec, write_synthetic

    events_per_user = 48
    users = max(16, math.ceil(1.5 * rows_needed / (events_per_user - 2)))
    write_synthetic(SynthSpec(users=users, events_per_user=events_per_user), run_dir / "synth")
    cfg = build_config(
        {
            "workdir": str(run_dir),
            "data": {"source": "parquet", "path": str(run_dir / "synth"), "max_date": "2030-01-01"},
            "samples": {
                "num_demos": 8,
                "history_len": 20,
                "periods": 2,
                "output": str(run_dir / "samples"),
            },
            "prompt": {"max_length": max_length},
        }
    )
    build_samples(cfg)
    return run_dir / "samples"


def _write_model(folder: str, shape: str, tokenizer_dir: str, dtype: str, on_gpu: bool) -> float:
    """Ray task: random weights of ``shape`` in ``dtype``, built on the task's device, saved as
    safetensors with the tokenizer into ``folder``. Returns seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = model_config(
        shape,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    partial = Path(folder + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), max_shard_size="4GB")
    tokenizer.save_pretrained(str(partial))
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return time.perf_counter() - started


def ensure_model(models_dir: Path, shape: str, catalog: Path, dtype: str, on_gpu: bool) -> Path:
    """The shape's model folder, written by a (GPU) Ray task unless one is cached. Its tokenizer
    is the tiny model's byte-level BPE, trained on ``catalog`` (any text encodes with it, and
    " Yes"/" No" are single tokens), so a cached folder serves any later run."""
    import ray

    from recicl.modeling import init_tiny_model

    marker = {"shape": SHAPES[shape], "dtype": dtype}
    folder = models_dir / f"{shape}-{dtype}"
    if (folder / SHAPE_MARKER).is_file():
        if json.loads((folder / SHAPE_MARKER).read_text()) == marker:
            print(f"[gpu_smoke] reusing {folder}", flush=True)
            return folder
        shutil.rmtree(folder)
    tiny = init_tiny_model(catalog, models_dir / "tiny-tokenizer")
    # max_calls=1: the worker process exits afterwards, releasing its CUDA context
    task = ray.remote(num_gpus=1 if on_gpu else 0, max_calls=1)(_write_model)
    seconds = ray.get(task.remote(str(folder), shape, str(tiny), dtype, on_gpu))
    partial = Path(str(folder) + ".partial")
    (partial / SHAPE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
    partial.rename(folder)
    print(f"[gpu_smoke] wrote {folder} in {seconds:.1f}s", flush=True)
    return folder


def prompt_lengths(cfg: Any, samples_dir: Path, periods: list[int]) -> list[int]:
    """Token count of every training prompt, encoded exactly as the training data is."""
    import pyarrow.parquet as pq

    from recicl.data.samples_folder import SamplesFolder
    from recicl.modeling import load_tokenizer
    from recicl.prompts import PromptBuilder

    folder = SamplesFolder.at(samples_dir)
    builder = PromptBuilder(
        cfg.prompt, pq.read_table(folder.catalog_path), load_tokenizer(cfg.model)
    )
    rows = folder.read_table(periods).to_pylist()
    return [len(builder.encode(r["history"], r["demos"], r["item_id"]).input_ids) for r in rows]


def train_config(args: argparse.Namespace, run_dir: Path, model_dir: Path, samples: Path) -> Any:
    """The production 7B config with this machine's workers, the synthetic samples, a few steps
    and a private MLflow store (in the run folder)."""
    import yaml

    from recicl.config import load_config, with_overrides
    from recicl.data.samples_folder import SamplesFolder

    gpu = not args.cpu_dry_run
    overrides: dict[str, Any] = {
        "workdir": str(run_dir),
        "model.name_or_path": str(model_dir),
        "model.dtype": "bfloat16" if gpu else "float32",
        "prompt.max_length": args.max_length,
        "train.samples_dir": str(samples),
        "train.train_periods": SamplesFolder.at(samples).periods(),
        "train.val_periods": [],
        "train.strategy": "deepspeed",
        "train.zero_stage": 3,
        "train.num_workers": args.num_workers,
        "train.use_gpu": gpu,
        "train.cpus_per_worker": args.cpus_per_worker,
        "train.bf16": gpu,
        "train.batch_size": args.batch_size,
        "train.grad_accum": args.grad_accum,
        "train.max_steps": args.steps,
        "train.checkpoint_every_steps": args.steps,
        "train.keep_checkpoints": 1,
        "train.max_failures": 0,
        "train.log_every_steps": 1,
        "train.storage_path": str(run_dir / "ray_results"),
        "train.run_name": "gpu-smoke",
        "mlflow.tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}",
        "mlflow.experiment": "gpu-smoke",
        "mlflow.registered_model": REGISTERED_MODEL,
        "serve.model_name": REGISTERED_MODEL,
        "serve.alias": "champion",
        "serve.host": "127.0.0.1",
        "serve.port": _free_port(),
        "serve.num_gpus": 1.0 if gpu else 0.0,
        "serve.num_cpus": 1.0 if gpu else 0.5,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return with_overrides(load_config(PRODUCTION_CONFIG), overrides)


def serve_and_score(cfg: Any, version: str, items: list[str], requests: int) -> dict[str, Any]:
    """Alias the version, start recicl's Serve app on loopback, post one user's events, then
    time ``requests`` /v1/score calls of 20 candidates."""
    import httpx

    from recicl.registry import client
    from recicl.serve.app import start_app

    client(cfg.mlflow.tracking_uri).set_registered_model_alias(
        REGISTERED_MODEL, "champion", version
    )
    started = time.perf_counter()
    url = start_app(cfg, timeout=900.0)
    ready = time.perf_counter() - started
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=300) as http:
        events = [
            {"user_id": "smoke", "item_id": item, "label": k % 2, "timestamp": 1_700_000_000 + k}
            for k, item in enumerate(items[20:30])
        ]
        http.post("/v1/events", json=events).raise_for_status()
        body = {"user_id": "smoke", "candidates": items[:20]}
        for _ in range(requests):
            t0 = time.perf_counter()
            reply = http.post("/v1/score", json=body)
            latencies.append(time.perf_counter() - t0)
            reply.raise_for_status()
        answer = reply.json()
        served = http.get("/v1/models").json()["served"]
    scores = [s["score"] for s in answer["scores"]]
    return {
        "url": url,
        "ready_seconds": ready,
        "model_version": answer["model_version"],
        "device": served.get("device"),
        "context_events": answer["context_events"],
        "candidates": len(scores),
        "score_range": [min(scores), max(scores)],
        "first_request_ms": latencies[0] * 1e3,
        "warm_median_ms": statistics.median(latencies[1:]) * 1e3 if requests > 1 else None,
        "requests": requests,
    }


def _versions() -> dict[str, str]:
    import deepspeed
    import ray
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _params(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


def print_table(report: dict[str, Any]) -> None:
    t, s, m = report["train"], report["serve"], report["model"]
    rows = [
        ("device", f"{report['device']} x {report['workers']}"),
        ("model", f"{m['shape']} ({_params(m['params'])} params, {m['dtype']})"),
        ("strategy", t["strategy"]),
        ("prompt tokens (min/mean/max)", t["prompt_tokens"]),
        ("samples per optimizer step", str(t["samples_per_step"])),
        ("steps measured", f"{t['steps_measured']} of {t['steps']} (after warm-up)"),
        ("step time", f"{t['step_seconds']:.2f} s"),
        ("samples/s", f"{t['samples_per_s']:.2f}"),
        ("tokens/s (non-padding)", f"{t['tokens_per_s']:,.0f}"),
        ("tokens/s per worker (GPU)", f"{t['tokens_per_s'] / report['workers']:,.0f}"),
        ("model TFLOPS per worker", f"{t['model_tflops_per_gpu']:.3g}"),
        ("peak bf16 TFLOPS per GPU", _fmt(report["peak_tflops"], ".0f")),
        ("MFU (LoRA model FLOPs)", _fmt(t["mfu"] and 100 * t["mfu"], ".1f", "%")),
        ("HFU (+ recomputed forward)", _fmt(t["hfu"] and 100 * t["hfu"], ".1f", "%")),
        ("worker setup (load + DeepSpeed)", _fmt(t["setup_seconds"], ".1f", " s")),
        ("train() total", f"{t['train_seconds']:.1f} s"),
        ("registered version", f"{REGISTERED_MODEL}/{t['version']}"),
        ("serve: app ready", f"{s['ready_seconds']:.1f} s ({s['device']})"),
        ("serve: first /v1/score (20 cand.)", f"{s['first_request_ms']:.0f} ms"),
        ("serve: warm median", _fmt(s["warm_median_ms"], ".0f", " ms")),
        ("whole check", f"{report['seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nGPU path check{' (CPU DRY RUN)' if report['dry_run'] else ''}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from recicl.config import RayConfig
    from recicl.raycluster import ensure_ray
    from recicl.registry import client
    from recicl.train import train

    started = time.perf_counter()
    gpu = not args.cpu_dry_run
    timer = Timer()
    workdir = args.workdir.expanduser().resolve()
    run_dir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    ensure_ray(RayConfig())
    if args.num_workers is None:
        args.num_workers = int(ray.cluster_resources().get("GPU", 0)) if gpu else 2
        if args.num_workers < 1:
            raise SystemExit("gpu_smoke: Ray sees no GPU on this machine (ray.cluster_resources)")
    if args.cpus_per_worker is None:
        logical = int(ray.cluster_resources().get("CPU", 4))
        args.cpus_per_worker = max(0.5, min(8.0, (logical - 2) / args.num_workers))
    samples_per_step = args.num_workers * args.batch_size * args.grad_accum

    with timer("samples"):
        samples = build_data(run_dir, samples_per_step * (args.steps + 2), args.max_length)
    dtype = "bfloat16" if gpu else "float32"
    with timer("base model"):
        catalog = samples / "catalog.parquet"
        model_dir = ensure_model(workdir / "models", args.shape, catalog, dtype, gpu)
    cfg = train_config(args, run_dir, model_dir, samples)
    lengths = prompt_lengths(cfg, samples, cfg.train.train_periods)
    with timer("train"):
        result = train(cfg)
    if not result.version or not result.run_id:
        raise RuntimeError(f"training registered no version: {result}")

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    mlc = client(cfg.mlflow.tracking_uri)
    history = mlc.get_metric_history(result.run_id, "samples_per_second")
    rate, measured = steady_rate([(m.step, m.value) for m in history], args.warmup_steps)
    device = mlc.get_run(result.run_id).data.tags.get("sys.gpu", "none")
    device = device if gpu else "cpu"
    peak = args.peak_tflops or (peak_bf16_tflops(device) if gpu else None)
    numbers = throughput(
        config,
        rate,
        lengths,
        world=args.num_workers,
        samples_per_step=samples_per_step,
        peak_tflops=peak,
        recompute=cfg.train.gradient_checkpointing,
    )
    setup = [m.value for m in mlc.get_metric_history(result.run_id, "setup_seconds")]

    import pyarrow.parquet as pq

    items = [str(i) for i in pq.read_table(samples / "catalog.parquet").column("item_id")]
    with timer("serve"):
        served = serve_and_score(cfg, result.version, items, args.serve_requests)
    tc = cfg.train
    return {
        "dry_run": not gpu,
        "device": device,
        "workers": args.num_workers,
        "peak_tflops": peak,
        "model": {
            "shape": args.shape,
            "dims": SHAPES[args.shape],
            "vocab_size": config.vocab_size,
            "params": parameter_count(config),
            "dtype": dtype,
            "folder": str(model_dir),
        },
        "train": {
            "strategy": (
                f"deepspeed zero-{tc.zero_stage} {'bf16' if tc.bf16 else 'fp32'} "
                f"{'nccl' if tc.use_gpu else 'gloo'}, LoRA r{cfg.model.lora.r} "
                f"{cfg.model.lora.target_modules}, gradient checkpointing "
                f"{'on' if tc.gradient_checkpointing else 'off'}"
            ),
            "batch_size": tc.batch_size,
            "grad_accum": tc.grad_accum,
            "samples_per_step": samples_per_step,
            "max_length": cfg.prompt.max_length,
            "prompt_tokens": f"{min(lengths)}/{statistics.fmean(lengths):.0f}/{max(lengths)}",
            "steps": args.steps,
            "steps_measured": measured,
            "samples_per_s": numbers.samples_per_s,
            "tokens_per_s": numbers.tokens_per_s,
            "step_seconds": numbers.step_seconds,
            "model_tflops_per_gpu": numbers.model_tflops_per_gpu,
            "mfu": numbers.mfu,
            "hfu": numbers.hfu,
            "setup_seconds": max(setup) if setup else None,
            "train_seconds": result.seconds,
            "run_id": result.run_id,
            "version": result.version,
        },
        "serve": served,
        "phases_seconds": timer.seconds,
        "versions": _versions(),
        "seconds": time.perf_counter() - started,
        "run_dir": str(run_dir),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="no GPU: tiny shape, 2 CPU workers, gloo, fp32, ZeRO-3 (checks the script's path)",
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default qwen2.5-7b (dry: tiny)")
    parser.add_argument("--num-workers", type=int, help="default: every GPU Ray sees (dry: 2)")
    parser.add_argument("--cpus-per-worker", type=float, help="default: the CPUs spread, <= 8")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 8; dry 4)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of rates")
    parser.add_argument("--batch-size", type=int, help="per worker (default 4 as in production)")
    parser.add_argument("--grad-accum", type=int, help="default 4 as in production (dry: 1)")
    parser.add_argument("--max-length", type=int, help="prompt token budget (default 1024)")
    parser.add_argument("--peak-tflops", type=float, help="per-GPU peak, overrides the table")
    parser.add_argument("--serve-requests", type=int, default=5, help="timed /v1/score calls")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config override"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "recicl-work" / "gpu-smoke")
    parser.add_argument("--output", type=Path, help="JSON report (default <run folder>/...)")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    defaults = {
        "shape": "tiny" if dry else "qwen2.5-7b",
        "steps": 4 if dry else 8,
        "batch_size": 2 if dry else 4,
        "grad_accum": 1 if dry else 4,
        "max_length": 256 if dry else 1024,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps {args.steps} leaves no step after --warmup-steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.cpu_dry_run:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        refusal = gpu_refusal(torch.cuda.device_count(), torch.__version__, torch.version.cuda)
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
        if os.environ.get("DS_ACCELERATOR") == "cpu":  # e.g. exported by the Makefile
            print("[gpu_smoke] unsetting DS_ACCELERATOR=cpu on a GPU machine", flush=True)
            del os.environ["DS_ACCELERATOR"]
    import ray

    try:
        report = run(args)
    finally:
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    output = args.output or Path(report["run_dir"]) / "gpu_smoke.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print_table(report)
    print(f"\n[gpu_smoke] report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
