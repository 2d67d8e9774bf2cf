"""The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), a density on [0, 1] for grey levels:

    p(x|λ) = C(λ) λ^x (1 − λ)^(1−x),   C(λ) = 2 tanh⁻¹(1 − 2λ) / (1 − 2λ)   (2 at λ = ½).

The decoder gives the logit l of λ = σ(l). Then 1 − 2λ = −tanh(l/2) and tanh⁻¹(1 − 2λ) = −l/2,
so C = l / tanh(l/2) and E[x] = ½ + 1/(2 tanh(l/2)) − 1/l: both in l, with no λ near 0 or 1 to
clamp (torch.distributions clamps λ, which caps log C at large |l|). Both are 0/0 at l = 0, so
near it they are their Taylor series, as torch's `lims` do; at the cut, |l| = 0.1 (λ ≈ ½ ± 0.025),
the series are exact to 1e-12 and the closed forms lose under 1e-6 (float32) to cancellation.
"""

from __future__ import annotations

import math

import torch

TAYLOR_BELOW = 0.1  # |logit|


def _split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(near ½?, logits moved off 0 where they are): the closed forms are evaluated on the
    latter, so torch.where never meets their 0/0, whose NaN gradient would leak through it."""
    near = logits.abs() < TAYLOR_BELOW
    return near, torch.where(near, torch.full_like(logits, TAYLOR_BELOW), logits)


def log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C per element: log(l / tanh(l/2)), even in l; log 2 + l²/12 − 7l⁴/1440 + 31l⁶/90720 near 0."""
    near, safe = _split(logits)
    closed = torch.log(safe / torch.tanh(safe / 2))
    square = logits.pow(2)
    taylor = math.log(2.0) + square * (1 / 12 - square * (7 / 1440 - square * 31 / 90720))
    return torch.where(near, taylor, closed)


def mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] per element, in [0, 1]: ½ + 1/(2 tanh(l/2)) − 1/l; ½ + l/12 − l³/720 + l⁵/30240 near 0."""
    near, safe = _split(logits)
    closed = 0.5 + 0.5 / torch.tanh(safe / 2) - 1 / safe
    square = logits.pow(2)
    taylor = 0.5 + logits * (1 / 12 - square * (1 / 720 - square / 30240))
    return torch.where(near, taylor, closed)


__all__ = ["log_normalizer", "mean"]
