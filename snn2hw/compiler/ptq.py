"""Post-training quantization: choose every layer's exponent, bit width and scale by search.

What is chosen, per layer (a population and its incoming projections share one scale ``k``):

- **weight exponent**, per dense/sparse projection: among the no-clipping exponent and the
  ``exp_search_depth`` smaller ones, the one with the smallest (rate-weighted) squared weight error
  whose clipped fraction stays <= ``clip_fraction``. A smaller exponent halves the weight step and uses
  more of the mantissa's range, at the price of clipping the largest weights; with calibration inputs
  each source neuron's error counts in proportion to its firing rate (the error that actually reaches
  the neuron). Convolutions keep exponent 0 (Lava's Conv ignores it).
- **bit width**: the smallest ``num_weight_bits`` in ``[min_weight_bits, weight_bits]`` whose error is
  within ``bit_error_tolerance`` (relative) of the error at ``weight_bits`` (default: no search).
- **threshold target** (the scale): with calibration inputs, the largest power of two up to
  ``max_threshold_target`` for which the peak |u| and |v| seen in the float run, times ``headroom``, fit
  the 24-bit state; more integer units per float unit make the decay and bias rounding finer, fewer
  keep a read-out that grows far beyond its threshold out of saturation.
- **scale search on spikes** (``scale_search="spikes"``, needs calibration inputs): population by
  population in graph order, the threshold target (any integer, not only a power of two) among
  ``scale_steps`` candidates per octave over ``scale_octaves`` octaves below the largest sensible one (the
  target above, or for a population fed by a convolution the largest target at which its weights fit the
  8-bit mantissa at exponent 0) whose quantized network, run on the bit-accurate simulator with the
  populations before it already chosen, matches the float network's spike counts on the calibration
  inputs best (mean |count difference| per sample and neuron). The target the plan had without the search
  is always a candidate and wins ties, so on the calibration inputs no population gets a larger count
  error than without it. This recovers the resolution that a power-of-two scale wastes (up to half of the
  mantissa's range when a convolution's exponent is folded into the scale) and chooses between threshold
  resolution and weight resolution by what the spikes say.
- **bias correction**: with calibration inputs, the mean input error that quantized weights cause
  (``(W_q - W) @ rates``) is removed through the bias, ``bias -= error / du`` (u's steady state), the
  first-order correction of Nagel et al. 2019 ("Data-free quantization", bias correction). Only
  searched exponents are corrected (an override may clip as much as its author wants).

Per-layer ``overrides`` (population -> ``threshold_target``/``num_weight_bits``, projection ->
``weight_exp``) win over the search. ``plan_quantization`` returns the float graph to quantize (biases
corrected), the per-population configs, the exponents and a record per layer; ``quantize`` is the
compiler's pass that applies it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from snn2hw.compiler.calibrate import Calibration
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Conv2d, Graph, Population
from snn2hw.quantize import (QuantConfig, QuantizationError, clipped_fraction, dequantize_weights, quantize_weights,
                             scale_for_threshold, weight_exponent)


@dataclass(frozen=True)
class PTQConfig:
    """Search settings. ``search=False`` gives the straight quantizer (no-clipping exponents, one target)."""

    search: bool = True
    clip_fraction: float = 0.002
    exp_search_depth: int = 3
    weight_bits: int = 8
    min_weight_bits: int | None = None  # None: no bit-width search
    bit_error_tolerance: float = 0.1
    threshold_target: int = 1024
    max_threshold_target: int = 1 << 13
    headroom: float = 2.0
    bias_correction: bool = True
    scale_search: str = "none"  # "spikes": choose each population's threshold target on calibration spikes
    scale_steps: int = 8  # candidates per octave
    scale_octaves: int = 1
    overrides: dict = field(default_factory=dict)  # layer name -> {"threshold_target"|"num_weight_bits"|"weight_exp": int}

    def __post_init__(self):
        if not 0.0 <= self.clip_fraction < 1.0:
            raise QuantizationError(f"clip_fraction {self.clip_fraction} outside [0, 1)")
        if not 1 <= self.weight_bits <= hw.WEIGHT_BITS_MAX:
            raise QuantizationError(f"num_weight_bits {self.weight_bits} outside [1, {hw.WEIGHT_BITS_MAX}]")
        if self.min_weight_bits is not None and not 1 <= self.min_weight_bits <= self.weight_bits:
            raise QuantizationError(f"min_weight_bits {self.min_weight_bits} outside [1, {self.weight_bits}]")
        if not 1 <= self.threshold_target <= hw.VTH_MAX:
            raise QuantizationError(f"threshold_target {self.threshold_target} outside [1, {hw.VTH_MAX}]")
        if self.exp_search_depth < 0 or self.headroom < 1:
            raise QuantizationError("exp_search_depth must be >= 0 and headroom >= 1")
        if self.scale_search not in SCALE_SEARCHES:
            raise QuantizationError(f"scale_search {self.scale_search!r}: expected one of {sorted(SCALE_SEARCHES)}")
        if self.scale_search != "none" and not self.search:
            raise QuantizationError(f"scale_search {self.scale_search!r} needs search=True")
        if self.scale_steps < 1 or self.scale_octaves < 0:
            raise QuantizationError("scale_steps must be >= 1 and scale_octaves >= 0")

    @classmethod
    def straight(cls, config: QuantConfig = QuantConfig()) -> "PTQConfig":
        return cls(search=False, weight_bits=config.num_weight_bits, threshold_target=config.threshold_target,
                   bias_correction=False)


SCALE_SEARCHES = {"none", "spikes"}
OVERRIDE_KEYS = {"threshold_target", "num_weight_bits", "weight_exp"}
SETTING_KEYS = {f.name for f in dataclasses.fields(PTQConfig)} - {"overrides"}


def load_config(path: str | os.PathLike, base: PTQConfig = PTQConfig()) -> PTQConfig:
    """A ``PTQConfig`` from a JSON file: any ``PTQConfig`` field at the top level, per-layer overrides
    under ``"layers"`` (see docs/compiler.md, "Quantization config")."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise QuantizationError(f"{path}: no such quantization config file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantizationError(f"{path}: not a JSON quantization config ({exc})") from None
    if not isinstance(data, dict):
        raise QuantizationError(f"{path}: a quantization config is a JSON object")
    unknown = set(data) - SETTING_KEYS - {"layers"}
    if unknown:
        raise QuantizationError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(SETTING_KEYS | {'layers'})}")
    layers = data.pop("layers", {})
    if "scale_search" in data and not isinstance(data["scale_search"], str):
        raise QuantizationError(f"{path}: scale_search must be a string, one of {sorted(SCALE_SEARCHES)}")
    if not isinstance(layers, dict):
        raise QuantizationError(f"{path}: 'layers' must map layer names to settings")
    for name, d in layers.items():
        if not isinstance(d, dict) or set(d) - OVERRIDE_KEYS or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in d.values()):
            raise QuantizationError(f"{path}: layer {name!r}: settings must be integers among {sorted(OVERRIDE_KEYS)}")
    try:
        return dataclasses.replace(base, **data, overrides={**base.overrides, **layers})
    except TypeError as exc:
        raise QuantizationError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class QuantPlan:
    graph: Graph  # the float graph to quantize (biases corrected when calibrated)
    per_population: dict  # population -> QuantConfig
    weight_exps: dict  # projection -> exponent
    records: dict  # layer name -> plain dict of what was chosen and why


