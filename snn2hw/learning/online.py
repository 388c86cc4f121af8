"""The forward-in-time engine of the online rules (e-prop, SuperSpike, DECOLLE): a dense stack run one
step at a time, every layer at once, with eligibility traces whose size does not depend on T.

The float neuron (``snn2hw.nn.functional``), for a layer with input spikes ``x`` (the previous layer's
output; the Dense hop delays it one step), recurrent spikes ``s`` (``RecurrentLIFDense``) and bias b::

    u[t] = alpha u[t-1] + W x[t-1] + V s[t-1]
    v_pre[t] = beta v[t-1] + u[t] + b          s[t] = v_pre[t] > v_th          v[t] = v_pre[t] (1 - s[t])

Eligibility traces are forward-mode derivatives of v_pre with the spikes held fixed (the reset is
detached, as in the layers' BPTT, and the recurrent spikes are treated as inputs: e-prop's
approximation). For a presynaptic train x_j (an input, or the layer's own spikes for V)::

    eu_j[t]  = alpha eu_j[t-1] + x_j[t-1]                             = du[t]/dW_ij
    ev_ij[t] = beta (1 - s_i[t-1]) ev_ij[t-1] + eu_j[t]               = dv_pre_i[t]/dW_ij
    e_ij[t]  = psi_i[t] ev_ij[t],   psi_i[t] = surrogate'(v_pre_i[t] - v_th)   (1 for a LeakyReadout)

``reset_in_trace=False`` (the default; Bellec et al.'s LIF eligibility and DECOLLE's and SuperSpike's
traces) drops the reset factor, so ``ev`` is a presynaptic trace, the same for every i:
``ev_j[t] = sum_{k<t} h[t-1-k] x_j[k]`` with ``h[d] = sum_{m=0..d} alpha^m beta^(d-m)`` (closed form
``(alpha^(d+1) - beta^(d+1)) / (alpha - beta)``), and the update is one (n, B) x (B, n_in) product per
step. ``reset_in_trace=True`` keeps the exact per-synapse trace (B, n, n_in).

SuperSpike also filters the eligibility with the van Rossum kernel (``filter_decay`` = exp(-1/tau)):
``lam_ij[t] = kappa lam_ij[t-1] + e_ij[t]`` (per synapse).

Each step a rule's ``signal(t, outputs)`` returns a learning signal L_l[t] (batch, n_l) per layer (or
None), and the engine accumulates ``dW_ij += sum_b L_i[t] e_ij[t]`` (``lam`` in place of ``e`` when
filtered), likewise for V and the bias (whose trace ``ev_i[t] = beta (1 - s_i[t-1]) ev_i[t-1] + 1`` enters
v directly). Memory: the layers' states and traces, independent of T; only sequences a rule asks to
``record`` (its outputs, read-outs: (batch, T, n_out)) grow with T.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from snn2hw.nn.conv import LeakyReadout
from snn2hw.nn.layers import RecurrentLIFDense

__all__ = ["OnlineResult", "run_online", "accumulate_into_grads"]

Signal = Callable[[int, list], list]


class _Trace:
    """Eligibility of one projection (input or recurrent): eu (B, n_pre), ev (B, n_pre) or (B, n, n_pre),
    optionally the filtered lam (B, n, n_pre), and the accumulated gradient (n, n_pre)."""

    def __init__(self, batch, n, n_pre, like, per_synapse, filtered, train):
        z = lambda *s: like.new_zeros(*s)  # noqa: E731
        self.eu = z(batch, n_pre)
        self.ev = z(batch, n, n_pre) if per_synapse else z(batch, n_pre)
        self.lam = z(batch, n, n_pre) if filtered else None
        self.grad = z(n, n_pre) if train else None

    def step(self, x_prev, alpha, keep, per_synapse):
        self.eu.mul_(alpha).add_(x_prev)
        if per_synapse:
            self.ev.mul_(keep.unsqueeze(2)).add_(self.eu.unsqueeze(1))
        else:
            self.ev.mul_(keep).add_(self.eu)

    def filter(self, kappa, psi, per_synapse):
        e = psi.unsqueeze(2) * (self.ev if per_synapse else self.ev.unsqueeze(1))
        self.lam.mul_(kappa).add_(e)

    def accumulate(self, signal, psi, per_synapse):
        if self.lam is not None:
            self.grad.add_(torch.einsum("bi,bij->ij", signal, self.lam))
        elif per_synapse:
            self.grad.add_(torch.einsum("bi,bij->ij", signal * psi, self.ev))
        else:
            self.grad.addmm_((signal * psi).t(), self.ev)


class _LayerState:
    def __init__(self, layer, batch, like, train, per_synapse, filtered):
        self.layer = layer
        self.spiking = not isinstance(layer, LeakyReadout)
        self.recurrent = isinstance(layer, RecurrentLIFDense)
        n, n_in = layer.out_features, layer.in_features
        self.alpha = float(1.0 - layer.du.detach().clamp(0, 1))
        self.beta = float(1.0 - layer.dv.detach().clamp(0, 1))
        self.v_th = float(layer.threshold.detach().clamp(min=1e-6))
        self.w_t = layer.weight.detach().to(like.dtype).t()
        self.v_t = layer.effective_rec_weight().detach().to(like.dtype).t() if self.recurrent else None
        self.bias = None if layer.bias is None else layer.bias.detach().to(like.dtype)
        self.u, self.v = like.new_zeros(batch, n), like.new_zeros(batch, n)
        self.s = like.new_zeros(batch, n)  # spikes of the previous step
        self.x_prev = like.new_zeros(batch, n_in)  # input of the previous step (the hop's delay)
        self.out = None
        self.psi = None
        self.count = like.new_zeros(batch, n) if self.spiking else None  # spikes so far (rate regularisers)
        self.per_synapse = per_synapse and self.spiking  # a read-out has no reset: its trace is exact anyway
        self.train = train
        if train:
            self.ff = _Trace(batch, n, n_in, like, self.per_synapse, filtered, True)
            self.rec = _Trace(batch, n, n, like, self.per_synapse, filtered, True) if self.recurrent else None
            self.eb = like.new_zeros(batch, n) if self.bias is not None else None
            self.lam_b = like.new_zeros(batch, n) if (filtered and self.bias is not None) else None
            self.grad_b = like.new_zeros(n) if self.bias is not None else None

    def step(self, x_t, kappa):
        a = self.x_prev @ self.w_t
        if self.recurrent:
            a = a + self.s @ self.v_t
        self.u.mul_(self.alpha).add_(a)
        v_pre = self.v.mul(self.beta).add_(self.u)
        if self.bias is not None:
            v_pre.add_(self.bias)
        if self.train:
            # the traces see the previous step's reset, before this step's spikes replace self.s
            keep = (1.0 - self.s).mul_(self.beta) if self.spiking else self.s.new_full((), self.beta)
            keep_ps = keep if self.per_synapse else self.beta
            self.ff.step(self.x_prev, self.alpha, keep_ps, self.per_synapse)
            if self.rec is not None:
                self.rec.step(self.s, self.alpha, keep_ps, self.per_synapse)
            if self.eb is not None:
                self.eb.mul_(keep if self.per_synapse else self.beta).add_(1.0)
        if self.spiking:
            s = (v_pre > self.v_th).to(v_pre.dtype)
            if self.train:
                self.psi = self.layer.surrogate.derivative(v_pre - self.v_th)
            self.v = v_pre * (1.0 - s)
            self.s = s
            self.out = s
            self.count.add_(s)
        else:
            self.v = v_pre
            if self.train:
                self.psi = torch.ones_like(v_pre)
            self.out = v_pre
        if self.train and kappa is not None:
            self.ff.filter(kappa, self.psi, self.per_synapse)
            if self.rec is not None:
                self.rec.filter(kappa, self.psi, self.per_synapse)
            if self.lam_b is not None:
                self.lam_b.mul_(kappa).add_(self.psi * self.eb)
        self.x_prev = x_t
        return self.out

    def accumulate(self, signal):
        self.ff.accumulate(signal, self.psi, self.per_synapse)
        if self.rec is not None:
            self.rec.accumulate(signal, self.psi, self.per_synapse)
        if self.grad_b is not None:
            e = self.lam_b if self.lam_b is not None else self.psi * self.eb
            self.grad_b.add_((signal * e).sum(0))


@dataclass
class OnlineResult:
    """``records[l]``: the (batch, T, n_l) output sequence of each layer index the caller asked to record;
    ``grads[l]``: {"weight", "rec_weight", "bias"} gradients of layer l (only where trained)."""

    records: dict = field(default_factory=dict)
    grads: list = field(default_factory=list)
    states: list = field(default_factory=list)  # the per-layer states (traces included) after the last step


@contextmanager
def _flush_denormals():
    """Traces that decay over hundreds of steps reach float32 subnormals, which x86 CPUs process up to ~100x
    slower (measured: one Braille batch with per-synapse traces, 18.5 s -> 1.9 s); flushing them to zero
    changes only values below 1.2e-38. torch cannot report the previous setting: it is turned off again after
    (torch's default)."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def run_online(layers: list, x: torch.Tensor, signal: Signal | None = None, *, reset_in_trace=False,
               filter_decay: float | None = None, record=(), inspect: Callable | None = None) -> "OnlineResult":
    """Run ``layers`` on input spikes ``x`` (batch, T, n_in) step by step; with ``signal`` also train.

    ``signal(t, outputs)`` gets the step's per-layer outputs and returns a list of per-layer learning
    signals (batch, n_l) or None (no update at this step for that layer). ``record``: layer indices whose
    output sequences to keep. ``inspect(t, states)`` (tests) sees the layer states after each step.
    ``reset_in_trace``: one flag for every layer, or a sequence with one flag per layer."""
    with _flush_denormals():
        return _run_online(layers, x, signal, reset_in_trace=reset_in_trace, filter_decay=filter_decay,
                           record=record, inspect=inspect)


