"""bfloat16 against float32 weights on this machine: is ``model.dtype: bfloat16`` faster here?

On a CPU with bf16 units (AMX, AVX-512-BF16, Arm BF16) bfloat16 products run natively; without
them torch emulates bf16 through float32 conversions and is slower than float32 itself. That is
what ``model.dtype: bfloat16-if-native`` and ``train.bf16: if-native`` decide from
(:mod:`recicl.modeling.hardware`). One process is not the whole answer: on an AMD EPYC with
AVX-512-BF16 and no AMX this benchmark ran float32 faster, while the recipe's two processes per
2 cores ran bfloat16 1.5x faster (docs/performance.md): decide by the recipe's own rate where
the two disagree. This benchmark measures it for one model, in one process,
on the same random token batch: a forward pass (scoring) and a forward + backward pass (tuning;
gradients to the input embeddings, weights frozen as under LoRA), best of ``--repeats``.

    python benchmarks/bench_dtype.py --model .cache/models/gemma-3-270m --threads 1

Numbers are measured, never asserted; the table's last column is the ratio to float32.
"""

from __future__ import annotations

import argparse
import time


def timed(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=".cache/models/gemma-3-270m", help="an HF folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=400, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from recicl.modeling.hardware import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(100, 20_000, (args.batch, args.tokens))
    tokens = args.batch * args.tokens
    print(
        f"{args.model}: {args.batch} x {args.tokens} tokens, {args.threads} thread(s); "
        f"CPU bf16 units: {'yes' if cpu_has_native_bf16() else 'no'}",
        flush=True,
    )
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        for weight in model.parameters():
            weight.requires_grad_(False)
        with torch.no_grad():
            model(input_ids=ids[:1, :16], logits_to_keep=1)  # warm-up
            forward = timed(lambda m=model: m(input_ids=ids, logits_to_keep=1), args.repeats)

        def tune_step(m=model) -> None:
            embeds = m.get_input_embeddings()(ids).detach().requires_grad_(True)
            m(inputs_embeds=embeds, logits_to_keep=1).logits.float().sum().backward()

        model.train()
        backward = timed(tune_step, args.repeats)
        rows[str(dtype).removeprefix("torch.")] = (forward, backward)
        del model
    base_forward, base_backward = rows["float32"]
    print(f"{'dtype':<10}{'forward s':>11}{'tokens/s':>10}{'fwd+bwd s':>11}{'vs float32':>14}")
    for name, (forward, backward) in rows.items():
        print(
            f"{name:<10}{forward:>11.2f}{tokens / forward:>10.0f}{backward:>11.2f}"
            f"{forward / base_forward:>7.2f}x/{backward / base_backward:.2f}x"
        )


if __name__ == "__main__":
    main()
