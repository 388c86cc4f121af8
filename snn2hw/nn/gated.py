"""Huh & Sejnowski's differentiable spiking network: QIF phase neurons with a gated synapse.

Each neuron is a quadratic integrate-and-fire neuron written in its phase (theta-neuron) form, so it has
no discontinuous reset: with ``v = tan(theta / 2)``, ``tau_v dv/dt = v**2 + I`` becomes

    tau_v dtheta/dt = (1 - cos theta) + (1 + cos theta) I          a spike is theta crossing pi (mod 2 pi)

and the synaptic output is driven by the *passage* of theta through a small active zone around pi
instead of by a threshold event:

    tau_s ds/dt = -s + dG(theta)/dt

``G`` is a smooth staircase: it is constant between spikes and rises by exactly 1 across the zone
``|theta - pi (mod 2 pi)| < delta / 2`` (``G' = g``, the gate, is non-negative with unit integral per
cycle). A full crossing therefore injects exactly unit charge into ``s``; a phase that enters the zone
and turns back gives a graded, partial output. The network is recurrent, with input and read-out
weights::

    I = W s + U x + I0          o = D s + b

Discretisation (one step = ``dt``; Euler on the unwrapped phase, ``G`` differenced exactly)::

    I[t]     = W s[t-1] + U x[t] + I0
    theta[t] = theta[t-1] + (dt/tau_v) ((1 - cos theta[t-1]) + (1 + cos theta[t-1]) I[t])
    s[t]     = (1 - dt/tau_s) s[t-1] + (G(theta[t]) - G(theta[t-1])) / tau_s
    o[t]     = D s[t] + b

Everything is smooth, so the gradient of any loss of ``o`` is exact: no surrogate. Two ways to get it:

* ``mode="discrete"``: autograd through the unrolled steps. Memory grows linearly with T (every step's
  state is kept for the backward pass).
* ``mode="adjoint"``: the same discrete adjoint (reverse-time) recursion, evaluated one step at a time
  by a custom autograd function that keeps no trajectory. Integrating the state itself backwards is
  not an option (the synapse decays, so its reverse-time reconstruction amplifies rounding errors by
  ``(1 - dt/tau_s)**-T``); instead the function re-computes states forward from a fixed number
  ``checkpoints`` of stored snapshots with binomial checkpointing (Griewank's "revolve" schedule).
  State memory is ``checkpoints`` snapshots whatever T is; the price is at most ``r`` extra forward
  sweeps, the smallest ``r`` with ``C(checkpoints + r, r) >= T`` (2 for T <= 153 with 16 snapshots,
  3 for T <= 969, 4 for T <= 4845). The gradients equal ``"discrete"``'s up to rounding order.

Deployment: ``to_lif_network`` maps a trained network onto snn2hw's CUBA-LIF layers (see
``docs/learning-rules-gated.md``: Loihi 2's fixed-point LIF cannot run a quadratic neuron or a graded
gate, so this is an approximation whose accuracy cost is measured).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GatedQIF", "gate_staircase", "AdjointStats", "revolve_sweeps"]

MODES = ("discrete", "adjoint")


def gate_staircase(theta: torch.Tensor, delta: float) -> torch.Tensor:
    """``G(theta)``: the number of spikes completed, smoothed over the active zone of width ``delta``.

    With ``phi = theta - pi`` and ``k`` the nearest multiple of ``2 pi``, ``G = k + h(phi - 2 pi k)`` where
    ``h`` rises from 0 to 1 as a half sine across ``[-delta/2, delta/2]`` (its slope, the gate ``g``, is a
    raised cosine with unit area and continuous edges). ``k`` carries no gradient; it is constant
    wherever ``h`` is not 0 or 1, so ``G`` is smooth."""
    phi = theta - math.pi
    k = torch.round(phi.detach() / (2 * math.pi))
    x = (phi - 2 * math.pi * k).clamp(-delta / 2, delta / 2)
    return k + 0.5 * (1.0 + torch.sin(x * (math.pi / delta)))


def revolve_sweeps(steps: int, checkpoints: int) -> int:
    """The fewest forward re-sweeps ``r`` that reverse ``steps`` steps with ``checkpoints`` snapshots:
    the smallest r with C(checkpoints + r, r) >= steps (Griewank & Walther's binomial bound)."""
    r = 0
    while math.comb(checkpoints + r, r) < steps:
        r += 1
    return r


@dataclass
class AdjointStats:
    """What the last adjoint backward pass did: steps re-computed forward, peak snapshots held."""

    steps: int = 0
    recomputed_steps: int = 0
    peak_snapshots: int = 0


def _params(layer: "GatedQIF"):
    return (layer.weight_in, layer.weight_rec, layer.weight_out, layer.bias_in, layer.bias_out)


class GatedQIF(nn.Module):
    """A recurrent network of QIF phase neurons with gated synapses: x (batch, T, in) -> o (batch, T, out).

    Parameters (all trainable): ``weight_in`` U (hidden, in), ``weight_rec`` W (hidden, hidden),
    ``weight_out`` D (out, hidden), ``bias_in`` I0 (hidden), ``bias_out`` b (out). Time constants are in
    steps (``dt`` = 1); ``delta`` is the active zone's width in radians. ``mode`` picks how gradients are
    computed ("discrete": autograd through the steps; "adjoint": constant state memory in T, using
    ``checkpoints`` snapshots). ``forward(x, return_state=True)`` also returns the phase and synapse
    traces (discrete mode only). Neurons start at rest: the stable phase of their bias when it is
    negative (excitable neurons), else at theta = 0.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, tau_v: float = 10.0,
                 tau_s: float = 10.0, delta: float = 1.0, i0: float = -0.05, input_gain: float = 1.0,
                 rec_gain: float = 1.0, out_gain: float = 1.0, mode: str = "discrete", checkpoints: int = 16):
        super().__init__()
        if not (tau_v >= 1.0 and tau_s >= 1.0):
            raise ValueError(f"tau_v and tau_s are in steps and must be >= 1 (got {tau_v}, {tau_s}): Euler is "
                             "unstable for shorter time constants")
        if not 0.0 < delta < 2 * math.pi:
            raise ValueError(f"delta (active zone width, radians) must lie in (0, 2 pi), got {delta}")
        self.in_features, self.hidden, self.out_features = int(in_features), int(hidden), int(out_features)
        self.tau_v, self.tau_s, self.delta = float(tau_v), float(tau_s), float(delta)
        self.gains = (float(input_gain), float(rec_gain), float(out_gain), float(i0))
        self.weight_in = nn.Parameter(torch.randn(hidden, in_features) * input_gain / math.sqrt(in_features))
        self.weight_rec = nn.Parameter(torch.randn(hidden, hidden) * rec_gain / math.sqrt(hidden))
        self.weight_out = nn.Parameter(torch.randn(out_features, hidden) * out_gain / math.sqrt(hidden))
        self.bias_in = nn.Parameter(torch.full((hidden,), float(i0)))
        self.bias_out = nn.Parameter(torch.zeros(out_features))
        self.mode = mode
        self.checkpoints = int(checkpoints)
        self.last_adjoint_stats = AdjointStats()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"GatedQIF mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def config(self) -> dict:
        g_in, g_rec, g_out, i0 = self.gains
        return {"kind": "GatedQIF", "layer": "GatedQIF", "in_features": self.in_features, "hidden": self.hidden,
                "out_features": self.out_features, "tau_v": self.tau_v, "tau_s": self.tau_s, "delta": self.delta,
                "i0": i0, "input_gain": g_in, "rec_gain": g_rec, "out_gain": g_out, "mode": self.mode,
                "checkpoints": self.checkpoints}

    @classmethod
    def from_config(cls, config: dict) -> "GatedQIF":
        """Rebuild from ``config()`` (what checkpoints store; unknown keys are an error)."""
        c = {k: v for k, v in config.items() if k not in ("kind", "layer")}
        known = {"in_features", "hidden", "out_features", "tau_v", "tau_s", "delta", "i0", "input_gain", "rec_gain",
                 "out_gain", "mode", "checkpoints"}
        if set(c) - known:
            raise ValueError(f"GatedQIF config: unknown key(s) {sorted(set(c) - known)}; known: {sorted(known)}")
        return cls(**c)

    def to_ir(self, dt: float = 1e-3):
        """Refused: Loihi 2's CUBA-LIF (and so snn2hw's IR and NIR) has no QIF neuron or graded gate."""
        from snn2hw.ir import GraphError

        raise GraphError("GatedQIF (Huh & Sejnowski's QIF phase neuron with a gated synapse) has no exact Loihi-2 "
                         "mapping and no IR/NIR form; deploy its closest LIF network instead: "
                         "GatedQIF.to_lif_network() (see docs/learning-rules-gated.md)")

    # --- dynamics --------------------------------------------------------------------------------------
    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta, s) at rest: theta at the stable fixed point of I = I0 where I0 < 0, else 0; s = 0."""
        i0 = self.bias_in.detach().to(like)
        c = ((1 + i0) / (1 - i0)).clamp(-1.0, 1.0)
        theta = torch.where(i0 < 0, -torch.acos(c), torch.zeros_like(i0))
        theta = theta.expand(batch, self.hidden).clone()
        return theta, torch.zeros_like(theta)

    def step(self, theta, s, x_t, weight_in, weight_rec, bias_in):
        """One Euler step: (theta, s) at t-1 and x[t] -> (theta, s) at t."""
        current = s @ weight_rec.t() + x_t @ weight_in.t() + bias_in
        cos = torch.cos(theta)
        theta_new = theta + ((1.0 - cos) + (1.0 + cos) * current) / self.tau_v
        jump = gate_staircase(theta_new, self.delta) - gate_staircase(theta, self.delta)
        s_new = (1.0 - 1.0 / self.tau_s) * s + jump / self.tau_s
        return theta_new, s_new

    def forward(self, x: torch.Tensor, return_state: bool = False):
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"GatedQIF expects input (batch, T, {self.in_features}), got {tuple(x.shape)}")
        x = x.to(self.weight_in.dtype)
        if self.mode == "adjoint" and torch.is_grad_enabled() and not return_state:
            theta0, s0 = self.initial_state(x.shape[0], x)
            return _AdjointQIF.apply(self, x, theta0, s0, *_params(self))
        theta, s = self.initial_state(x.shape[0], x)
        thetas, ss = [], []
        for t in range(x.shape[1]):
            theta, s = self.step(theta, s, x[:, t], self.weight_in, self.weight_rec, self.bias_in)
            thetas.append(theta)
            ss.append(s)
        s_all = torch.stack(ss, dim=1)
        o = s_all @ self.weight_out.t() + self.bias_out
        return (o, torch.stack(thetas, dim=1), s_all) if return_state else o

    @torch.no_grad()
    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, T, hidden) 0/1: the steps at which each neuron's phase completed a crossing of pi."""
        theta0, _ = self.initial_state(x.shape[0], x.to(self.weight_in.dtype))
        _, theta, _ = self.forward(x, return_state=True)  # no graph: the plain loop in either mode
        th = torch.cat([theta0[:, None], theta], dim=1)
        count = torch.floor((th - math.pi) / (2 * math.pi))
        return (count[:, 1:] > count[:, :-1]).to(x.dtype)

    # --- deployment --------------------------------------------------------------------------------------
    def to_lif_network(self, lif_dv: float | None = None, lif_gain: float | None = None, i_max: float = 1.0):
        """The closest snn2hw (Loihi-2 CUBA-LIF) network: see ``snn2hw.nn.gated_deploy.to_lif_network``."""
        from snn2hw.nn.gated_deploy import to_lif_network

        return to_lif_network(self, lif_dv=lif_dv, lif_gain=lif_gain, i_max=i_max)