@torch.no_grad()
def _run_online(layers: list, x: torch.Tensor, signal: Signal | None = None, *, reset_in_trace=False,
               filter_decay: float | None = None, record=(), inspect: Callable | None = None) -> OnlineResult:
    batch, steps, _ = x.shape
    like = x if x.is_floating_point() else x.float()
    train = signal is not None
    per_layer = list(reset_in_trace) if isinstance(reset_in_trace, (list, tuple)) else [bool(reset_in_trace)] * len(layers)
    if len(per_layer) != len(layers):
        raise ValueError(f"reset_in_trace has {len(per_layer)} flags for {len(layers)} layers")
    states = [_LayerState(l, batch, like, train, r, filter_decay is not None) for l, r in zip(layers, per_layer)]
    # record: layer indices, or {index: M} to keep the read-out outputs_l @ M^T instead (DECOLLE)
    record = dict(record) if isinstance(record, dict) else {i: None for i in record}
    recs = {i: like.new_zeros(batch, steps, layers[i].out_features if m is None else m.shape[0])
            for i, m in record.items()}
    for t in range(steps):
        h = like[:, t]
        outs = []
        for st in states:
            h = st.step(h, filter_decay)
            outs.append(h)
        for i, r in recs.items():
            m = record[i]
            r[:, t] = outs[i] if m is None else outs[i] @ m.t()
        if train:
            for st, sig in zip(states, signal(t, outs)):
                if sig is not None:
                    st.accumulate(sig)
        if inspect is not None:
            inspect(t, states)
    grads = []
    for st in states:
        g = {}
        if train:
            g["weight"] = st.ff.grad
            if st.rec is not None:
                layer = st.layer
                gv = st.rec.grad * layer.rec_weight_scale
                g["rec_weight"] = gv * layer.rec_mask if layer.rec_mask is not None else gv
            if st.grad_b is not None:
                g["bias"] = st.grad_b
        grads.append(g)
    return OnlineResult(recs, grads, states)


def accumulate_into_grads(layers: list, grads: list, scale: float = 1.0) -> None:
    """Add ``scale`` times the engine's gradients to the layers' parameters' ``.grad``."""
    for layer, g in zip(layers, grads):
        for name, value in g.items():
            p = getattr(layer, name)
            if not p.requires_grad:
                continue
            value = (value * scale if scale != 1.0 else value).to(p.dtype)
            p.grad = value.clone() if p.grad is None else p.grad.add_(value)