def _check_overrides(graph: Graph, overrides: dict) -> None:
    pops = {p.name for p in graph.populations}
    projs = {p.name for p in graph.projections}
    for name, d in overrides.items():
        if name not in pops | projs:
            raise QuantizationError(f"quantization override for unknown layer {name!r} (populations: {sorted(pops)}, "
                                    f"projections: {sorted(projs)})")
        if name in pops and "weight_exp" in d:
            raise QuantizationError(f"override {name!r}: weight_exp belongs to a projection, not a population")
        if name in projs and set(d) - {"weight_exp"}:
            raise QuantizationError(f"override {name!r}: a projection takes only weight_exp "
                                    f"(threshold_target and num_weight_bits are set per population)")


def _weight_error(w: torch.Tensor, scale: float, e: int, mode: hw.SignMode, bits: int, rates) -> float:
    err = dequantize_weights(quantize_weights(w, scale, e, mode, bits), scale, e) - w
    sq = err.pow(2)
    if rates is not None and sq.ndim == 2:
        return float((sq * torch.as_tensor(rates, dtype=sq.dtype)[None, :]).sum())
    return float(sq.sum())


def _threshold_target(pop: Population, incoming, config: PTQConfig, calib: Calibration | None) -> int:
    if calib is None or not config.search:
        return config.threshold_target
    n = pop.neuron
    peak = max(calib.peak_u.get(pop.name, 0.0), calib.peak_v.get(pop.name, 0.0), float(n.v_th))
    # integer state = T * 64 / v_th * float state must stay below 2**23 / headroom
    bound = hw.STATE_HALF / config.headroom / ((1 << hw.THRESHOLD_SHIFT) * peak / n.v_th)
    if bound < 1:
        return config.threshold_target
    return int(min(config.max_threshold_target, hw.VTH_MAX, 2 ** math.floor(math.log2(bound))))


