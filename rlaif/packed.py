"""Linear layers through oneDNN with their weights laid out once, for the passes that do not train
(sampling and scoring), on a CPU in float32.

PyTorch's float32 ``linear`` on a CPU calls MKL's ``sgemm``. :func:`packed_linears` lays every weight out
once, in oneDNN's blocked format (``torch.ops.mkldnn._reorder_linear_weight``), and sends the layer through
``torch.ops.mkldnn._linear_pointwise``: the two ops PyTorch's own compiler (inductor) uses for frozen
linear layers on a CPU. The products are the same; only their summation order differs (float rounding).
Why it is faster on the CPU measured is not established: MKL's own packed-weight path
(``torch.ops.mkl._mkl_linear``) was not faster than plain MKL in the same test.

Measured on 2 Zen3 cores (avx2, fma; no bf16 instructions), float32, the bundled model's shapes
(benchmarks/README.md has the stage-level figures):

- the 30 decoder layers' products at 64 rows a step: 162–167 ms packed against 205–251 ms through MKL,
  same run; at 16 rows 78–81 against 110–116; at 700 rows (a prefill) 1.44–1.62 s against 1.55–1.77 s;
- the output layer (49152 × 576) at 64 rows: 32–36 ms against 63–86 ms.

Where it does nothing (the model runs as loaded): a model not on the CPU or not in float32 (bf16 products on
a CPU already go through oneDNN; packing them is not measured), gradients enabled (the packed op has no
backward; a layer called with gradients on inside the context falls back to its own forward), the ops
missing or failing a probe, or too little memory: the packed weights are a second copy of the linear
layers' weights while the context lasts, so they are made only when they take at most half of the memory
the kernel reports available (``MemAvailable``).
"""

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

MEMINFO = Path("/proc/meminfo")


@functools.cache
def supported() -> bool:
    """Do this PyTorch's oneDNN linear ops exist and agree with ``F.linear`` on a small probe? (The probe draws
    nothing from the global random stream: a run resumed mid-training must sample as the unbroken one.)"""
    try:
        w, b, x = torch.arange(32.0).reshape(8, 4).cos(), torch.arange(8.0).sin(), torch.arange(24.0).reshape(2, 3, 4).cos()
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 6), b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """Bytes the kernel reports available (``MemAvailable``), or None where it does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _layers(model) -> list[torch.nn.Linear]:
    """The plain linear layers (a LoRA layer's base and adapter layers are plain ones) on the CPU in float32."""
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.float32 and "forward" not in vars(m)]


def _forward(layer: torch.nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != torch.float32:
        return F.linear(x, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model, rows: int | None = None):
    """Within: ``model``'s float32 CPU linear layers compute with oneDNN-packed copies of their weights, laid
    out for about ``rows`` rows a call (any number works). Yields the number of layers packed (0: the model
    runs as loaded, see the module's docstring for when). The weights must not change inside."""
    layers = [] if torch.is_grad_enabled() or not supported() else _layers(model)
    size = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    free = available_memory()
    if layers and (free is None or 2 * size > free):
        layers = []
    try:
        for m in layers:
            packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
            m.forward = functools.partial(_forward, m, packed)
        yield len(layers)
    finally:
        for m in layers:
            vars(m).pop("forward", None)
