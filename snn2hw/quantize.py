"""Quantization pass: a float IR graph -> an integer (Loihi 2) IR graph, plus a report.

Mapping, per destination population with scale ``k`` (integer state = k * float state):

    vth            = round(k * v_th / 64)                    (threshold is compared as vth << 6)
    W_int[p]       = round_to_step(k * W[p] / (64 * 2**e_p))  (synaptic input is shifted << 6 into u)
    bias_mant << bias_exp = round(k * bias)
    du             = round(4096 * du_float) - 1              (hardware decays u by (du + 1) / 4096)
    dv             = round(4096 * dv_float)

``k`` puts the threshold at ``threshold_target`` integer units (default 1024: ~10 bits of threshold
resolution and 2**23 / 2**16 = 128x headroom for v). Each incoming projection gets the smallest
``weight_exp`` e_p for which its largest weight fits the 8-bit mantissa, i.e. the most precise one.

Convolutions (``Conv2d``, sum pooling included) and sparse projections share the destination's scale
like any Dense. Lava's ``Conv`` ignores ``weight_exp``, so a convolution always gets ``e_p = 0``. When
its largest weight would need ``e > 0``, the exponent is folded into the population: ``k`` is divided
by ``2**e`` (the threshold then sits at ``threshold_target / 2**e`` units, and every other projection
and the bias follow the smaller scale), so the conv fits the mantissa at exponent 0. A negative
exponent would only have added precision; the report's ``max_weight_error`` shows what is lost. If
even that leaves the threshold below one unit, ``QuantizationError`` names the projection.
A non-spiking read-out population (``LIF(spiking=False)``) gets its scale from ``v_th`` like any other
and ``vth = 2**17 - 1`` (the largest threshold), so it never fires while v stays below 128x its
``v_th`` (at the default target); read its v with ``record_state``.
Weights are rounded to the representable grid (even values for 8-bit mixed sign), so Lava's own
truncation leaves them unchanged.

The element-wise functions take torch tensors so that quantization-aware training can call the very
same code (with straight-through gradients around it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Conv2d, Dense, Graph, GraphError, LoihiConv2d, LoihiDense, LoihiLIF, Population


class QuantizationError(ValueError):
    """A parameter cannot be represented in Loihi 2 fixed point (names layer, parameter and limit)."""


@dataclass(frozen=True)
class QuantConfig:
    num_weight_bits: int = 8
    threshold_target: int = 1024  # integer vth the scale aims for
    weight_exp_range: tuple[int, int] = (hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX)


@dataclass(frozen=True)
class LayerQuant:
    """How one population and its incoming projections were scaled."""

    population: str
    scale: float  # k: integer units per float unit of u and v
    vth: int
    weight_exps: dict = field(default_factory=dict)  # projection name -> weight_exp
    max_weight_error: dict = field(default_factory=dict)  # projection -> max |W_deq - W| / max|W|
    clipped_fraction: dict = field(default_factory=dict)  # projection -> fraction of weights clipped
    num_weight_bits: int = 8
    threshold_target: int = 1024


# --- element-wise pieces (torch; shared with quantization-aware training) ------------------------------
def decay_u_int(du: float | torch.Tensor) -> int | torch.Tensor:
    """12-bit du for a float decay fraction (-1 means no decay at all)."""
    if isinstance(du, torch.Tensor):
        return (torch.round(du * hw.DECAY_UNITY) - hw.U_DECAY_OFFSET).clamp(hw.DU_MIN, hw.DU_MAX)
    return int(min(max(round(du * hw.DECAY_UNITY) - hw.U_DECAY_OFFSET, hw.DU_MIN), hw.DU_MAX))


def decay_v_int(dv: float | torch.Tensor) -> int | torch.Tensor:
    if isinstance(dv, torch.Tensor):
        return (torch.round(dv * hw.DECAY_UNITY) - hw.V_DECAY_OFFSET).clamp(hw.DV_MIN, hw.DV_MAX)
    return int(min(max(round(dv * hw.DECAY_UNITY) - hw.V_DECAY_OFFSET, hw.DV_MIN), hw.DV_MAX))


def scale_for_threshold(v_th: float, threshold_target: int) -> float:
    if not v_th > 0:
        raise QuantizationError(f"threshold must be positive, got {v_th}")
    scale = threshold_target * (1 << hw.THRESHOLD_SHIFT) / v_th
    if not math.isfinite(scale):
        raise QuantizationError(f"threshold {v_th} is too small to scale to {threshold_target} integer units")
    return scale


def weight_exponent(max_abs_weight: float, scale: float, sign_mode: hw.SignMode, num_weight_bits: int,
                    exp_range: tuple[int, int]) -> int:
    """Smallest weight_exp whose 8-bit mantissa holds the largest scaled weight."""
    lo, hi = hw.weight_range(sign_mode)
    w_max = min(abs(lo), hi) if sign_mode == hw.SignMode.MIXED else max(abs(lo), hi)
    w_max -= w_max % hw.weight_step(sign_mode, num_weight_bits)
    if max_abs_weight == 0:
        return 0
    if w_max <= 0:
        raise QuantizationError(f"{num_weight_bits} weight bit(s) hold no non-zero weight in sign mode {sign_mode.name} "
                                f"(mixed-sign weights need at least 2 bits)")
    needed = scale * max_abs_weight / (1 << hw.ACTIVATION_SHIFT) / w_max
    if not math.isfinite(needed):
        raise QuantizationError(f"largest weight {max_abs_weight:.4g} at scale {scale:.4g} overflows a float; "
                                f"no weight exponent can hold it (weights or 1/threshold too large)")
    e = max(exp_range[0], math.ceil(math.log2(needed)) if needed > 0 else exp_range[0])
    # guard against log2 rounding at exact powers of two
    while e > exp_range[0] and scale * max_abs_weight / (1 << hw.ACTIVATION_SHIFT) / 2.0 ** (e - 1) <= w_max:
        e -= 1
    return e


def quantize_weights(weight: torch.Tensor, scale: float, weight_exp: int, sign_mode: hw.SignMode,
                     num_weight_bits: int) -> torch.Tensor:
    """Integer weights on the representable grid (Lava's clip/truncate leave them unchanged)."""
    step = hw.weight_step(sign_mode, num_weight_bits)
    lo, hi = hw.weight_range(sign_mode)
    scaled = weight * (scale / (1 << hw.ACTIVATION_SHIFT) / 2.0**weight_exp)
    q = torch.round(scaled / step) * step
    return q.clamp(lo + (-lo) % step, hi - hi % step)


def clipped_fraction(weight: torch.Tensor, scale: float, weight_exp: int, sign_mode: hw.SignMode,
                     num_weight_bits: int) -> float:
    """Fraction of weights that ``quantize_weights`` clips at its range (0 for the no-clipping exponent)."""
    if weight.numel() == 0:
        return 0.0
    step = hw.weight_step(sign_mode, num_weight_bits)
    lo, hi = hw.weight_range(sign_mode)
    scaled = torch.round(weight * (scale / (1 << hw.ACTIVATION_SHIFT) / 2.0**weight_exp) / step) * step
    return float(((scaled < lo + (-lo) % step) | (scaled > hi - hi % step)).double().mean())


def dequantize_weights(weight_int: torch.Tensor, scale: float, weight_exp: int) -> torch.Tensor:
    return weight_int * ((1 << hw.ACTIVATION_SHIFT) * 2.0**weight_exp / scale)


def quantize_bias(bias: np.ndarray, scale: float, population: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """(bias_mant, bias_exp) with one exponent per population, the smallest that fits 13 bits."""
    target = np.round(np.asarray(bias, dtype=np.float64) * scale)
    exp = 0
    while np.abs(np.round(target / 2**exp)).max(initial=0) > hw.BIAS_MANT_MAX and exp < hw.BIAS_EXP_MAX:
        exp += 1
    mant = np.round(target / 2**exp)
    # checked in float: an overflowing bias (inf after scaling) must not reach the int64 cast
    if not np.all(np.isfinite(mant)) or np.abs(mant).max(initial=0) > hw.BIAS_MANT_MAX:
        raise QuantizationError(
            f"population {population!r}: bias up to {np.abs(np.asarray(bias)).max():.4g} needs "
            f"{np.abs(target).max():.4g} integer units, more than a 13-bit mantissa with exponent "
            f"<= {hw.BIAS_EXP_MAX} holds"
        )
    mant = mant.astype(np.int64)
    return mant, np.full(mant.shape, exp, dtype=np.int64)


# --- the pass -----------------------------------------------------------------------------------------
def quantize_population(pop: Population, incoming: tuple[Dense | Conv2d, ...], config: QuantConfig = QuantConfig(),
                        message_bits: list[int] | None = None, weight_exps: dict[str, int] | None = None
                        ) -> tuple[Population, list[LoihiDense | LoihiConv2d], LayerQuant]:
    """Quantize one population and its incoming projections (one scale ``k`` for all of them).

    This is the unit both ``quantize_graph`` and quantization-aware training call, so a network
    fine-tuned with QAT compiles to exactly the integers it was trained with. ``weight_exps`` (projection
    name -> exponent) replaces the no-clipping exponent of a dense/sparse projection, e.g. with one that
    a post-training search chose (weights beyond its range are clipped; ``clipped_fraction`` says how many).
    """
    n = pop.neuron
    if not isinstance(n, LIF):
        raise QuantizationError(f"population {pop.name!r}: expected float LIF parameters, got {type(n).__name__}")
    for what, value in (("du", n.du), ("dv", n.dv), ("v_th", n.v_th), ("bias", n.bias)):
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise QuantizationError(f"population {pop.name!r}: {what} holds NaN or infinite values")
    for proj in incoming:
        if not np.all(np.isfinite(np.asarray(proj.weight, dtype=np.float64))):
            raise QuantizationError(f"projection {proj.name!r}: weight holds NaN or infinite values")
    if not 0.0 <= n.du <= 1.0 or not 0.0 <= n.dv <= 1.0:
        raise QuantizationError(f"population {pop.name!r}: decays must lie in [0, 1] (du={n.du}, dv={n.dv})")
    scale = scale_for_threshold(float(n.v_th), config.threshold_target)
    # Lava's Conv ignores weight_exp: fold a convolution's positive exponent into the population's scale
    for proj in incoming:
        if isinstance(proj, Conv2d) and np.size(proj.weight):
            w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64), device="cpu")  # host data
            e = weight_exponent(float(w.abs().max()), scale, hw.determine_sign_mode(w), config.num_weight_bits,
                                (0, 62))
            if e > 0:
                scale /= 2.0**e
                if round(scale * n.v_th / (1 << hw.THRESHOLD_SHIFT)) < 1:
                    raise QuantizationError(
                        f"projection {proj.name!r}: Lava's Conv ignores weight_exp, so its weights must fit the "
                        f"8-bit mantissa at weight_exp 0; folding the needed 2**{e} into population {pop.name!r} "
                        f"leaves its threshold below one integer unit (weights too large relative to v_th)"
                    )
    vth = int(round(scale * n.v_th / (1 << hw.THRESHOLD_SHIFT)))
    if not getattr(n, "spiking", True):
        vth = hw.VTH_MAX  # non-spiking read-out: the scale still comes from v_th, the threshold is the maximum
    if vth > hw.VTH_MAX:
        raise QuantizationError(f"population {pop.name!r}: vth {vth} exceeds {hw.VTH_MAX}")
    bias_mant, bias_exp = quantize_bias(n.bias, scale, pop.name)
    qpop = Population(pop.name, pop.size, LoihiLIF(decay_u_int(n.du), decay_v_int(n.dv), vth, bias_mant, bias_exp))
    qprojs, exps, errors, clipped = [], {}, {}, {}
    for proj, bits in zip(incoming, message_bits or [0] * len(incoming)):
        if not isinstance(proj, (Dense, Conv2d)):
            raise QuantizationError(f"projection {proj.name!r}: expected a float Dense or Conv2d projection")
        w = torch.as_tensor(np.asarray(proj.weight, dtype=np.float64), device="cpu")  # host data
        sign_mode = hw.determine_sign_mode(w)
        max_abs = float(w.abs().max()) if w.numel() else 0.0
        e = weight_exponent(max_abs, scale, sign_mode, config.num_weight_bits, config.weight_exp_range)
        if isinstance(proj, Conv2d):
            assert e <= 0, "folded into the scale above"
            e = 0  # Lava's Conv ignores weight_exp
        elif weight_exps and proj.name in weight_exps:
            e = int(weight_exps[proj.name])
            if not config.weight_exp_range[0] <= e <= config.weight_exp_range[1]:
                raise QuantizationError(f"projection {proj.name!r}: weight_exp {e} outside {config.weight_exp_range}")
        w_int = quantize_weights(w, scale, e, sign_mode, config.num_weight_bits)
        # the no-clipping exponent clips nothing by construction; a chosen one may
        chosen = weight_exps is not None and proj.name in weight_exps and not isinstance(proj, Conv2d)
        clipped[proj.name] = clipped_fraction(w, scale, e, sign_mode, config.num_weight_bits) if chosen else 0.0
        errors[proj.name] = float((dequantize_weights(w_int, scale, e) - w).abs().max() / max_abs) if max_abs else 0.0
        exps[proj.name] = e
        w_np = w_int.to(torch.int64).numpy()
        if isinstance(proj, Conv2d):
            qprojs.append(LoihiConv2d(proj.name, proj.src, proj.dst, w_np, proj.in_shape, proj.out_shape, proj.stride,
                                      proj.padding, proj.dilation, proj.groups, e, config.num_weight_bits,
                                      int(sign_mode), bits, proj.delay))
        else:
            qprojs.append(LoihiDense(proj.name, proj.src, proj.dst, w_np, e, config.num_weight_bits, int(sign_mode),
                                     bits, proj.delay, proj.sparse))
    return qpop, qprojs, LayerQuant(pop.name, scale, vth, exps, errors, clipped, config.num_weight_bits,
                                    config.threshold_target)


