"""The hardware a run finds: which device it computes on, and which dtype that device runs natively.

``model.dtype: auto`` (the default) picks bfloat16 where the hardware computes it natively and float32
elsewhere:

- **CUDA** with bf16 support (Ampere and newer): bfloat16.
- **A CPU with AMX-BF16 or AVX512-BF16** (``/proc/cpuinfo`` flags ``amx_bf16`` / ``avx512_bf16``):
  bfloat16. Measured on such a CPU, bf16 matrix products ran 3.3–7.3× faster than fp32.
- **Any other CPU:** float32. Without those instructions PyTorch emulates bf16, and the judge benchmark
  measured it at about 3× the cost of fp32 (benchmarks/README.md).

The choice and the flags that decided it are recorded in the run manifest and printed by
``rlaif validate``.
"""

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
SPEED_CPU_FLAGS = frozenset({"avx2", "fma", "avx512f", "amx_tile", *BF16_CPU_FLAGS})  # printed beside a benchmark's timings
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU feature flags of the first processor listed in ``/proc/cpuinfo`` (empty where unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cuda_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """``(dtype name, reason)`` for the recipe's ``model.dtype`` on ``device``; ``auto`` decides by the hardware."""
    if name != "auto":
        return name, "set by the recipe"
    if device.type == "cuda":
        if cuda_bf16(device):
            return "bfloat16", "auto: CUDA device with native bf16"
        return "float32", "auto: CUDA device without bf16"
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        native = sorted(f for f in BF16_CPU_FLAGS if f in flags)
        if native:
            return "bfloat16", f"auto: CPU with {', '.join(native)}"
        return "float32", f"auto: CPU without {' or '.join(BF16_CPU_FLAGS)} (bf16 would be emulated)"
    return "float32", f"auto: {device.type} device, float32 by default"


def describe(device: torch.device, dtype: str, reason: str) -> str:
    """One line for ``rlaif validate`` and the manifest."""
    return f"{device} in {dtype} ({reason})"
