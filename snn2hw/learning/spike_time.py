"""Spike-time gradients: a time-to-first-spike (TTFS) loss with exact derivatives of spike times.

The rule trains snn2hw's own deployable ``LIFDense`` stacks. For the CUBA-LIF of ``snn2hw.nn`` (per step
``u = alpha u + a``, ``v = beta v + u + bias``, hop delay one step) a single input spike of weight ``w``
that left its source at step ``k`` gives, before any reset, exactly

    v[t] = w kappa(t - k),       kappa(n) = (alpha**n - beta**n) / (alpha - beta)      (n >= 0)

(``n alpha**(n - 1)`` when ``alpha == beta``, the limit of the same formula)
and the bias adds ``bias (1 - beta**(t+1)) / (1 - beta)``. Read with a real ``n``, kappa is the
continuous-time PSP of the same neuron, so the membrane before the first spike,
``V_i(t) = sum_j w_ij kappa(t - t_j) + bias term``, is a smooth function of time, weights and input
spike times that equals the discrete network's at every integer step. A neuron's first spike time is the
first real root ``t_i`` of ``V_i(t) = v_th``; the discrete network fires at the first integer step after
it (``ceil(t_i)``) whenever V does not dip back below threshold within that step.

Exact derivatives of spike times (the implicit function theorem; the same jump term an EventProp
adjoint carries at a spike): ``dt_i/dp = -(dV_i/dp)(t_i) / V_i'(t_i)`` for every parameter p and every
earlier spike time ``t_j`` (through ``kappa(t_i - t_j)``), so gradients reach hidden layers through
their spike times. Computed by finding the root without a graph (a grid of ``grid`` points per step,
then bisection to float precision) and taking one differentiable Newton step from it,
``t_i = t0 - (V_i(t0) - v_th) / V_i'(t0)`` with ``t0`` and ``V_i'(t0)`` constants: its value is ``t0``
and its gradient is exactly the implicit derivative. Only first spikes count (the TTFS model): later
spikes of a neuron do not enter the relaxation.

Loss: the network's output is ``-t_out / tau0`` per output neuron (logits: earlier is larger), handed to
the trainer's ``loss_fn``; snn2hw's default (``count_cross_entropy``) then is the usual TTFS
cross-entropy ``CE(softmax(-t / tau0))``. A silent output neuron gets ``t = window + silent_slope
(v_th - max_t V)``, which pulls its membrane up; ``early`` adds ``early * mean(t_label / window)``
(pushes the right neuron to fire early; Göltz et al. 2021 use an exponential form of the same idea).
Decode deployed networks with ``predict_first_spike``.
"""
from __future__ import annotations

import copy
import math

import torch

from snn2hw.learning.base import (BatchResult, LearningRule, LearningRuleError, float_option, int_option,
                                  register_rule)

__all__ = ["SpikeTimeGradient", "single_spike", "first_spike_steps", "layer_first_spike_times", "network_first_spike_times",
           "predict_first_spike", "first_spike_cross_entropy"]


