"""Loss functions and activity regularisers for spiking networks.

Conventions: spike trains and membrane traces are (batch, T, n); ``labels`` are class indices
(batch,). Functions that take "counts" also accept spike trains (they sum over time, dim 1). Losses
take ``reduction`` = ``"mean"`` (over the batch; the default), ``"sum"`` or ``"none"`` (one value per
sample). Per-sample values are sums over neurons (and steps), so a batch mean is a per-sample mean:
the trainer's distributed mode relies on that to reproduce a single-process gradient exactly.

Regularisers take one spike tensor or a sequence of them (e.g. ``model(x, return_all=True)``) and
return a scalar summed over the tensors.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "spike_counts",
    "spike_count_mse",
    "count_cross_entropy",
    "membrane_cross_entropy",
    "van_rossum_distance",
    "exponential_filter",
    "rate_penalty",
    "count_l2_penalty",
]

Spikes = Union[torch.Tensor, Sequence[torch.Tensor]]


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def spike_counts(output: torch.Tensor) -> torch.Tensor:
    """(batch, T, n) spikes -> (batch, n) counts; (batch, n) counts pass through."""
    if output.dim() == 3:
        return output.sum(dim=1)
    if output.dim() == 2:
        return output
    raise ValueError(f"expected spikes (batch, T, n) or counts (batch, n), got shape {tuple(output.shape)}")


def spike_count_mse(output: torch.Tensor, labels: torch.Tensor, target_true: float = 35.0,
                    target_false: float = 5.0, margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Squared error between spike counts and target counts (HM2-BP's output loss).

    The label neuron's target is ``target_true`` spikes, every other neuron's ``target_false``
    (HM2-BP used 35 and 5 over 400 steps). Per sample ``1/2 sum_i (o_i - y_i)^2``, where neurons with
    ``|o_i - y_i| <= margin`` contribute nothing (HM2-BP counts the error only outside the margin, so
    counts near their target are left alone instead of being pulled to the exact value).
    """
    counts = spike_counts(output)
    target = torch.full_like(counts, float(target_false))
    target.scatter_(1, labels.long().view(-1, 1), float(target_true))
    err = counts - target
    if margin > 0:
        err = err * (err.abs() > margin)
    return _reduce(0.5 * err.square().sum(dim=1), reduction)


def count_cross_entropy(output: torch.Tensor, labels: torch.Tensor, scale: float = 1.0,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``softmax(scale * counts)``: the spike count of each output neuron is its logit.

    ``scale`` sets the softmax temperature; with long windows counts are large and a scale < 1
    keeps the softmax from saturating."""
    return F.cross_entropy(spike_counts(output) * scale, labels.long(), reduction=reduction)


def membrane_cross_entropy(v: torch.Tensor, labels: torch.Tensor, over_time: str = "max",
                           reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on a non-spiking read-out's membrane trace ``v`` (batch, T, n).

    The logits are the trace reduced over time: ``"max"`` (the peak, as in Zenke's tutorials: the
    class whose read-out peaks highest wins), ``"mean"`` (the time average), or ``"last"`` (the final
    step, for read-outs that integrate the whole sample)."""
    if v.dim() != 3:
        raise ValueError(f"expected a membrane trace (batch, T, n), got shape {tuple(v.shape)}")
    if over_time == "max":
        logits = v.max(dim=1).values
    elif over_time == "mean":
        logits = v.mean(dim=1)
    elif over_time == "last":
        logits = v[:, -1]
    else:
        raise ValueError(f"unknown over_time {over_time!r}; use 'max', 'mean' or 'last'")
    return F.cross_entropy(logits, labels.long(), reduction=reduction)


def exponential_filter(spikes: torch.Tensor, tau: float) -> torch.Tensor:
    """Causal exponential filter over time: ``f[t] = sum_{t' <= t} s[t'] exp(-(t - t') / tau)``.

    A spike contributes 1 at its own step and decays by ``exp(-1/tau)`` per step. Computed as one
    matrix product with the (T, T) lower-triangular kernel, which autograd differentiates exactly and
    which is fast for the few hundred steps of typical samples."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (in steps), got {tau}")
    steps = spikes.shape[1]
    t = torch.arange(steps, device=spikes.device, dtype=spikes.dtype)
    lag = t.view(-1, 1) - t.view(1, -1)
    kernel = torch.where(lag >= 0, torch.exp(-lag.clamp(min=0) / tau), torch.zeros((), dtype=spikes.dtype,
                                                                                   device=spikes.device))
    return torch.einsum("ts,bsn->btn", kernel, spikes)


def van_rossum_distance(output: torch.Tensor, target: torch.Tensor, tau: float = 10.0,
                        reduction: str = "mean") -> torch.Tensor:
    """Squared van Rossum distance between spike trains (batch, T, n), ``tau`` in steps.

    Both trains are filtered with ``exponential_filter`` and per sample
    ``D^2 = (1/tau) sum_t sum_n (f_out[t] - f_target[t])^2``: the discrete form of van Rossum's
    ``(1/tau) integral (f - g)^2 dt``. With that normalisation one unmatched spike far from the
    window's end costs ``1 / (tau (1 - exp(-2/tau)))``, about 1/2 for large tau. The squared distance
    is returned because it is smooth where the trains agree; take the square root for the metric."""
    if output.shape != target.shape or output.dim() != 3:
        raise ValueError(f"output and target must both be (batch, T, n), got {tuple(output.shape)} and {tuple(target.shape)}")
    diff = exponential_filter(output - target.to(output.dtype), tau)
    return _reduce(diff.square().sum(dim=(1, 2)) / tau, reduction)


def _as_list(spikes: Spikes) -> list[torch.Tensor]:
    if isinstance(spikes, torch.Tensor):
        return [spikes]
    out = list(spikes)
    if not out:
        raise ValueError("expected at least one spike tensor")
    return out


def rate_penalty(spikes: Spikes, lower: float | None = None, upper: float | None = None) -> torch.Tensor:
    """Keep each neuron's firing rate within ``[lower, upper]`` (spikes per step).

    Per neuron the rate is its mean over batch and time; the penalty is
    ``mean_i relu(rate_i - upper)^2 + mean_i relu(lower - rate_i)^2`` summed over the given tensors.
    The upper bound curbs runaway activity (cheap on hardware, and saturated neurons pass no
    gradient); the lower bound revives silent neurons, which pass no gradient either. A mean over
    neurons keeps the strength independent of layer width."""
    if lower is None and upper is None:
        raise ValueError("give at least one of lower and upper")
    total = None
    for s in _as_list(spikes):
        rate = s.mean(dim=tuple(range(s.dim() - 1)))  # per neuron: over batch and time
        term = rate.new_zeros(())
        if upper is not None:
            term = term + F.relu(rate - upper).square().mean()
        if lower is not None:
            term = term + F.relu(lower - rate).square().mean()
        total = term if total is None else total + term
    return total


def count_l2_penalty(spikes: Spikes) -> torch.Tensor:
    """Mean squared spike count per sample and neuron, ``mean_{b,i} (sum_t s[b,t,i])^2``, summed over tensors.

    Penalises neurons that fire a lot more than ones that fire a little (an L2, not L1, on activity),
    which spreads activity and lowers the spike (energy) budget."""
    total = None
    for s in _as_list(spikes):
        term = spike_counts(s).square().mean()
        total = term if total is None else total + term
    return total