def plan_quantization(graph: Graph, config: PTQConfig = PTQConfig(), calib: Calibration | None = None) -> QuantPlan:
    """Choose scales, exponents and bit widths for float ``graph`` (see the module docstring)."""
    _check_overrides(graph, config.overrides)
    if config.scale_search == "spikes":
        if calib is None or calib.counts is None or calib.inputs is None:
            raise QuantizationError("scale_search='spikes' needs calibration inputs (compile_graph("
                                    "calibration_inputs=...), snn2hw compile --calibrate)")
        return _search_scales(graph, config, calib)
    per_pop, exps, records = {}, {}, {}
    new_pops = []
    for pop in graph.populations:
        n = pop.neuron
        if not isinstance(n, LIF):
            raise QuantizationError(f"population {pop.name!r}: expected float LIF parameters")
        incoming = graph.incoming(pop.name)
        ov = config.overrides.get(pop.name, {})
        target = ov.get("threshold_target", _threshold_target(pop, incoming, config, calib))
        base_scale = scale_for_threshold(float(n.v_th), target)
        bits = ov.get("num_weight_bits", _choose_bits(incoming, _conv_fold(incoming, base_scale, config.weight_bits),
                                                      config, calib))
        scale = _conv_fold(incoming, base_scale, bits)
        layer_exps, proj_records, bias_shift = {}, {}, np.zeros(pop.size)
        for proj in incoming:
            w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64))
            mode = hw.determine_sign_mode(w)
            rates = None if calib is None else calib.rates.get(proj.src)
            if isinstance(proj, Conv2d):
                e, how = 0, "conv (Lava's Conv ignores weight_exp)"
            else:
                e0 = weight_exponent(float(w.abs().max()) if w.numel() else 0.0, scale, mode, bits,
                                     (hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX))
                e, how = e0, "no clipping"
                if proj.name in config.overrides:
                    e, how = int(config.overrides[proj.name]["weight_exp"]), "override"
                elif config.search and w.numel():
                    e, how = _search_exponent(w, scale, mode, bits, e0, config, rates), "search"
                if how != "no clipping":  # quantize_population finds the no-clipping one itself
                    layer_exps[proj.name] = e
            proj_records[proj.name] = {"weight_exp": e, "chosen_by": how, "num_weight_bits": bits,
                                       "sign_mode": mode.name}
            if (how == "search" and config.bias_correction and calib is not None and rates is not None
                    and n.du > 0):
                err = (dequantize_weights(quantize_weights(w, scale, e, mode, bits), scale, e) - w).numpy()
                bias_shift -= err @ np.asarray(rates, dtype=np.float64) / n.du
        new_n = n
        if np.any(bias_shift):
            new_n = dataclasses.replace(n, bias=np.asarray(n.bias, dtype=np.float64) + bias_shift)
        new_pops.append(dataclasses.replace(pop, neuron=new_n))
        per_pop[pop.name] = QuantConfig(num_weight_bits=bits, threshold_target=target)
        exps.update(layer_exps)
        records[pop.name] = {
            "threshold_target": target, "num_weight_bits": bits,
            "threshold_chosen_by": "override" if "threshold_target" in ov else (
                "calibration" if calib is not None and config.search else "default"),
            "bias_correction_max": float(np.abs(bias_shift).max(initial=0.0)),
            "calibration": None if calib is None else {
                "peak_u": calib.peak_u[pop.name], "peak_v": calib.peak_v[pop.name],
                "mean_rate": float(np.mean(calib.rates[pop.name])) if pop.size else 0.0,
                "samples": calib.samples, "steps": calib.steps},
            "projections": proj_records,
        }
    planned = dataclasses.replace(graph, populations=tuple(new_pops))
    return QuantPlan(planned, per_pop, exps, records)


