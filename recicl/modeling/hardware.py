"""Whether this machine computes bfloat16 faster than float32, for ``model.dtype:
bfloat16-if-native`` and ``train.bf16: if-native``.

Why it matters: on a CPU without bf16 units, torch emulates bf16 matrix products through float32
conversions, so bfloat16 weights run *slower* than float32 ones: Gemma 3 270M 3-5x slower on an
AVX-512 Xeon without AVX-512-BF16 (``benchmarks/bench_dtype.py``, docs/performance.md). A bf16
dot-product instruction is not enough either: on an AMD EPYC with AVX-512-BF16 but no AMX,
bfloat16 ran Gemma's forward pass 1.7-2.1x slower than float32 and its forward + backward
1.2-1.3x slower. Only AMX tiles made it faster: 2.1x on a Xeon with AMX (docs/performance.md).
So on x86 the answer is yes with AMX only. Arm's BF16 extension (matrix-multiply instructions,
used by oneDNN through the Arm Compute Library) counts as native; it has not been measured here.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: /proc/cpuinfo flags of CPU units that run bfloat16 products faster than float32 (x86: AMX
#: tiles; AVX-512-BF16 alone is slower than float32, see the module doc; Arm: the BF16
#: extension, which Linux lists as ``bf16``)
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "bf16"})


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
