"""How a training step computes: its numeric precision and whether it is compiled (the spec's
`optim.precision` and `optim.compile`).

- **bf16** runs the model's forward pass (and so its backward) under autocast in bfloat16; the
  loss, the reconstruction and KL sums and the optimizer's state stay fp32. bfloat16 keeps fp32's
  exponent range, so no loss scaling is needed (fp16 would need it, and is not offered).
- **compile** hands the whole loss function, the model's forward included, to `torch.compile`.
  The first steps pay for the compilation (tens of seconds on a CPU); the loss's β schedule is a
  Python float that torch.compile takes as an input, so it does not recompile as β warms up.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bfloat16 autocast on `device` for bf16, else nothing."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


_compiled: dict[Callable, Callable] = {}  # one compiled wrapper per function (torch.compile caches its graphs there)


def compiled(function: Callable) -> Callable:
    """`function` compiled by torch.compile, the same wrapper every time it is asked for."""
    if function not in _compiled:
        _compiled[function] = torch.compile(function)
    return _compiled[function]
