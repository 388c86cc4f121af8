"""Input encoders: analogue values -> spike trains of shape (batch, steps, features).

Two families:

* **static values -> spike trains** (``regular_rate``, ``bernoulli_rate``, ``poisson_rate``,
  ``latency``): the input ``x`` has shape (batch, *features) with values in [0, 1] (callers
  normalise; values outside are clamped); the output inserts a time axis after the batch axis.
* **analogue time series -> events** (``delta``, ``sigma_delta``): the input already has shape
  (batch, steps, features); the output has the same number of steps.

Every encoder follows the input's device and dtype; the stochastic ones take an optional
``torch.Generator``, which must live on the input's device (``torch.Generator(device=x.device)``).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "regular_rate",
    "bernoulli_rate",
    "poisson_rate",
    "latency",
    "delta",
    "sigma_delta",
    "resample",
]


# --- static values -> spike trains -------------------------------------------------------------------
def regular_rate(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic rate code: a value r in [0, 1] spikes at step t (0-based) where floor((t+1) r)
    grows, i.e. floor(steps * r) evenly spaced spikes (a product within 1e-6 below an integer counts as
    reaching it, so 0.1 * 10 gives 1 spike despite float rounding). Deterministic, so hardware and
    simulator runs of the same sample see identical input."""
    r = x.clamp(0.0, 1.0).unsqueeze(1)
    t = torch.arange(1, steps + 1, device=x.device, dtype=x.dtype).view(1, steps, *([1] * (x.dim() - 1)))
    return (torch.floor(t * r + 1e-6) - torch.floor((t - 1) * r + 1e-6)).clamp(0, 1)


def bernoulli_rate(x: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic rate code: spike with probability x at each step."""
    r = x.clamp(0.0, 1.0).unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])
    return torch.bernoulli(r, generator=generator)


def poisson_rate(x: torch.Tensor, steps: int, max_rate: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson rate code: a Poisson process of ``x * max_rate`` events per step, binned into binary steps.

    A step spikes when its bin holds at least one event, i.e. with probability
    ``1 - exp(-x * max_rate)``. The binning is what makes it differ from ``bernoulli_rate``: the
    expected count saturates smoothly instead of being exactly ``steps * x``; for small rates the two
    coincide. Binary output because binary spikes are what the hardware's inputs take.
    """
    if max_rate < 0:
        raise ValueError(f"max_rate must be >= 0, got {max_rate}")
    lam = x.clamp(0.0, 1.0) * max_rate
    p = (-torch.expm1(-lam)).unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])
    return torch.bernoulli(p, generator=generator)