def _check_config(config: QuantConfig, where: str = "") -> None:
    if not 1 <= config.num_weight_bits <= hw.WEIGHT_BITS_MAX:
        raise QuantizationError(f"{where}num_weight_bits {config.num_weight_bits} outside [1, {hw.WEIGHT_BITS_MAX}]")
    if not 1 <= config.threshold_target <= hw.VTH_MAX:
        raise QuantizationError(f"{where}threshold_target {config.threshold_target} outside [1, {hw.VTH_MAX}]")


def quantize_graph(graph: Graph, config: QuantConfig = QuantConfig(), per_population: dict | None = None,
                   weight_exps: dict | None = None) -> tuple[Graph, list[LayerQuant]]:
    """Quantize every population and projection of a float graph. Returns (integer graph, report).

    ``per_population`` (population name -> ``QuantConfig``) replaces ``config`` for that population and
    its incoming projections; ``weight_exps`` (projection name -> exponent) fixes exponents (see
    ``quantize_population``). Both are what ``snn2hw.compiler.ptq`` chooses.
    """
    graph.validate()
    _check_config(config)
    for name, cfg in (per_population or {}).items():
        _check_config(cfg, f"population {name!r}: ")
    if graph.is_quantized:
        return graph, []
    pops: list[Population] = []
    projs: dict[str, LoihiDense | LoihiConv2d] = {}
    report: list[LayerQuant] = []
    for pop in graph.populations:
        message_bits = [getattr(graph.node(p.src), "num_message_bits", 0) for p in graph.incoming(pop.name)]
        cfg = (per_population or {}).get(pop.name, config)
        qpop, qprojs, layer = quantize_population(pop, graph.incoming(pop.name), cfg, message_bits, weight_exps)
        pops.append(qpop)
        projs.update({p.name: p for p in qprojs})
        report.append(layer)
    qgraph = Graph(graph.inputs, tuple(pops), tuple(projs[p.name] for p in graph.projections), graph.outputs,
                   graph.dt, dict(graph.metadata))
    try:
        qgraph.validate()
    except GraphError as exc:
        raise QuantizationError(str(exc)) from None
    return qgraph, report
