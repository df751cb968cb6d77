"""Training-side figures for the tiny model on CPU, printed as tables with ratios.

(a) Training step throughput (forward + backward + AdamW on the answer-token loss, one process,
    the same loss as the Ray Train loop): samples/s and tokens/s, with and without length
    grouping (grouping also cuts the padded positions that are computed for nothing).
(b) Padding fraction of micro-batches with and without length grouping
    (``recicl.train.batching.group_by_length``, windows of 16 batches as in training).
(c) Peak memory of scoring: answer-position logits (``answer_logits``: the LM head at one
    position) vs full-sequence vocabulary logits, each in its own process.

    python benchmarks/bench_train.py [--samples 2048] [--batch-size 16]

Prompts are RecICL prompts of bundled MovieLens samples (first 2,048 of period 0) for the tiny
Llama built from the catalog; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prompts(workdir: Path, count: int) -> tuple[Path, list[list[int]], list[int]]:
    """Tiny model + encoded prompts of real MovieLens samples."""
    import pyarrow.parquet as pq

    from recicl.config import PromptConfig, build_config
    from recicl.data.pipeline import build_samples
    from recicl.data.samples_folder import SamplesFolder
    from recicl.modeling import init_tiny_model, load_tokenizer
    from recicl.prompts import PromptBuilder

    samples = SamplesFolder(workdir / "samples")
    if not samples.manifest():
        build_samples(build_config({"samples": {"output": str(samples.root), "periods": 10}}))
    prompt = PromptConfig(max_length=512)
    model_dir = workdir / "tiny"
    if not (model_dir / "config.json").is_file():
        init_tiny_model(samples.catalog_path, model_dir, prompt_config=prompt)
    from recicl.config import ModelConfig

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    builder = PromptBuilder(prompt, pq.read_table(samples.catalog_path), tokenizer)
    table = samples.read_table([0]).slice(0, count).to_pylist()
    ids = [builder.encode(r["history"], r["demos"], r["item_id"]).input_ids for r in table]
    return model_dir, ids, [int(r["label"]) for r in table]


def _batches(lengths, batch_size: int, grouping: bool) -> list[list[int]]:
    import numpy as np

    from recicl.train.batching import group_by_length

    window = batch_size * 16
    chunks = [
        {
            "length": np.asarray(lengths[i : i + window]),
            "row": np.arange(i, min(i + window, len(lengths))),
        }
        for i in range(0, len(lengths), window)
    ]
    return [
        batch["row"].tolist()
        for batch in group_by_length(chunks, batch_size, seed=0, length_grouping=grouping)
    ]


def train_throughput(model_dir: Path, ids, labels, batch_size: int, grouping: bool) -> dict:
    import torch

    from recicl.config import ModelConfig
    from recicl.modeling import answer_logits, answer_token_ids, load_model, load_tokenizer
    from recicl.train.batching import PaddingStats, pad_batch

    cfg = ModelConfig(name_or_path=str(model_dir), lora={"enabled": False})
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, for_training=True)
    answers = answer_token_ids(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lengths = [len(x) for x in ids]
    batches = _batches(lengths, batch_size, grouping)
    stats = PaddingStats()
    started, samples, tokens = None, 0, 0
    for step, rows in enumerate(batches):
        if step == 3:  # skip warm-up steps (allocator, first-call overheads)
            started, samples, tokens = time.perf_counter(), 0, 0
        padded, mask = pad_batch([ids[r] for r in rows], tokenizer.pad_token_id)
        stats.add(mask.sum(axis=1))
        logits = answer_logits(model, torch.as_tensor(padded), torch.as_tensor(mask), answers)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([labels[r] for r in rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        samples += len(rows)
        tokens += int(mask.sum())
    seconds = time.perf_counter() - started
    return {
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "padding_fraction": stats.padding_fraction,
        "steps": len(batches),
    }


def scoring_peak(model_dir: Path, ids, mode: str, batch_size: int) -> dict:
    """Runs in a child process: peak RSS growth while scoring all prompts one way."""
    import torch

    from recicl.config import ModelConfig
    from recicl.modeling import answer_logits, answer_token_ids, load_model, load_tokenizer
    from recicl.train.batching import pad_batch

    cfg = ModelConfig(name_or_path=str(model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, for_training=False)
    answers = answer_token_ids(tokenizer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    largest = 0  # bytes of the biggest logits tensor one batch produced
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            padded, mask = pad_batch(ids[start : start + batch_size], tokenizer.pad_token_id)
            ids_t, mask_t = torch.as_tensor(padded), torch.as_tensor(mask)
            if mode == "answer":
                answer_logits(model, ids_t, mask_t, answers)
                vocab = model.get_output_embeddings().weight.shape[0]
                largest = max(largest, ids_t.shape[0] * vocab * 4)  # logits_to_keep=1: [B,1,V]
            else:
                position = (mask_t.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=position).logits
                logits[:, -1, [answers.no, answers.yes]]
                largest = max(largest, logits.numel() * logits.element_size())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_growth_mb": (after - before) / 1024,
        "seconds": time.perf_counter() - started,
        "logits_mb": largest / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path("recicl-work/bench-train"))
    parser.add_argument("--score-mode", choices=["answer", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir, ids, labels = _prompts(args.workdir, args.samples)
    if args.score_mode:
        print(json.dumps(scoring_peak(model_dir, ids, args.score_mode, 64)))
        return

    rows = {g: train_throughput(model_dir, ids, labels, args.batch_size, g) for g in (False, True)}
    base = rows[False]
    print(
        f"\ntraining step, tiny Llama, {len(ids):,} MovieLens prompts, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'batching':22} {'samples/s':>10} {'tokens/s':>10} {'padding':>8} {'speed ratio':>12}")
    for grouping, row in rows.items():
        name = "length-grouped" if grouping else "random (no grouping)"
        print(
            f"{name:22} {row['samples_per_s']:10.1f} {row['tokens_per_s']:10.0f} "
            f"{row['padding_fraction']:8.1%} {row['samples_per_s'] / base['samples_per_s']:11.2f}x"
        )

    peaks = {}
    for mode in ("full", "answer"):
        with tempfile.TemporaryDirectory():
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--samples",
                    str(args.samples),
                    "--workdir",
                    str(args.workdir),
                    "--score-mode",
                    mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        peaks[mode] = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
    print(f"\nscoring {len(ids):,} prompts, batch 64 (peak RSS growth in a fresh process)")
    print(
        f"{'logits computed':28} {'logits MB':>10} {'RSS growth MB':>14} {'seconds':>8} "
        f"{'logits ratio':>13}"
    )
    for mode, label in (("full", "full sequence x vocabulary"), ("answer", "answer position only")):
        row = peaks[mode]
        ratio = row["logits_mb"] / max(peaks["full"]["logits_mb"], 1e-9)
        print(
            f"{label:28} {row['logits_mb']:10.2f} {row['peak_growth_mb']:14.1f} "
            f"{row['seconds']:8.2f} {ratio:12.4f}x"
        )
    print(
        "(logits MB: largest logits tensor of one batch; RSS growth: peak RSS above the level "
        "reached while loading the model)"
    )


if __name__ == "__main__":
    main()
