"""The count errors ``dE/do`` the backward starts from: the output's (the papers' count loss, or the task's loss on
the spike trains), the hidden-activity term's, and the bounds that drop errors no count can follow. Pure functions
of the trains and the rule's options (``SpikeTrainRule`` passes its own)."""
from __future__ import annotations

import torch

from snn2hw.learning.base import LearningRuleError
from snn2hw.learning.spiketrain.trace import spike_counts


def count_targets(counts: torch.Tensor, y: torch.Tensor, target_true: float, target_false: float) -> torch.Tensor:
    """(B, N) target counts: ``target_true`` at each sample's label, ``target_false`` elsewhere."""
    t = torch.full_like(counts, target_false)
    t.scatter_(1, y.long().view(-1, 1), target_true)
    return t


def count_error(counts: torch.Tensor, targets: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-neuron error ``o - y`` outside the margin, per-sample loss ``1/2 sum err^2``)."""
    err = counts - targets
    err = err * (err.abs() > margin)
    return err, 0.5 * err.square().sum(1)


def task_error(out: torch.Tensor, y: torch.Tensor, loss_fn, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample ``dE/do`` (B, N), the batch's mean loss) of the trainer's ``loss_fn`` evaluated on the output
    spike trains ``out`` (B, T, N): its gradient by autograd, averaged over time."""
    if loss_fn is None:
        raise LearningRuleError(f"{rule}: loss='task' needs the trainer's loss_fn, got None")
    leaf = out.detach().requires_grad_(True)
    with torch.enable_grad():
        mean_loss = loss_fn(leaf, y)
        (grad,) = torch.autograd.grad(mean_loss, leaf)
    # the loss is the batch mean, so a sample's own dE/do is B times its share; a loss of the counts has
    # the same gradient at every step, and for any other loss the mean over time is its count component
    return grad.mean(1) * out.shape[0], mean_loss.detach()


def bound_error(g: torch.Tensor, s_out: torch.Tensor, t_ref: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``g`` without the components that push a count out of its range: a silent neuron cannot fire less
    and one that fires at every step it can (every ``1 + t_ref`` steps from the first step an input reaches
    it) cannot fire more. The rate model ``o = a / v_th`` has no such bounds, so without this a neuron
    asked to go further keeps its error, and layers drift into silence or saturation (``count_bounds``).
    ``counts``: the spike counts of ``s_out`` where the forward recorded them (``LayerTrace.counts``, exact), else
    None and they are counted here (``spike_counts``)."""
    counts = (spike_counts(s_out) if counts is None else counts).to(g.dtype).reshape(g.shape)
    first = first_fired_step(s_out)  # the layer's first reachable step (hops)
    top = (s_out.shape[1] - 1 - first) // (1 + t_ref) + 1
    blocked = ((counts <= 0) & (g > 0)) | ((counts >= top) & (g < 0))
    return torch.where(blocked, torch.zeros_like(g), g)


def first_fired_step(s_out: torch.Tensor) -> int:
    """The first step at which any neuron of the layer fired in any sample of the trains ``s_out`` (B, T, ...), 0
    when none did: read in blocks of steps from the start, doubling, so a layer that fires early (one hop per layer)
    costs a few steps, not a pass over the window."""
    steps, t0, block = s_out.shape[1], 0, 8
    while t0 < steps:
        fired = s_out[:, t0:t0 + block].flatten(2).any(2).any(0)  # (block,): steps at which any neuron fired
        if bool(fired.any()):
            return t0 + int(fired.nonzero()[0])
        t0, block = t0 + block, 2 * block
    return 0


def rate_error(s_out: torch.Tensor, penalty: float, target: float,
               counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``dE_r/do`` (B, N), per-sample ``E_r`` (B,)) of the hidden-activity term of one hidden layer with spike
    trains ``s_out`` (B, T, ...), ``E_r = penalty * sum_j max(0, o_j / T - target)``: an L1 penalty on
    each neuron's rate above ``target`` (spikes per step). Its gradient is ``penalty / T`` for a
    neuron firing above the target and 0 otherwise (at ``o_j = target T``, where the hinge has no
    derivative, 0), so it never reaches a silent neuron: its count cannot fall, and an error there would give
    it virtual spikes and push its weights further down with nothing to gain. It enters the layer's count
    error ``dE/do`` before ``count_bounds`` and the rule's own S-PSP update, so it lowers a firing neuron's
    rate through the same weights and inputs as the task's error does. The rate model ``o ~= a / v_th`` gives
    a neuron below threshold no gradient, so without such a term nothing tells a rule that a hidden neuron
    off is better than one firing at a low rate: BPTT's hidden code on the CNNs is sparse, HM2-BP's dense.
    ``counts``: the float64 spike counts of ``s_out`` where the forward recorded them, else None (counted here)."""
    steps = s_out.shape[1]
    counts = (spike_counts(s_out) if counts is None else counts).reshape(s_out.shape[0], -1)
    above = counts > target * steps
    per_sample = penalty * (counts / steps - target).clamp(min=0.0).sum(1)
    grad = torch.where(above, torch.full_like(counts, penalty / steps), torch.zeros_like(counts))
    return grad, per_sample