def latency(x: torch.Tensor, steps: int, mode: str = "linear", threshold: float | None = None) -> torch.Tensor:
    """Time-to-first-spike code: each feature spikes at most once; larger values spike earlier.

    Values at or below ``threshold`` never spike (so silence means "weak", not "late"). Above it:

    * ``mode="linear"`` (default threshold 0): ``t = round((1 - x) / (1 - threshold) * (steps - 1))``;
      x = 1 spikes at step 0, values just above the threshold at the last step. Spike times are
      evenly spread over the value range.
    * ``mode="log"`` (default threshold 0.01, must be in (0, 1)): ``t = round(ln(x) / ln(threshold) *
      (steps - 1))``, the charging time of a leaky integrator driven by x, rescaled so that x = 1 spikes
      at step 0 and x = threshold at the last step. Resolves small values more finely than large ones,
      which suits inputs that span orders of magnitude.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = (x if x.is_floating_point() else x.float()).clamp(0.0, 1.0)
    if mode == "linear":
        thr = 0.0 if threshold is None else float(threshold)
        if not 0.0 <= thr < 1.0:
            raise ValueError(f"linear latency needs 0 <= threshold < 1, got {thr}")
        frac = (1.0 - x) / (1.0 - thr)
    elif mode == "log":
        thr = 0.01 if threshold is None else float(threshold)
        if not 0.0 < thr < 1.0:
            raise ValueError(f"log latency needs 0 < threshold < 1, got {thr}")
        # clamp before the log so that x = 0 gives a finite (ignored) value instead of -inf * mask.
        frac = torch.log(x.clamp(min=thr)) / math.log(thr)
    else:
        raise ValueError(f"unknown latency mode {mode!r}; use 'linear' or 'log'")
    t_spike = torch.round(frac.clamp(0.0, 1.0) * (steps - 1)).long()
    fires = x > thr
    t = torch.arange(steps, device=x.device).view(1, steps, *([1] * (x.dim() - 1)))
    return ((t == t_spike.unsqueeze(1)) & fires.unsqueeze(1)).to(x.dtype)


# --- analogue time series -> events -----------------------------------------------------------------
def _check_series(x: torch.Tensor, threshold: float) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected a time series of shape (batch, steps, features), got {tuple(x.shape)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")


def _format_events(n: torch.Tensor, output: str) -> torch.Tensor:
    """Signed event counts (batch, steps, features) -> the requested output layout."""
    if output == "split":
        return torch.cat([n.clamp(min=0), (-n).clamp(min=0)], dim=2)
    if output == "signed":
        return n
    raise ValueError(f"unknown output {output!r}; use 'split' or 'signed'")


def _quantise(d: torch.Tensor, threshold: float, max_events: int | None) -> torch.Tensor:
    # trunc rounds towards zero, so a change counts once it reaches a whole threshold in either sign.
    n = torch.trunc(d / threshold)
    return n if max_events is None else n.clamp(-max_events, max_events)


def delta(x: torch.Tensor, threshold: float, output: str = "split", max_events: int | None = 1,
          start: str = "first") -> torch.Tensor:
    """Delta modulation: an event where the signal changed by at least ``threshold`` since the last *step*.

    ``x``: (batch, steps, features). The step-to-step change ``d[t] = x[t] - x[t-1]`` is quantised to
    ``n[t] = trunc(d[t] / threshold)`` events, clipped to ``+-max_events`` (None: no clipping).
    ``start="first"`` takes ``x[-1] = x[0]`` (a constant signal gives no events; the sensor's resting
    value is not an event), ``start="zero"`` takes ``x[-1] = 0``.

    Slow drifts below the threshold per step are never reported; ``sigma_delta`` tracks them. See
    ``sigma_delta`` for ``output``.
    """
    _check_series(x, threshold)
    if start == "first":
        prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    elif start == "zero":
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    else:
        raise ValueError(f"unknown start {start!r}; use 'first' or 'zero'")
    return _format_events(_quantise(x - prev, threshold, max_events), output)


def sigma_delta(x: torch.Tensor, threshold: float, output: str = "split", max_events: int | None = 1,
                start: str = "first") -> torch.Tensor:
    """Sigma-delta modulation: events that keep a running reconstruction within ``threshold`` of the signal.

    ``x``: (batch, steps, features). A reference ``r`` (the receiver's reconstruction, starting at
    ``x[0]`` for ``start="first"`` or 0 for ``start="zero"``) is compared with the signal each step;
    ``n[t] = trunc((x[t] - r) / threshold)`` events are emitted (clipped to ``+-max_events``) and
    ``r += n[t] * threshold``. So ``r[0] + threshold * cumsum(n)`` reconstructs the signal: within
    ``threshold`` everywhere when ``max_events`` is None, and with a slew-rate limit of
    ``max_events * threshold`` per step otherwise (the error left over is carried, not lost: that is
    the difference from ``delta``).

    Output layout (the choice is the caller's because hardware inputs are binary while Loihi's graded
    spikes are signed integers):

    * ``output="split"`` (default): 2 * features channels, ON events (signal rose) in the first
      ``features`` channels, OFF events (fell) in the last ``features``; values are non-negative
      counts, binary with the default ``max_events=1``. Feed to binary-spike inputs.
    * ``output="signed"``: ``features`` channels of signed counts ``n[t]`` (graded events).
    """
    _check_series(x, threshold)
    if start == "first":
        ref = x[:, 0].clone()
    elif start == "zero":
        ref = torch.zeros_like(x[:, 0])
    else:
        raise ValueError(f"unknown start {start!r}; use 'first' or 'zero'")
    n = torch.empty_like(x)
    # The reference depends on the previous step's clipped events, so this is a loop over time; each
    # step is whole-tensor work, so it runs on any device.
    for t in range(x.shape[1]):
        n_t = _quantise(x[:, t] - ref, threshold, max_events)
        n[:, t] = n_t
        ref = ref + n_t * threshold
    return _format_events(n, output)


def resample(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Linearly interpolate a time series (batch, T, features) to ``steps`` steps (end points kept).

    Sensor recordings come at their own sample rate; encoding them at a finer time step gives the
    network more steps to integrate and a sigma-delta encoder room to follow fast changes."""
    if x.dim() != 3:
        raise ValueError(f"expected (batch, steps, features), got {tuple(x.shape)}")
    return torch.nn.functional.interpolate(x.transpose(1, 2), size=steps, mode="linear",
                                           align_corners=True).transpose(1, 2)
