"""ST-RSBP: spike-train level recurrent SNN backpropagation (Zhang & Li, NeurIPS 2019), batched.

Rate model of a (possibly recurrent) layer: ``o_i = a_i / nu`` with the total PSP
``a_i = sum_j w_ij e_ij + sum_p V_ip e_ip`` over feed-forward inputs j and recurrent inputs p (the layer's
own neurons, one-step hop). Decoupled derivatives of the S-PSPs::

    d e_ij / d o_j ~= e_ij / o_j                 (per-spike S-PSP, from the recorded trains)
    d e_ij / d o_i ~= o_j h'(o_i)                (fitted: h(o) is the mean S-PSP per pre-synaptic spike
                                                  for a post train of o random spikes; ``spsp_fit``)

Differentiating the rate model of all N neurons of a layer at once gives the linear system
``M do = (1/nu) R dw-terms`` with::

    M_ii = 1 - S_i,   S_i = (h'(o_i) / nu) (sum_j w_ij o_j + sum_p V_ip o_p)     (|1 - S_i| >= min_pivot)
    M_ip = -(V_ip / nu) e_ip / o_p                                              (recurrent layers only)

so with ``g = dE/do`` of the layer's neurons, one N x N solve per sample, ``M^T z = g``
(``torch.linalg.solve``, batched; no unrolling in time), gives every gradient::

    dE/dw_ij = z_i e_ij / nu         dE/dV_ip = z_i e_ip / nu
    dE/do_j  = sum_i (z_i / nu) w_ij e_ij / o_j                   (error of the layer below)

This is the paper's ``X = nu d o_rec / d o_in = M^{-1} R``, ``dE/do_in = (g / nu)^T X`` solved from the
other side (N unknowns instead of N x N_in), and for a feed-forward layer (M diagonal) it is the
paper's ``dE/dw = delta_i e_ij / (1 - S_i)``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from snn2hw.learning import spsp_kernels
from snn2hw.learning.base import LearningRuleError, register_rule
from snn2hw.learning.spiketrain import LayerTrace, PostStats, SpikeTrainRule
from snn2hw.learning.spiketrain.trace import spike_counts
from snn2hw.learning.spsp import count_grid, fit_polynomial, layer_current, mc_spsp_per_pre_spike, polyval_derivative

__all__ = ["STRSBP", "spsp_fit", "window_tilings", "FIT_FILE", "FIT_SAMPLES", "FIT_SEED"]

FIT_FILE = "strsbp_spsp_fit.json"  # in snn2hw/learning/data/, written by scripts/fit_strsbp_spsp.py
FIT_SAMPLES = 512
FIT_SEED = 0
FIT_DEGREE = 6
# A recurrent layer's matrix M by one compiled pass (``spsp_kernels.recurrent_system``) instead of the tensor
# expression; the same values bit for bit. Module-level so that a benchmark can switch it off for an interleaved
# A/B (``diag_spiketrain_speed.py --variant snn2hw.learning.strsbp:FUSED_SYSTEM=False``).
FUSED_SYSTEM = True
# The pivots 1 - S (the fitted slope and what follows it) by one compiled pass (``spsp_kernels.pivots``); the same
# values bit for bit. Switch for an A/B as FUSED_SYSTEM.
FUSED_PIVOTS = True


def _key(alpha: float, beta: float, steps: int, t_ref: int) -> tuple:
    return (round(float(alpha), 6), round(float(beta), 6), int(steps), int(t_ref))


@lru_cache(maxsize=1)
def _stored() -> dict:
    try:
        text = resources.files("snn2hw.learning").joinpath("data", FIT_FILE).read_text()
    except (FileNotFoundError, OSError):
        return {}
    data = json.loads(text)
    return {_key(e["alpha"], e["beta"], e["steps"], e["t_ref"]): e for e in data.get("entries", [])}


def make_fit(alpha: float, beta: float, steps: int, t_ref: int) -> dict:
    """Monte-Carlo table of ``h(o_post)`` on ``count_grid`` and its polynomial fit (what the data file stores)."""
    counts = count_grid(steps, t_ref)
    h = mc_spsp_per_pre_spike(alpha, beta, steps, t_ref, counts, samples=FIT_SAMPLES, seed=FIT_SEED).tolist()
    top = steps // (1 + t_ref)
    return {"alpha": float(alpha), "beta": float(beta), "steps": int(steps), "t_ref": int(t_ref), "top": top,
            "counts": counts, "h": h, "coeffs": fit_polynomial(counts, h, top, FIT_DEGREE),
            "samples": FIT_SAMPLES, "seed": FIT_SEED}


@lru_cache(maxsize=64)
def spsp_fit(alpha: float, beta: float, steps: int, t_ref: int) -> dict:
    """The fit for a neuron and window: from the stored file when it holds this configuration, else made now
    by the same (seeded, deterministic) Monte-Carlo run, which takes milliseconds."""
    key = _key(alpha, beta, steps, t_ref)
    return _stored().get(key) or make_fit(*key)


@register_rule
class STRSBP(SpikeTrainRule):
    """ST-RSBP (see the module docstring). Options of ``SpikeTrainRule`` plus ``min_pivot`` (lower bound of
    ``|1 - S_i|``; the paper's 1e-4 lets a few neurons near the singular point scale their error by up to
    1e4, so the default is larger), ``self_term`` (False: S = 0), ``windows`` and ``window_shifts`` (snn2hw
    extensions, not the paper's rule; 1, the default of both, is the paper's: see ``segments``)."""

    name = "strsbp"

    def __init__(self, target_true: float = 35.0, target_false: float = 5.0, margin: float = 5.0, t_ref: int = 0,
                 hidden_virtual_spikes: int = 1, min_pivot: float = 0.1, self_term: bool = True,
                 low_memory: bool = False, chunk: int = 32, loss: str = "mse",
                 count_bounds: bool = False, windows: int = 1, window_shifts: int = 1, rate_penalty: float = 0.0,
                 rate_target: float = 0.0):
        super().__init__(target_true, target_false, margin, t_ref, hidden_virtual_spikes, low_memory, chunk, loss=loss,
                         count_bounds=count_bounds, rate_penalty=rate_penalty, rate_target=rate_target)
        if not min_pivot > 0:
            raise LearningRuleError("strsbp: min_pivot must be > 0")
        if isinstance(windows, bool) or int(windows) != windows or windows < 1:
            raise LearningRuleError(f"strsbp: windows must be an integer >= 1, got {windows!r}")
        if isinstance(window_shifts, bool) or int(window_shifts) != window_shifts or window_shifts < 1:
            raise LearningRuleError(f"strsbp: window_shifts must be an integer >= 1, got {window_shifts!r}")
        if window_shifts > 1 and windows == 1:
            raise LearningRuleError("strsbp: window_shifts > 1 shifts the sub-windows of windows > 1; "
                                    "with windows = 1 there is nothing to shift")
        self.min_pivot, self.self_term, self.windows = float(min_pivot), bool(self_term), int(windows)
        self.window_shifts = int(window_shifts)

    def describe(self) -> dict:
        return {**super().describe(), "min_pivot": self.min_pivot, "self_term": self.self_term,
                "windows": self.windows, "window_shifts": self.window_shifts}

    def segments(self, records: list, targets: torch.Tensor):
        """``windows = K > 1`` (snn2hw extension): the recorded spike trains of the whole sample are cut into K
        consecutive sub-windows of near-equal length, and the paper's rule runs on each as if it were a
        sample of its own -- its own S-PSPs (pre-synaptic spikes before the window and the recurrent hop
        across its start are left out), its own fitted ``h`` for the window's length, its own recurrent
        solve -- with every window's output error the ``dE/do`` of the whole sample's counts (the output
        count is the sum of the windows' counts). Weight gradients add up over the windows. A hidden
        neuron's error is then resolved in time at the windows' granularity instead of once per sample.
        Output targets (for silent outputs' virtual spikes) scale with the window's share of the steps.

        ``window_shifts = m > 1`` (snn2hw extension): m tilings of K windows, tiling s shifted later by
        ``s / m`` of a window (its first and last windows are the partial ones at the sample's ends), and the
        update is the mean of the m tilings' updates. A window boundary cuts the S-PSPs of the pre-synaptic
        spikes just before it; the shifts move the cuts so that no pair of spikes is cut in every tiling."""
        if self.windows == 1:
            yield records, targets, 1.0
            return
        steps = next(r.s_out.shape[1] for r in records if r is not None)
        shortest = 2 * self.windows * self.window_shifts
        if steps < shortest:
            raise LearningRuleError(f"strsbp: windows={self.windows} with window_shifts={self.window_shifts} needs "
                                    f"at least {shortest} steps (2 per window and shift), the sample has {steps}")
        for cuts in window_tilings(steps, self.windows, self.window_shifts):
            for t0, t1 in zip(cuts[:-1], cuts[1:]):
                yield ([None if r is None else _crop(r, t0, t1) for r in records], targets * ((t1 - t0) / steps),
                       1.0 / self.window_shifts)

    def trains_recurrent(self) -> bool:
        return True

    @staticmethod
    def _fit(tr: LayerTrace) -> dict:
        """The ``spsp_fit`` of a layer's neuron and window."""
        alpha, beta = tr.spec.alpha, tr.spec.beta
        if alpha.numel() > 1 or beta.numel() > 1:  # per-neuron decays: the layer's mean neuron
            alpha, beta = alpha.mean(), beta.mean()
        return spsp_fit(float(alpha), float(beta), tr.s_out.shape[1], tr.spec.t_ref)

    def slope(self, tr: LayerTrace, counts: torch.Tensor) -> torch.Tensor:
        """``h'(o)`` per neuron, from the fit for this layer's neuron and window."""
        fit = self._fit(tr)
        x = counts / max(fit["top"], 1)
        return polyval_derivative(fit["coeffs"], x.double()).to(counts.dtype) / max(fit["top"], 1)

    def pivots(self, tr: LayerTrace, stats: PostStats) -> torch.Tensor:
        """``1 - S_i`` (B, N), kept at least ``min_pivot`` away from 0 (sign preserved)."""
        counts = stats.counts
        if not self.self_term:
            return torch.ones_like(counts)
        drive = layer_current(tr.layer, stats.counts_in.unsqueeze(1)).squeeze(1).detach()
        if tr.rec_weight is not None:
            drive = drive + counts @ tr.rec_weight.t()
        if FUSED_PIVOTS:  # the slope and everything after it in one compiled pass on the CPU, the same values
            fit = self._fit(tr)
            p = spsp_kernels.pivots(counts, drive, tr.spec.v_th, fit["coeffs"], max(fit["top"], 1), self.min_pivot)
            if p is not None:
                return p
        d = 1.0 - self.slope(tr, counts) * drive / tr.spec.v_th
        sign = torch.where(d >= 0, torch.ones_like(d), -torch.ones_like(d))
        return sign * d.abs().clamp(min=self.min_pivot)

    def system(self, tr: LayerTrace, stats: PostStats):
        """The per-sample matrix M (B, N, N) of the module docstring (diagonal for feed-forward layers)."""
        pivots = self.pivots(tr, stats)
        if tr.rec_weight is None:
            return torch.diag_embed(pivots)
        rec_scaled = tr.rec_weight / tr.spec.v_th
        if FUSED_SYSTEM:  # one compiled pass on the CPU, the same values
            m = spsp_kernels.recurrent_system(pivots, rec_scaled, stats.e_rec, stats.counts_rec, stats.random_spike)
            if m is not None:
                return m
        return torch.diag_embed(pivots) - rec_scaled * self.per_spike_ratio(stats.e_rec, stats.counts_rec,
                                                                            stats.random_spike)

    def coefficients(self, tr: LayerTrace, g, stats: PostStats):
        if tr.rec_weight is None:
            z = g / self.pivots(tr, stats)
        else:
            z = torch.linalg.solve(self.system(tr, stats).transpose(1, 2), g.unsqueeze(2)).squeeze(2)
        c = z / tr.spec.v_th
        return c, c


def window_tilings(steps: int, windows: int, shifts: int = 1) -> list:
    """The cut points of ``strsbp``'s sub-windows: ``shifts`` tilings of ``windows`` near-equal windows of
    ``steps``, tiling s with its inner cuts ``s / shifts`` of a window later (a shifted tiling has
    ``windows + 1`` windows, partial ones at both ends)."""
    tilings = []
    for s in range(shifts):
        inner = [round((k + s / shifts) * steps / windows) for k in range(0 if s else 1, windows)]
        tilings.append([0] + [c for c in inner if 0 < c < steps] + [steps])
    return tilings


def _crop(tr: LayerTrace, t0: int, t1: int) -> LayerTrace:
    """The record of steps ``t0:t1`` of a layer (the T-PSP record ``vsum`` is whole-window only: dropped)."""
    s_in, s_out = tr.s_in[:, t0:t1].contiguous(), tr.s_out[:, t0:t1].contiguous()
    chunked = tr.counts is not None  # the chunked trace carries the window's counts; recount the crop's
    return LayerTrace(tr.layer, s_in, None if tr.a_ff is None else tr.a_ff[:, t0:t1], s_out, tr.spec, tr.rec_weight,
                      counts=spike_counts(s_out) if chunked else None,
                      counts_in=spike_counts(s_in) if chunked else None)
