"""Whether this machine computes bfloat16 natively, for ``model.dtype: bfloat16-if-native`` and
``train.bf16: if-native``.

Why it matters: on a CPU without bf16 units, torch emulates bf16 matrix products through float32
conversions, so bfloat16 weights run *slower* than float32 ones: Gemma 3 270M 3-5x slower on an
AVX-512 Xeon without AVX-512-BF16 (``benchmarks/bench_dtype.py``, docs/performance.md). On a CPU
with AMX or AVX-512-BF16 units bfloat16 ran the same model 2.1x faster than float32
(docs/performance.md). So the shipped CPU recipes ask for bfloat16 only where it is native.
AVX-512-BF16 without AMX counts: on an AMD EPYC with it, one process alone ran float32 faster
(benchmarks/bench_dtype.py), but the recipe's two tuning workers and two scoring actors ran
bfloat16 1.5x faster than float32 (docs/performance.md).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: /proc/cpuinfo flags of CPU units that compute bfloat16 products natively (x86: AMX tiles,
#: AVX-512-BF16; Arm: the BF16 extension, which Linux lists as ``bf16``)
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpu_flags_have_native_bf16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a bf16 unit (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and NATIVE_BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """This machine's CPU, from /proc/cpuinfo (Linux). Elsewhere (macOS, Windows) False: the
    safe answer, float32, is never the slow one."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return False
    return cpu_flags_have_native_bf16(info.read_text(errors="replace"))


def native_bf16(on_gpu: bool) -> bool:
    """Whether the device a model runs on computes bfloat16 natively: the current CUDA device
    (Ampere or newer) when ``on_gpu``, else the CPU."""
    if on_gpu:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()