def _conv_fold(incoming, scale: float, bits: int) -> float:
    """The scale after ``quantize_population`` folds convolution exponents into it (same rule)."""
    for proj in incoming:
        if isinstance(proj, Conv2d) and np.size(proj.weight):
            w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64))
            e = weight_exponent(float(w.abs().max()), scale, hw.determine_sign_mode(w), bits, (0, 62))
            scale /= 2.0 ** max(e, 0)
    return scale


def _choose_bits(incoming, scale: float, config: PTQConfig, calib: Calibration | None) -> int:
    if config.min_weight_bits is None or not config.search:
        return config.weight_bits

    def err(bits: int) -> float:
        total = 0.0
        for proj in incoming:
            w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64))
            if not w.numel():
                continue
            mode = hw.determine_sign_mode(w)
            e = 0 if isinstance(proj, Conv2d) else weight_exponent(float(w.abs().max()), scale, mode, bits,
                                                                   (hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX))
            total += _weight_error(w, scale, e, mode, bits, None)
        return total

    best = err(config.weight_bits)
    for bits in range(config.min_weight_bits, config.weight_bits):
        if err(bits) <= best * (1 + config.bit_error_tolerance):
            return bits
    return config.weight_bits


def _search_exponent(w: torch.Tensor, scale: float, mode: hw.SignMode, bits: int, e0: int, config: PTQConfig,
                     rates) -> int:
    best_e, best_err = e0, _weight_error(w, scale, e0, mode, bits, rates)
    for e in range(e0 - 1, max(e0 - config.exp_search_depth, hw.WEIGHT_EXP_MIN) - 1, -1):
        if clipped_fraction(w, scale, e, mode, bits) > config.clip_fraction:
            break
        err = _weight_error(w, scale, e, mode, bits, rates)
        if err < best_err:
            best_e, best_err = e, err
    return best_e


def _conv_fit_target(pop: Population, incoming, bits: int) -> int | None:
    """The largest threshold target at which every convolution into ``pop`` fits the mantissa at exponent 0
    (no folding), or None when no convolution feeds it."""
    best = None
    for proj in incoming:
        if isinstance(proj, Conv2d) and np.size(proj.weight):
            w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64))
            top = float(w.abs().max())
            if top == 0:
                continue
            t = int(math.floor(_mantissa_max(hw.determine_sign_mode(w), bits) * float(pop.neuron.v_th) / top))
            # the quantizer's own test decides (float rounding at the edge)
            while t > 1 and weight_exponent(top, scale_for_threshold(float(pop.neuron.v_th), t),
                                            hw.determine_sign_mode(w), bits, (0, 62)) > 0:
                t -= 1
            best = t if best is None else min(best, t)
    return best


def _mantissa_max(mode: hw.SignMode, bits: int) -> int:
    lo, hi = hw.weight_range(mode)
    w_max = min(abs(lo), hi) if mode == hw.SignMode.MIXED else max(abs(lo), hi)
    return w_max - w_max % hw.weight_step(mode, bits)


def _effective_target(pop: Population, incoming, target: int, bits: int) -> int:
    """The threshold in integer units that ``quantize_population`` ends with (after a conv fold)."""
    scale = _conv_fold(incoming, scale_for_threshold(float(pop.neuron.v_th), target), bits)
    return int(round(scale * float(pop.neuron.v_th) / (1 << hw.THRESHOLD_SHIFT)))


