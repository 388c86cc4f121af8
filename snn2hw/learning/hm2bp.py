"""HM2-BP: hybrid macro/micro level backpropagation (Jin, Zhang & Li, NeurIPS 2018), batched.

Macro level: a neuron's firing count is its total PSP over its threshold, ``o_i ~= a_i / nu`` with
``a_i = sum_j w_ij e_ij``; the loss is ``E = 1/2 sum_i (o_i - y_i)^2`` on output counts, counted only
outside ``margin``. Micro level: the S-PSP ``e_ij`` carries the spike timing, and its change with the
pre-synaptic count is the per-spike S-PSP, ``d e_ij / d o_j ~= e_ij / o_j``. Hence, per sample::

    delta_i   = dE/do_i / nu                         (output: (o_i - y_i) / nu)
    dE/do_j   = sum_i delta_i w_ij e_ij / o_j        (error of the layer below)
    dE/dw_ij  = delta_i e_ij (1 + S_i) L_i
    S_i       = a_i / (nu o_i)                       (the self term, first order of 1/(1 - S_i))
    L_i       = 1 / (1 - sum_l K_il K_li),  K_il = (V_il / nu) e_il / o_l

``L_i`` is the output lateral-inhibition factor: it applies when the output layer is a
``RecurrentLIFDense`` whose recurrent weights ``V`` are the (fixed) lateral connections, e.g.
``V = w0 (1 - I)`` with HM2-BP's ``w0 = -1``; they deploy as the population's recurrent projection.
HM2-BP does not train ``V`` (ST-RSBP does) and refuses recurrent hidden layers.
"""
from __future__ import annotations

import torch

from snn2hw.learning.base import LearningRuleError, register_rule
from snn2hw.learning.spiketrain import LayerTrace, PostStats, SpikeTrainRule

__all__ = ["HM2BP"]


@register_rule
class HM2BP(SpikeTrainRule):
    """HM2-BP (see the module docstring). Options of ``SpikeTrainRule`` plus ``self_term`` (use ``1 + S_i``),
    ``self_term_max`` (S is clipped to [0, self_term_max]) and ``lateral_min`` (lower bound of
    ``1 - sum K K``, which keeps ``L_i`` finite)."""

    name = "hm2bp"
    needs_counts_in = False  # its coefficients read counts and T-PSPs only

    # ``pre_derivative``: the micro-level derivative ``d e_ij / d o_j`` of a firing input. "spikes" (the papers'):
    # ``e_ij / o_j``, the S-PSP per spike that j has, read at the post neuron's spikes; "uniform": the S-PSP of one
    # spike at a uniformly random step, ``(1/T) sum_t lam_u_i[t]``, the papers' value for a silent input, for every
    # input. j's own spikes are not independent of i's (they helped cause them), so ``e_ij / o_j`` is largest on
    # the synapses that drove i's spikes; the uniform one asks what one more spike of j adds wherever it lands.
    def __init__(self, target_true: float = 35.0, target_false: float = 5.0, margin: float = 5.0, t_ref: int = 0,
                 hidden_virtual_spikes: int = 1, self_term: bool = True, self_term_max: float = 1.0,
                 lateral_min: float = 0.1, low_memory: bool = False, chunk: int = 32, loss: str = "mse",
                 count_bounds: bool = False, rate_penalty: float = 0.0,
                 rate_target: float = 0.0, pre_derivative: str = "spikes"):
        if pre_derivative not in ("spikes", "uniform"):
            raise LearningRuleError(f"hm2bp: pre_derivative must be 'spikes' or 'uniform', got {pre_derivative!r}")
        self.pre_derivative = pre_derivative
        super().__init__(target_true, target_false, margin, t_ref, hidden_virtual_spikes, low_memory, chunk, loss=loss,
                         count_bounds=count_bounds, rate_penalty=rate_penalty, rate_target=rate_target)
        self.needs_tpsp = bool(self_term)
        self.self_term, self.self_term_max, self.lateral_min = bool(self_term), float(self_term_max), float(lateral_min)

    def describe(self) -> dict:
        return {**super().describe(), "self_term": self.self_term, "self_term_max": self.self_term_max,
                "lateral_min": self.lateral_min, "pre_derivative": self.pre_derivative}

    def setup(self, model) -> None:
        from snn2hw.nn.layers import RecurrentLIFDense

        super().setup(model)
        pops = [layer for layer in model.layers if hasattr(layer, "weight") and hasattr(layer, "threshold")]
        for i, layer in enumerate(pops[:-1]):
            if isinstance(layer, RecurrentLIFDense):
                raise LearningRuleError(f"hm2bp: population layer {i} is recurrent; HM2-BP trains feed-forward "
                                        "networks (recurrent outputs only as fixed lateral inhibition); use 'strsbp'")

    def coefficients(self, tr: LayerTrace, g, stats: PostStats):
        nu = tr.spec.v_th
        delta = g / nu
        factor = torch.ones_like(delta)
        counts = stats.counts
        if self.self_term:  # S_i = a_i / (nu o_i), a_i = sum_j w_ij e_ij (+ lateral)
            s_i = torch.where(counts > 0, stats.tpsp / (nu * counts.clamp(min=1)), torch.zeros_like(stats.tpsp))
            factor = factor + s_i.clamp(0.0, self.self_term_max)
        if tr.rec_weight is not None:
            k = (tr.rec_weight / nu) * self.per_spike_ratio(stats.e_rec, stats.counts_rec, stats.random_spike)
            loop = (k * k.transpose(1, 2)).sum(2)
            factor = factor / (1.0 - loop).clamp(min=self.lateral_min)
        return delta * factor, delta
