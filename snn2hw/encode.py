"""Input encoders: analogue values -> spike trains (batch, steps, features)."""
from __future__ import annotations

import torch


def regular_rate(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic rate code: a value r in [0, 1] spikes at every step where floor((t+1) r) grows,
    i.e. round(steps * r) evenly spaced spikes. Deterministic, so hardware and simulator runs of the
    same sample see identical input."""
    r = x.clamp(0.0, 1.0).unsqueeze(1)
    t = torch.arange(1, steps + 1, device=x.device, dtype=x.dtype).view(1, steps, *([1] * (x.dim() - 1)))
    return (torch.floor(t * r + 1e-6) - torch.floor((t - 1) * r + 1e-6)).clamp(0, 1)


def bernoulli_rate(x: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic rate code: spike with probability x at each step."""
    r = x.clamp(0.0, 1.0).unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])
    return torch.bernoulli(r, generator=generator)
