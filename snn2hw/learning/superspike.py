"""SuperSpike (Zenke & Ganguli 2018): online three-factor learning of target spike trains.

The loss is the squared van Rossum distance between the output spikes S and a target raster S*,
``D^2 = (1/tau) sum_t sum_k (f[t] - f*[t])_k^2`` with ``f = k * S`` the causal exponential filter
(``snn2hw.train.losses.van_rossum_distance``; kappa = exp(-1/tau) per step). Its gradient through the
eligibility traces of ``snn2hw.learning.online``, reordered so that it is available at every step::

    dD^2/dW_ij = sum_t err_i[t] lam_ij[t],    err[t] = (2/tau) (f[t] - f*[t])        (output layer)
    lam_ij[t]  = kappa lam_ij[t-1] + psi_i[t] ev_j[t]                                  (filtered eligibility)

(the sum over t' <= t of the kernel times the eligibility, swapped with the sum over t of the error).
Hidden layers receive ``err`` through fixed feedback: ``"symmetric"`` (the weights above, multiplied
through), ``"random"`` (a fixed random matrix per layer, feedback alignment) or ``"uniform"`` (all entries
equal). Everything is computed in one forward pass; memory is independent of T (the traces are
(batch, n, n_in) per layer because of the filter).

Targets: a float raster (batch, T, n_out) -- the spike-raster task -- or class labels, turned into a
raster where the label's neuron spikes every ``target_interval`` steps and the others stay silent.
The default, every step (``target_interval=1``), was chosen on digits' validation split: 96.2 %, against
95.1 % every 2nd step and 76.3 % every 3rd (``benchmarks/results/superspike_digits_diagnosis.json``). With
sparse label targets the silent output is a deep minimum of D^2 (9 of 10 targets are silent): whole output
neurons stop firing for every input, where the surrogate derivative cannot revive them, and BPTT on the
same loss collapses the same way (11-44 % validation at every raster density tried).
The trainer's ``loss_fn`` is not used: the rule's loss is D^2 (the logged loss).

``rmsprop=True``: the per-parameter rates of the paper, ``g / (sqrt(v) + eps)`` with
``v = max(rms_decay * v, g^2)`` per weight, applied to the gradient the trainer's optimizer receives
(use plain SGD with it); ``v`` is rule state, in ``state_dict``.

``rate_target``: e-prop's firing-rate regulariser ``(rate_cost T / 2) sum_j (f_j - f_target)^2`` on every
spiking layer (``snn2hw.learning.stack.rate_error``; rates from a first, gradient-free pass). A van Rossum
loss to a label raster asks 9 of 10 outputs to stay silent, and with BPTT or SuperSpike whole output
neurons fall silent for every input, where the surrogate derivative is too small to revive them; the
regulariser holds each neuron's mean rate near the target's. Its constant signal goes through the same
filtered eligibility as the error, times ``1 - kappa`` (so each step's eligibility is replaced by its
normalised exponential average); with ``kappa -> 0`` it is e-prop's regulariser update exactly.
Off by default: on digits it cost accuracy (58.9 % validation against 76.3 %, the hidden layer pushed
silent too); the dense label raster above is what removed the silent outputs.
"""
from __future__ import annotations

import math

import torch

from snn2hw.learning.base import BatchResult, LearningRuleError, bool_option, float_option, int_option, register_rule
from snn2hw.learning.eprop import _OnlineRule, symmetric_feedback
from snn2hw.learning.online import accumulate_into_grads, run_online
from snn2hw.learning.stack import check_forward_kwargs, check_rate_options, check_window
from snn2hw.nn.conv import LeakyReadout

__all__ = ["SuperSpike", "label_raster"]

FEEDBACK = ("symmetric", "random", "uniform")


def label_raster(labels: torch.Tensor, steps: int, classes: int, interval: int, offset: int = 0,
                 dtype=torch.float32) -> torch.Tensor:
    """(batch, T, classes): the label's neuron spikes at steps offset, offset + interval, ...; others silent
    (all silent when ``offset >= steps``)."""
    if offset < 0 or interval < 1:
        raise ValueError(f"label_raster: need offset >= 0 and interval >= 1, got offset={offset}, interval={interval}")
    raster = torch.zeros(len(labels), steps, classes, dtype=dtype, device=labels.device)
    times = torch.arange(min(offset, steps), steps, interval, device=labels.device)
    raster[:, times] = torch.nn.functional.one_hot(labels.long(), classes).to(dtype)[:, None, :]
    return raster


