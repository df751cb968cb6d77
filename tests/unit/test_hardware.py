"""Native bfloat16 detection (recicl.modeling.hardware) from /proc/cpuinfo texts."""

from __future__ import annotations

import pytest

from recicl.modeling.hardware import cpu_flags_have_native_bf16, native_bf16

X86 = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (X86.format(extra="avx512_vnni"), False),  # AVX-512 alone: bf16 emulated (slow)
        (X86.format(extra="avx512_bf16"), True),
        (X86.format(extra="amx_tile amx_bf16"), True),
        (X86.format(extra="avx512_bf16x"), False),  # whole flags only
        (ARM.format(extra="i8mm"), False),
        (ARM.format(extra="bf16 i8mm"), True),
        ("model name\t: bf16 in a name is not a flag\n", False),
        ("", False),
    ],
)
def test_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_flags_have_native_bf16(cpuinfo) is native


def test_the_gpu_answer_is_the_gpus_not_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with bf16 units says nothing about the GPU: without CUDA, on_gpu is never native."""
    import torch

    from recicl.modeling import hardware

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: its answer is the hardware's, not testable here")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert native_bf16(on_gpu=False) is True
    assert native_bf16(on_gpu=True) is False
