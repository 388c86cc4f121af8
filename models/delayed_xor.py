"""Delayed-memory XOR (Huh & Sejnowski 2018's task, generated here and scaled to run on a CPU).

A trial holds two input pulses, each either "up" or "down", separated by a delay, then a go cue. After
the go cue the network must answer the XOR of the two pulses: +1 when they differ, -1 when they are the
same, for ``response`` steps. The first pulse must be held in memory across both delays (several
synaptic time constants), and XOR is not linearly separable, so neither a feed-forward read-out nor a
leaky trace solves it.

Encoding: three binary input channels (spikes, so the same trials drive a deployed network unchanged):
0 = up pulse, 1 = down pulse, 2 = go cue; a pulse is ``pulse`` consecutive steps of 1 on its channel.
The target ``y`` (samples, T) is +1 / -1 inside the response window and 0 (not scored) elsewhere.
Onsets are random per trial: the first pulse at ``[onset[0], onset[1])``, each delay between pulse
onsets (first to second, second to go cue) drawn from ``[delay[0], delay[1])``.

The four patterns are balanced (each trial draws them uniformly), so chance is 50%.
"""
from __future__ import annotations

import torch

__all__ = ["make", "steps_needed", "masked_mse", "accuracy", "predict"]

CHANNELS = ("up", "down", "go")


def steps_needed(onset: tuple[int, int] = (5, 15), delay: tuple[int, int] = (25, 40), response: int = 20,
                 go: int = 5) -> int:
    """The trial length that fits the latest go cue and its whole response window (``make``'s default T)."""
    return onset[1] - 1 + 2 * (delay[1] - 1) + max(go, response)


def make(n: int, seed: int = 0, pulse: int = 10, onset: tuple[int, int] = (5, 15),
         delay: tuple[int, int] = (25, 40), response: int = 20, go: int = 5,
         steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` trials: x (n, T, 3) float 0/1 spikes and y (n, T) float targets in {-1, 0, +1}."""
    if not (n > 0 and pulse > 0 and response > 0 and go > 0 and 0 <= onset[0] < onset[1]
            and pulse <= delay[0] < delay[1]):
        raise ValueError(f"bad delayed-XOR parameters: n={n}, pulse={pulse}, onset={onset}, delay={delay}, "
                         f"response={response}, go={go} (need a pulse shorter than the smallest delay)")
    need = steps_needed(onset, delay, response, go)
    steps = need if steps is None else int(steps)
    if steps < need:
        raise ValueError(f"steps={steps} is shorter than the latest trial ({need} steps)")
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    t1 = torch.randint(onset[0], onset[1], (n,), generator=g)
    t2 = t1 + torch.randint(delay[0], delay[1], (n,), generator=g)
    t3 = t2 + torch.randint(delay[0], delay[1], (n,), generator=g)
    x = torch.zeros(n, steps, 3)
    y = torch.zeros(n, steps)
    t = torch.arange(steps)
    for start, sign in ((t1, a), (t2, b)):
        on = (t[None] >= start[:, None]) & (t[None] < start[:, None] + pulse)
        x[:, :, 0] += (on & (sign[:, None] == 1)).float()
        x[:, :, 1] += (on & (sign[:, None] == 0)).float()
    x[:, :, 2] = ((t[None] >= t3[:, None]) & (t[None] < t3[:, None] + go)).float()
    window = (t[None] >= t3[:, None]) & (t[None] < t3[:, None] + response)
    target = torch.where(a != b, 1.0, -1.0)
    y[window] = target[:, None].expand(n, steps)[window]
    return x, y


def _output(o):
    o = o[-1] if isinstance(o, (list, tuple)) else o
    return o[..., 0] if o.dim() == 3 else o


def masked_mse(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over trials of the mean squared error inside each trial's response window (y != 0).

    ``o`` is the network's (n, T, 1) or (n, T) output trace."""
    o = _output(o)
    mask = (y != 0).to(o.dtype)
    per_trial = ((o - y) ** 2 * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_trial.mean()


def predict(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """+1 / -1 per trial: the sign of the mean output inside the response window."""
    o = _output(o)
    mask = (y != 0).to(o.dtype)
    return torch.where((o * mask).sum(dim=1) > 0, 1.0, -1.0)


def accuracy(o: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of trials whose answer (``predict``) has the target's sign."""
    target = torch.where(y.sum(dim=1) > 0, 1.0, -1.0)
    return float((predict(o, y) == target).float().mean())