@register_rule
class SuperSpike(_OnlineRule):
    name = "superspike"

    def __init__(self, feedback: str = "symmetric", tau: float = 10.0, seed: int = 0, rmsprop: bool = False,
                 rms_decay: float = 0.999, rms_eps: float = 1e-8, target_interval: int = 1, target_offset: int = 2,
                 reset_in_trace: bool = False, rate_target: float | None = None, rate_cost: float = 1.0):
        if feedback not in FEEDBACK:
            raise LearningRuleError(f"rule 'superspike': feedback must be one of {FEEDBACK}, got {feedback!r}")
        super().__init__(seed, reset_in_trace, kind="uniform" if feedback == "uniform" else "random")
        self.feedback, self.tau = feedback, float_option(self.name, "tau", tau, 0.0, above=True)
        self.rmsprop = bool_option(self.name, "rmsprop", rmsprop)
        # v = max(rms_decay v, g^2) and g / (sqrt(v) + rms_eps): a silent layer's g = 0 needs rms_eps > 0 (0 / 0)
        self.rms_decay = float_option(self.name, "rms_decay", rms_decay, 0.0, 1.0)
        self.rms_eps = float_option(self.name, "rms_eps", rms_eps, 0.0, above=True)
        self.target_interval = int_option(self.name, "target_interval", target_interval, 1)
        self.target_offset = int_option(self.name, "target_offset", target_offset, 0)
        self.rms: dict[str, torch.Tensor] = {}
        self.rate_target, self.rate_cost = check_rate_options(self.name, rate_target, rate_cost)

    def describe(self) -> dict:
        return {**super().describe(), "feedback": self.feedback, "tau": self.tau, "rmsprop": self.rmsprop,
                "target_interval": self.target_interval, "rate_target": self.rate_target, "rate_cost": self.rate_cost}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rms": {k: v.clone() for k, v in self.rms.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "rms"})
        self.rms = {k: v.clone() for k, v in (state.get("rms") or {}).items()}

    def target(self, y: torch.Tensor, steps: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        if y.dim() == 3:
            if tuple(y.shape[1:]) != (steps, n_out):
                raise LearningRuleError(f"rule 'superspike': target raster shape {tuple(y.shape)} does not match "
                                        f"the output (batch, {steps}, {n_out})")
            return y.to(like.dtype)
        if y.dim() == 1 and not y.is_floating_point():
            return label_raster(y, steps, n_out, self.target_interval, self.target_offset, like.dtype)
        raise LearningRuleError(f"rule 'superspike': targets must be a raster (batch, T, n_out) or class labels, "
                                f"got shape {tuple(y.shape)}")

    def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0) -> BatchResult:
        if check_forward_kwargs(self.name, forward_kwargs):
            raise LearningRuleError("rule 'superspike': the return_all forward option is not supported")
        layers = self._layers(model)
        check_window(self.name, model, x.shape[1], self.rate_target is not None)
        if isinstance(layers[-1], LeakyReadout):
            raise LearningRuleError("rule 'superspike' learns output spike trains; the last layer is a LeakyReadout")
        batch, steps = x.shape[:2]
        like = x if x.is_floating_point() else x.float()
        target = self.target(y, steps, layers[-1].out_features, like)
        kappa = math.exp(-1.0 / self.tau)
        last = len(layers) - 1
        if self.feedback == "symmetric":
            feedback = [symmetric_feedback(layers, i) for i in range(last)]
        else:
            feedback = self.matrices[:last]
        f_out = like.new_zeros(batch, layers[-1].out_features)
        f_tgt = torch.zeros_like(f_out)
        sq = like.new_zeros(batch)
        coef = 2.0 / (self.tau * batch)  # d(mean over the batch of D^2)/d f
        reg = [None] * len(layers)
        if self.rate_target is not None:
            reg = [None if r is None else r * (1.0 - kappa)
                   for r in self._rate_signals(run_online(layers, x).states, steps)]

        def signal(t, outs):
            f_out.mul_(kappa).add_(outs[-1])
            f_tgt.mul_(kappa).add_(target[:, t])
            diff = f_out - f_tgt
            sq.add_(diff.square().sum(1))
            err = diff * coef
            sig = [err @ b for b in feedback] + [err]
            return [s if r is None else s + r for s, r in zip(sig, reg)]

        res = run_online(layers, x, signal, filter_decay=kappa, reset_in_trace=self._reset_flags(layers), record=[last])
        grads = self._normalise(res.grads) if self.rmsprop else res.grads
        accumulate_into_grads(layers, grads, scale)
        return BatchResult((sq / self.tau).mean(), res.records[last])

    def _normalise(self, grads: list) -> list:
        out = []
        for i, g in enumerate(grads):
            d = {}
            for name, value in g.items():
                key = f"{i}.{name}"
                v = self.rms.get(key)
                v = value.square() if v is None else torch.maximum(v.to(value.device) * self.rms_decay, value.square())
                self.rms[key] = v
                d[name] = value / (v.sqrt() + self.rms_eps)
            out.append(d)
        return out