def _prefix(graph: Graph, upto: int) -> Graph:
    """The populations up to index ``upto`` with what feeds them, output: population ``upto``; the whole
    graph (all outputs recorded anyway) when a later population feeds one of them."""
    names = {p.name for p in graph.populations[:upto + 1]}
    later = {p.name for p in graph.populations[upto + 1:]}
    if any(pr.src in later and pr.dst in names for pr in graph.projections):
        return graph
    projs = tuple(pr for pr in graph.projections if pr.dst in names)
    inputs = tuple(i for i in graph.inputs if any(pr.src == i.name for pr in projs))
    return dataclasses.replace(graph, inputs=inputs, populations=graph.populations[:upto + 1], projections=projs,
                               outputs=(graph.populations[upto].name,))


def _count_error(graph: Graph, plan: QuantPlan, config: PTQConfig, calib: Calibration, pop_index: int) -> float:
    """Mean |spike count difference| per sample and neuron of population ``pop_index`` between the quantized
    network (on the simulator) and the float network, on the calibration inputs."""
    from snn2hw.backends import sim
    from snn2hw.quantize import quantize_graph

    sub = _prefix(plan.graph, pop_index)
    qgraph, _ = quantize_graph(sub, QuantConfig(num_weight_bits=config.weight_bits,
                                                threshold_target=config.threshold_target),
                               {k: v for k, v in plan.per_population.items() if k in {p.name for p in sub.populations}},
                               plan.weight_exps)
    name = graph.populations[pop_index].name
    xs = {i.name: np.asarray(calib.inputs[i.name]).astype(np.int64) for i in sub.inputs}
    res = sim.run(sim.prepare(qgraph), xs if len(xs) > 1 else next(iter(xs.values())), record=(name,),
                  count_events=False)
    counts = np.asarray(res.spikes[name]).sum(axis=1)
    return float(np.abs(counts - calib.counts[name]).mean())


def _search_scales(graph: Graph, config: PTQConfig, calib: Calibration) -> QuantPlan:
    """``plan_quantization`` with each population's threshold target chosen on the calibration spikes."""
    base_cfg = dataclasses.replace(config, scale_search="none")
    base = plan_quantization(graph, base_cfg, calib)
    chosen = dict(config.overrides)
    searched = {}
    for j, pop in enumerate(graph.populations):
        if "threshold_target" in config.overrides.get(pop.name, {}) or not getattr(pop.neuron, "spiking", True) \
                or not pop.size:
            continue
        incoming = graph.incoming(pop.name)
        target0 = base.per_population[pop.name].threshold_target
        bits = base.per_population[pop.name].num_weight_bits
        top = target0
        fit = _conv_fit_target(pop, incoming, bits)
        if fit is not None:
            top = min(top, max(fit, 1))
        cands = [target0]  # the plan's own target first: it wins ties
        seen = {_effective_target(pop, incoming, target0, bits)}
        for i in range(config.scale_steps * config.scale_octaves + 1):
            t = int(round(top * 2.0 ** (-i / config.scale_steps)))
            eff = _effective_target(pop, incoming, t, bits) if t >= 1 else 0
            if 1 <= t <= hw.VTH_MAX and eff not in seen:  # two targets that fold to one threshold are one candidate
                seen.add(eff)
                cands.append(t)
        errors = {}
        for t in cands:
            trial = dataclasses.replace(base_cfg, overrides={**chosen, pop.name: {
                **chosen.get(pop.name, {}), "threshold_target": t}})
            try:
                plan = plan_quantization(graph, trial, calib)
            except QuantizationError:
                continue
            errors[t] = _count_error(graph, plan, config, calib, j)
        best = min(errors, key=lambda t: (errors[t], cands.index(t)))
        chosen[pop.name] = {**chosen.get(pop.name, {}), "threshold_target": best}
        searched[pop.name] = {"candidates": {str(t): errors[t] for t in errors}, "chosen": best, "default": target0}
    plan = plan_quantization(graph, dataclasses.replace(base_cfg, overrides=chosen), calib)
    for name, rec in searched.items():
        plan.records[name]["threshold_chosen_by"] = "spike search"
        plan.records[name]["scale_search"] = rec
    return plan