class _AdjointQIF(torch.autograd.Function):
    """Forward without a graph; backward by the discrete adjoint with binomial checkpointing.

    Saved for backward: the input x (the caller's tensor, not a copy), the initial state and the
    parameters; nothing that grows with T besides x itself and the output gradient."""

    @staticmethod
    def forward(ctx, layer, x, theta0, s0, weight_in, weight_rec, weight_out, bias_in, bias_out):
        ctx.layer = layer
        ctx.save_for_backward(x, theta0, s0, weight_in, weight_rec, weight_out, bias_in, bias_out)
        steps = x.shape[1]
        o = x.new_empty(x.shape[0], steps, weight_out.shape[0])
        theta, s = theta0, s0
        for t in range(steps):
            theta, s = layer.step(theta, s, x[:, t], weight_in, weight_rec, bias_in)
            torch.matmul(s, weight_out.t(), out=o[:, t])
        return o + bias_out

    @staticmethod
    def backward(ctx, grad_o):
        x, theta0, s0, w_in, w_rec, w_out, b_in, b_out = ctx.saved_tensors
        layer: GatedQIF = ctx.layer
        steps = x.shape[1]
        stats = AdjointStats(steps=steps)
        grads = [torch.zeros_like(p) for p in (w_in, w_rec, b_in)]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
        # read-out: o[t] = D s[t] + b is linear in s, so its parameter gradients need s[t], which the
        # reverse sweep visits anyway; dL/ds[t] gets D^T grad_o[t] added at step t.
        grad_w_out = torch.zeros_like(w_out)
        lam = [torch.zeros_like(theta0), torch.zeros_like(s0)]  # adjoints of (theta, s) after step t

        def advance(state, t0, n):
            theta, s = state
            with torch.no_grad():
                for t in range(t0, t0 + n):
                    theta, s = layer.step(theta, s, x[:, t], w_in, w_rec, b_in)
            stats.recomputed_steps += n
            return theta, s

        def reverse_one(state, t):
            """Adjoint of step t given the state before it: lam <- (d step / d state)^T lam, grads += ..."""
            with torch.enable_grad():
                theta = state[0].detach().requires_grad_(True)
                s = state[1].detach().requires_grad_(True)
                p_in, p_rec, p_b = (p.detach().requires_grad_(True) for p in (w_in, w_rec, b_in))
                x_t = x[:, t].detach().requires_grad_(grad_x is not None)
                theta_new, s_new = layer.step(theta, s, x_t, p_in, p_rec, p_b)
                g_o = grad_o[:, t]
                grad_w_out.add_(g_o.t() @ s_new.detach())
                lam_s = lam[1] + g_o @ w_out
                inputs = [theta, s, p_in, p_rec, p_b] + ([x_t] if grad_x is not None else [])
                out = torch.autograd.grad((theta_new, s_new), inputs, (lam[0], lam_s), allow_unused=True)
            lam[0], lam[1] = out[0], out[1]
            for g, d in zip(grads, out[2:5]):
                if d is not None:
                    g.add_(d)
            if grad_x is not None:
                grad_x[:, t] = out[5]

        def reverse(state, t0, n, free, sweeps):
            """Reverse steps t0 .. t0+n-1 given the state before t0, with ``free`` snapshot slots."""
            if n == 1:
                reverse_one(state, t0)
                return
            if free == 0 or sweeps == 0:  # no slot left: re-compute from ``state`` for every step
                for j in reversed(range(n)):
                    reverse_one(advance(state, t0, j), t0 + j)
                return
            m = max(1, n - math.comb(free - 1 + sweeps, sweeps))  # right part fits C(free-1+r, r)
            snap = advance(state, t0, m)
            stats.peak_snapshots = max(stats.peak_snapshots, layer.checkpoints - free + 1)
            reverse(snap, t0 + m, n - m, free - 1, sweeps)
            del snap
            reverse(state, t0, m, free, sweeps - 1)

        slots = max(1, layer.checkpoints)
        reverse((theta0, s0), 0, steps, slots, revolve_sweeps(steps, slots))
        layer.last_adjoint_stats = stats
        g_in, g_rec, g_bin = grads
        return (None, grad_x, None, None, g_in, g_rec, grad_w_out, g_bin, grad_o.sum(dim=(0, 1)))