def _kappa(tau: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    # (alpha**n - beta**n) / (alpha - beta) written as beta**n expm1(n (ln alpha - ln beta)) / (alpha - beta):
    # the difference of two nearly equal powers would lose every digit as alpha -> beta, this form does not, and
    # alpha == beta takes the limit n alpha**(n - 1)
    lb = math.log(beta)
    if alpha == beta:
        return tau * torch.exp((tau - 1.0) * lb)
    d = math.log1p((alpha - beta) / beta)  # ln(alpha / beta) from the exact difference, not two rounded logs
    return torch.exp(tau * lb) * torch.expm1(tau * d) / (alpha - beta)


def _kappa_dt(tau: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    # d kappa / d n in the same cancellation-free form; the limit alpha == beta is alpha**(n - 1) (1 + n ln alpha)
    lb = math.log(beta)
    if alpha == beta:
        return torch.exp((tau - 1.0) * lb) * (1.0 + tau * lb)
    d = math.log1p((alpha - beta) / beta)
    return torch.exp(tau * lb) * (lb * torch.expm1(tau * d) + d * torch.exp(tau * d)) / (alpha - beta)


def _bias_term(t: torch.Tensor, bias: torch.Tensor | None, beta: float):
    if bias is None:
        return 0.0
    if beta == 1.0:
        return bias * (t + 1.0)
    return bias * (1.0 - torch.exp((t + 1.0) * math.log(beta))) / (1.0 - beta)


def _bias_term_dt(t: torch.Tensor, bias: torch.Tensor | None, beta: float):
    if bias is None:
        return 0.0
    if beta == 1.0:
        return bias * torch.ones_like(t)
    lb = math.log(beta)
    return -bias * lb * torch.exp((t + 1.0) * lb) / (1.0 - beta)


def first_spike_steps(spikes: torch.Tensor) -> torch.Tensor:
    """(batch, T, n) spikes -> (batch, n) step of each neuron's first spike, ``inf`` if it never spikes."""
    steps = spikes.shape[1]
    idx = torch.arange(steps, device=spikes.device, dtype=torch.float64 if spikes.dtype == torch.float64 else torch.float32)
    t = torch.where(spikes > 0, idx[None, :, None], torch.full((), math.inf, device=spikes.device, dtype=idx.dtype))
    return t.min(dim=1).values.to(spikes.dtype if spikes.is_floating_point() else idx.dtype)


def _voltage(t: torch.Tensor, t_in: torch.Tensor, weight: torch.Tensor, alpha, beta, bias):
    """V at per-neuron times ``t`` (batch, n_out), inputs' first spike times ``t_in`` (batch, n_in)."""
    t_in = torch.nan_to_num(t_in, posinf=1e9)
    tau = (t[:, :, None] - t_in[:, None, :]).clamp(min=0.0)  # (batch, n_out, n_in); kappa(0) = 0
    return (weight[None] * _kappa(tau, alpha, beta)).sum(-1) + _bias_term(t, bias, beta)


def _voltage_dt(t, t_in, weight, alpha, beta, bias):
    t_in = torch.nan_to_num(t_in, posinf=1e9)
    diff = t[:, :, None] - t_in[:, None, :]
    tau = diff.clamp(min=0.0)
    return (weight[None] * _kappa_dt(tau, alpha, beta) * (diff > 0)).sum(-1) + _bias_term_dt(t, bias, beta)


def layer_first_spike_times(t_in: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float, v_th: float,
                            bias: torch.Tensor | None = None, window: float = 64.0, grid: int = 4,
                            bisections: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """First spike times (batch, n_out) of one layer (``inf`` where V stays below ``v_th`` up to ``window``)
    and the peak membrane (batch, n_out) on the search grid; both differentiable in ``t_in``, ``weight``
    and ``bias`` (the times by the implicit function theorem, see the module docstring)."""
    batch, n_out = t_in.shape[0], weight.shape[0]
    with torch.no_grad():
        g = torch.linspace(0.0, float(window), int(window * grid) + 1, device=t_in.device, dtype=weight.dtype)
        t_safe = torch.nan_to_num(t_in.detach(), posinf=1e9)
        k = _kappa((g[None, None, :] - t_safe[:, :, None]).clamp(min=0.0), alpha, beta)  # (batch, n_in, G)
        v = torch.einsum("oj,bjg->bog", weight.detach(), k)
        if bias is not None:
            v = v + _bias_term(g, bias.detach()[:, None], beta)[None]
        above = v > v_th
        fired = above.any(dim=-1)
        first = torch.where(fired, above.float().argmax(dim=-1), torch.zeros_like(fired, dtype=torch.long))
        hi = g[first]
        lo = torch.where(first > 0, g[(first - 1).clamp(min=0)], hi)
        for _ in range(bisections):
            mid = 0.5 * (lo + hi)
            up = _voltage(mid, t_in.detach(), weight.detach(), alpha, beta,
                          None if bias is None else bias.detach()) > v_th
            hi = torch.where(up, mid, hi)
            lo = torch.where(up, lo, mid)
        t0 = hi
        slope = _voltage_dt(t0, t_in.detach(), weight.detach(), alpha, beta,
                            None if bias is None else bias.detach()).clamp(min=1e-6)
        peak_t = g[v.argmax(dim=-1)]
    v0 = _voltage(t0, t_in, weight, alpha, beta, bias)
    t_out = t0 - (v0 - v_th) / slope
    t_out = torch.where(fired, t_out, torch.full_like(t_out, math.inf))
    v_peak = _voltage(peak_t, t_in, weight, alpha, beta, bias)
    return t_out, v_peak


def _is_self_inhibition(layer) -> bool:
    """A ``RecurrentLIFDense`` whose recurrent weights are a non-positive diagonal (``single_spike``)."""
    v = layer.effective_rec_weight().detach()
    return bool((v - torch.diag(torch.diagonal(v))).abs().max() == 0 and (torch.diagonal(v) <= 0).all())


def _layer_args(layer) -> tuple[float, float, float]:
    from snn2hw.nn.layers import LIFDense, RecurrentLIFDense

    ok = type(layer) is LIFDense or (type(layer) is RecurrentLIFDense and _is_self_inhibition(layer))
    if not ok:
        raise LearningRuleError(f"rule 'spike-time' trains stacks of LIFDense layers (or RecurrentLIFDense with only "
                                f"self-inhibition, see single_spike); got {type(layer).__name__}")
    alpha, beta = 1.0 - float(layer.du.clamp(0, 1)), 1.0 - float(layer.dv.clamp(0, 1))
    if not (0.0 < alpha < 1.0 and 0.0 < beta <= 1.0):
        raise LearningRuleError(f"rule 'spike-time': layer needs 0 < du < 1 and 0 <= dv < 1 "
                                f"(got du={1 - alpha}, dv={1 - beta})")
    return alpha, beta, layer.v_th


def network_first_spike_times(model, x: torch.Tensor, window: float | None = None, grid: int = 4,
                              snap: bool = True):
    """Per layer of ``model`` (a ``SpikingSequential`` of ``LIFDense``): (first spike times, peak V)
    of the TTFS relaxation for input spikes ``x`` (batch, T, n_in); the window defaults to T.

    ``snap=True``: a hidden layer passes on the step at which the discrete network fires,
    ``ceil(t)``, with the derivative of the continuous time ``t`` (straight through the rounding), so
    the next layer sees exactly the spikes the deployed network sends and the output times are the
    deployed network's up to the last layer's own rounding. ``snap=False``: the continuous relaxation
    throughout (whose derivatives are exact; what the finite-difference tests check)."""
    layers = list(getattr(model, "layers", [model]))
    window = float(x.shape[1] if window is None else window)
    t = first_spike_steps(x.to(layers[0].weight.dtype))
    out = []
    for i, layer in enumerate(layers):
        alpha, beta, v_th = _layer_args(layer)
        t, v_peak = layer_first_spike_times(t, layer.weight, alpha, beta, v_th, layer.bias, window, grid)
        out.append((t, v_peak))
        if snap and i < len(layers) - 1:
            t = t + (torch.ceil(t.detach()) - t.detach()).nan_to_num(0.0)
    return out


def predict_first_spike(output) -> torch.Tensor:
    """Class = the output neuron that fires first. Spikes (batch, T, n): earliest step, ties broken by the
    larger spike count (then the lower index); a neuron that never fires loses. Scores (batch, n), such
    as the rule's ``-t / tau0`` output: the largest."""
    output = output[-1] if isinstance(output, (list, tuple)) else output
    if output.dim() == 2:
        return output.argmax(dim=1)
    steps = output.shape[1]
    first = first_spike_steps(output).nan_to_num(posinf=steps)
    counts = output.sum(dim=1)
    return (-(first * (steps + 1)) + counts).argmax(dim=1)


def first_spike_cross_entropy(output, labels: torch.Tensor, tau0: float = 2.0) -> torch.Tensor:
    """TTFS cross-entropy for the trainer's evaluation: logits ``-t_first / tau0`` from output spikes
    (batch, T, n) (a silent neuron counts as firing at step T), or scores (batch, n) taken as logits."""
    output = output[-1] if isinstance(output, (list, tuple)) else output
    if output.dim() == 3:
        output = -first_spike_steps(output).nan_to_num(posinf=output.shape[1]) / tau0
    return torch.nn.functional.cross_entropy(output, labels.long())


@register_rule
class SpikeTimeGradient(LearningRule):
    """Exact spike-time gradients of a TTFS loss for ``LIFDense`` stacks (see the module docstring)."""

    name = "spike-time"

    def __init__(self, tau0: float = 2.0, window: float | None = None, grid: int = 4, early: float = 0.0,
                 silent_slope: float = 10.0):
        self.tau0 = float_option(self.name, "tau0", tau0, 0.0, above=True)
        # the search range of the first spikes, in steps (None: the input's T)
        self.window = None if window is None else float_option(self.name, "window", window, 0.0, above=True)
        self.grid = int_option(self.name, "grid", grid, 1)
        self.early = float_option(self.name, "early", early, 0.0)
        self.silent_slope = float_option(self.name, "silent_slope", silent_slope, 0.0)

    def setup(self, model) -> None:
        from snn2hw.learning.stack import check_float_weights_only

        layers = list(getattr(model, "layers", [model]))
        for layer in layers:
            _layer_args(layer)
        # the relaxation reads du, dv and the threshold as numbers: trainable ones would stay untrained, silently,
        # and a QAT layer's quantized forward is not what the relaxation differentiates
        check_float_weights_only(layers, self.name)

    def output_times(self, model, x: torch.Tensor) -> torch.Tensor:
        """Effective output spike times (batch, n_out): silent neurons placed after the window."""
        window = float(x.shape[1] if self.window is None else self.window)
        t, v_peak = network_first_spike_times(model, x, window, self.grid)[-1]
        v_th = model.layers[-1].v_th if hasattr(model, "layers") else model.v_th
        return torch.where(torch.isfinite(t), t, window + self.silent_slope * (v_th - v_peak))

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        from snn2hw.learning.stack import check_forward_kwargs

        if check_forward_kwargs(self.name, forward_kwargs):  # the loss sees output times only (was ignored)
            raise LearningRuleError("rule 'spike-time': the return_all forward option is not supported (the loss "
                                    "sees the output's first-spike times)")
        t = self.output_times(model, x)
        out = -t / self.tau0
        loss = loss_fn(out, y)
        total = loss
        if self.early > 0:
            t_label = t.gather(1, y.long().view(-1, 1)).squeeze(1)
            window = float(x.shape[1] if self.window is None else self.window)
            total = total + self.early * (t_label / window).mean()
        (total * scale if scale != 1.0 else total).backward()
        return BatchResult(loss.detach(), out.detach())

    def describe(self) -> dict:
        return {"name": self.name, "tau0": self.tau0, "window": self.window, "grid": self.grid, "early": self.early,
                "silent_slope": self.silent_slope}


def single_spike(model, inhibition: float | None = None):
    """A deployable copy of ``model`` (``SpikingSequential`` of ``LIFDense``) whose hidden neurons fire once.

    The TTFS relaxation counts only first spikes, but a CUBA-LIF keeps integrating after its reset and
    may fire again, which moves the next layer's spikes earlier. Each hidden layer becomes a
    ``RecurrentLIFDense`` with a diagonal, inhibitory recurrent weight ``-inhibition`` (a one-step
    Dense hop of the neuron onto itself, which Loihi 2 runs like any projection): after its first spike
    a neuron receives a current that keeps it below threshold for the rest of the sample. The default
    strength is 20 times the largest summed positive input weight of the layer. First spikes (and so the
    relaxation and its gradients) are unchanged; the output layer stays as it is (only its first spike
    is read)."""
    from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

    layers = []
    for i, layer in enumerate(model.layers):
        _layer_args(layer)
        if i == len(model.layers) - 1 or type(layer) is not LIFDense:
            layers.append(copy.deepcopy(layer))
            continue
        cfg = layer.config()
        n = layer.out_features
        strength = inhibition if inhibition is not None else 20.0 * float(layer.weight.detach().clamp(min=0).sum(1).max())
        rec = RecurrentLIFDense(cfg["in_features"], n, du=cfg["du"], dv=cfg["dv"], v_th=cfg["v_th"], bias=cfg["bias"],
                                rec_mask=torch.eye(n))
        with torch.no_grad():
            rec.weight.copy_(layer.weight)
            if layer.bias is not None:
                rec.bias.copy_(layer.bias)
            rec.rec_weight.copy_(-strength * torch.eye(n))
        layers.append(rec.to(layer.weight.device, layer.weight.dtype))
    return SpikingSequential(layers)
