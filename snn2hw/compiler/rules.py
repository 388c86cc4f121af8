"""Design rules: what Loihi 2 / Lava 0.10 can represent, checked on a float or an integer graph.

Every check appends a ``Violation`` (rule, layer, measured value, limit, suggested fix) instead of
stopping, so a user sees every problem of a network at once; ``DesignRuleError`` carries them all and
formats them as one table. Resource rules (cores, memory, axons, chips) live in ``allocate``, which
reports its violations the same way.
"""
from __future__ import annotations

import numpy as np

from snn2hw.compiler.resources import CoreLimits
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Conv2d, Dense, Graph, LoihiConv2d, LoihiDense, LoihiLIF


class Violation(str):
    """One broken design rule: the full sentence (a ``str``, so lists of violations join and match like
    messages) plus the table's fields ``rule``, ``layer``, ``measured``, ``limit`` and ``fix``."""

    FIELDS = ("rule", "layer", "measured", "limit", "fix")

    def __new__(cls, rule: str, layer: str, measured: str, limit: str, fix: str, message: str):
        self = super().__new__(cls, message)
        self.rule, self.layer, self.measured, self.limit, self.fix = rule, layer, measured, limit, fix
        return self

    @property
    def message(self) -> str:
        return str.__str__(self)

    def to_dict(self) -> dict:
        return {**{f: getattr(self, f) for f in self.FIELDS}, "message": self.message}


class DesignRuleError(ValueError):
    """The graph breaks hardware limits; ``violations`` lists every one (``Violation`` objects)."""

    def __init__(self, violations: list):
        self.violations = [v if isinstance(v, Violation) else Violation("limit", "<network>", str(v), "", "", str(v))
                           for v in violations]
        super().__init__(f"{len(self.violations)} design-rule violation(s): "
                         + "; ".join(str(v) for v in self.violations))

    def table(self) -> str:
        return format_table(self.violations)


def format_table(violations: list[Violation]) -> str:
    """The violations as a plain-text table (rule | layer | measured | limit | suggested fix)."""
    head = ("rule", "layer", "measured", "limit", "suggested fix")
    rows = [head] + [(v.rule, v.layer, v.measured, v.limit, v.fix) for v in violations]
    widths = [min(max(len(r[i]) for r in rows), 48 if i < 4 else 200) for i in range(5)]

    def line(r):
        return "  ".join(c.ljust(w) if i < 4 else c for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows[1:]])


class _Collector:
    def __init__(self):
        self.items: list[Violation] = []
        self.normal_form = True

    def add(self, rule, layer, measured, limit, fix, message=None) -> None:
        msg = message or f"{layer}: {rule} {measured} outside {limit}"
        self.items.append(Violation(rule, str(layer), str(measured), str(limit), fix, msg))

    def range(self, rule, layer, kind, value, lo, hi, fix) -> None:
        if not lo <= value <= hi:
            self.add(rule, layer, value, f"[{lo}, {hi}]", fix, f"{kind} {layer!r}: {rule} {value} outside [{lo}, {hi}]")


def _nonfinite(a) -> str | None:
    """'nan at index [3, 4] (2 NaN, 1 +inf)' for an array holding non-finite values, else None."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    parts = [f"{n} {what}" for n, what in ((int(np.isnan(a).sum()), "NaN"), (int(np.isposinf(a).sum()), "+inf"),
                                             (int(np.isneginf(a).sum()), "-inf")) if n]
    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape))
    return f"{a[first]} at index {list(first)} ({', '.join(parts)})"


def design_rule_violations(graph: Graph, limits: CoreLimits = CoreLimits(), normal_form: bool = True) -> list[Violation]:
    """Every way ``graph`` (float or integer) breaks a value rule of Loihi 2 / Lava (empty when legal).

    ``normal_form=False`` leaves out the rules that only say "the compiler would not have emitted this"
    while Lava gives the value a defined meaning that the simulator reproduces: integer weights beyond
    their sign mode's range (Lava's Dense clips them), convolution weights off the weight grid and a
    convolution's ``weight_exp`` (Lava's Conv uses the weights as given and ignores the exponent).
    ``artefact.load`` checks with ``normal_form=False``: it refuses what no backend can represent,
    not hand-made test networks that exercise Lava's own clipping.
    """
    c = _Collector()
    c.normal_form = normal_form
    for i in graph.inputs:
        c.range("num_message_bits", i.name, "input", i.num_message_bits, 0, limits.message_bits,
                "use fewer graded-spike bits")
    for p in graph.populations:
        if isinstance(p.neuron, LIF):
            _float_neuron(c, p)
        elif isinstance(p.neuron, LoihiLIF):
            _int_neuron(c, p)
        else:
            c.add("neuron type", p.name, type(p.neuron).__name__, "LIF or LoihiLIF", "export a CUBA-LIF population",
                  f"population {p.name!r}: unsupported neuron {type(p.neuron).__name__}")
    graded_inputs = {i.name: i.num_message_bits for i in graph.inputs if i.num_message_bits > 0}
    for p in graph.projections:
        _projection(c, p, graded_inputs, limits)
    return c.items


def _float_neuron(c: _Collector, p) -> None:
    n = p.neuron
    for what, value in (("du", n.du), ("dv", n.dv), ("v_th", n.v_th), ("bias", n.bias)):
        bad = _nonfinite(np.asarray(value, dtype=np.float64))
        if bad:
            c.add(f"non-finite {what}", p.name, bad, "finite values", "retrain or fix the exported parameters",
                  f"population {p.name!r}: {what} holds {bad}")
    if np.isfinite(n.du) and not 0.0 <= n.du <= 1.0:
        c.add("du", p.name, n.du, "[0, 1]", "a current decay fraction per step in [0, 1]",
              f"population {p.name!r}: du {n.du} outside [0, 1]")
    if np.isfinite(n.dv) and not 0.0 <= n.dv <= 1.0:
        c.add("dv", p.name, n.dv, "[0, 1]", "a voltage decay fraction per step in [0, 1]",
              f"population {p.name!r}: dv {n.dv} outside [0, 1]")
    if np.isfinite(n.v_th) and not n.v_th > 0:
        c.add("v_th", p.name, n.v_th, "> 0", "a positive threshold", f"population {p.name!r}: threshold {n.v_th} must be positive")


def _int_neuron(c: _Collector, p) -> None:
    n = p.neuron
    c.range("du", p.name, "population", n.du, hw.DU_MIN, hw.DU_MAX, "quantize the decay again (12-bit du)")
    c.range("dv", p.name, "population", n.dv, hw.DV_MIN, hw.DV_MAX, "quantize the decay again (12-bit dv)")
    c.range("vth", p.name, "population", n.vth, hw.VTH_MIN, hw.VTH_MAX, "lower threshold_target")
    for what, arr, lo, hi, fix in (("bias_mant", n.bias_mant, hw.BIAS_MANT_MIN, hw.BIAS_MANT_MAX, "raise bias_exp"),
                                   ("bias_exp", n.bias_exp, hw.BIAS_EXP_MIN, hw.BIAS_EXP_MAX, "lower threshold_target")):
        a = np.asarray(arr)
        if a.size and (a.min() < lo or a.max() > hi):
            c.add(what, p.name, f"[{a.min()}, {a.max()}]", f"[{lo}, {hi}]", fix,
                  f"population {p.name!r}: {what} [{a.min()}, {a.max()}] outside {'13-bit range ' if what == 'bias_mant' else ''}[{lo}, {hi}]")


def _projection(c: _Collector, p, graded_inputs: dict, limits: CoreLimits) -> None:
    where = f"projection {p.name!r}"
    bad = _nonfinite(p.weight)
    if bad:
        c.add("non-finite weight", p.name, bad, "finite values", "retrain, or fix the exported weights",
              f"{where}: weight holds {bad}")
    c.range("delay", p.name, "projection", int(p.delay), 0, limits.max_delay,
            "shorten the delay or chain relay populations")
    if isinstance(p, (Conv2d, LoihiConv2d)):
        _conv_geometry(c, p)
        if p.delay != 0:
            c.add("conv delay", p.name, p.delay, "0", "move the delay to a dense projection",
                  f"{where} (conv): delay {p.delay} != 0: Lava's Conv has no synaptic delay")
    elif p.sparse and p.delay != 0:
        c.add("sparse delay", p.name, p.delay, "0", "use a dense projection",
              f"{where}: sparse projection with delay {p.delay}: snn2hw lowers sparse connectivity to Lava's "
              f"Sparse, which has no delay (use a dense projection)")
    if isinstance(p, (Dense, Conv2d)):
        return  # the rest concerns integer projections
    if not isinstance(p, (LoihiDense, LoihiConv2d)):
        c.add("projection type", p.name, type(p).__name__, "Dense or Conv2d", "export a supported projection",
              f"{where}: unsupported projection {type(p).__name__}")
        return
    c.range("num_weight_bits", p.name, "projection", p.num_weight_bits, 1, limits.weight_bits, "1..8 weight bits")
    c.range("weight_exp", p.name, "projection", p.weight_exp, hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX,
            "rescale the layer (threshold_target)")
    c.range("num_message_bits", p.name, "projection", p.num_message_bits, 0, limits.message_bits,
            "use fewer graded-spike bits")
    try:
        mode = hw.SignMode(p.sign_mode)
    except ValueError:
        c.add("sign_mode", p.name, p.sign_mode, "1 (mixed), 2 (excitatory), 3 (inhibitory)", "recompile",
              f"{where}: unknown sign_mode {p.sign_mode}")
        return
    w = np.asarray(p.weight)
    if w.dtype.kind not in "iu":
        if not bad:
            c.add("integer weight", p.name, str(w.dtype), "integers", "recompile", f"{where}: weights of dtype {w.dtype} are not integers")
        return
    lo, hi = hw.weight_range(mode)
    if c.normal_form and w.size and (w.min() < lo or w.max() > hi):
        c.add("weight range", p.name, f"[{w.min()}, {w.max()}]", f"[{lo}, {hi}] ({mode.name})", "recompile (raise weight_exp)",
              f"{where}: weights in [{w.min()}, {w.max()}] outside [{lo}, {hi}] for sign mode {mode.name}")
    if isinstance(p, LoihiConv2d):
        _conv_integer(c, p, mode, w, graded_inputs)


def _conv_geometry(c: _Collector, p) -> None:
    geometry = {"kernel_size": p.kernel_size, "stride": p.stride, "padding": p.padding, "dilation": p.dilation,
                "groups": (p.groups,)}
    for what, values in geometry.items():
        if values and max(values) > 127:
            c.add(f"conv {what}", p.name, values, "<= 127", "a smaller geometry",
                  f"projection {p.name!r} (conv): {what} {values} exceeds 127: Lava's Conv stores it as int8")


def _conv_integer(c: _Collector, p: LoihiConv2d, mode: hw.SignMode, w: np.ndarray, graded_inputs: dict) -> None:
    """What Lava's Conv cannot express (it ignores weight_exp/num_weight_bits and casts a float64 sum to int32)."""
    where = f"projection {p.name!r} (conv)"
    if c.normal_form and p.weight_exp != 0:
        c.add("conv weight_exp", p.name, p.weight_exp, "0", "recompile (the quantizer folds it into the scale)",
              f"{where}: weight_exp {p.weight_exp} != 0: Lava's Conv ignores weight_exp")
    if c.normal_form and w.size and 1 <= p.num_weight_bits <= hw.WEIGHT_BITS_MAX:
        import torch

        prepared = hw.prepare_weights(torch.as_tensor(w.astype(np.int64)), mode, p.num_weight_bits).numpy()
        if not np.array_equal(prepared, w):
            k = int(np.flatnonzero(prepared.ravel() != w.ravel())[0])
            c.add("conv weight grid", p.name, int(w.ravel()[k]), f"{p.num_weight_bits}-bit {mode.name} grid", "recompile",
                  f"{where}: weight {int(w.ravel()[k])} is not representable with {p.num_weight_bits} bits, sign mode "
                  f"{mode.name} (Lava's Conv does not clip or truncate weights; Loihi would make it {int(prepared.ravel()[k])})")
    max_input = 1
    if p.num_message_bits > 0:
        max_input = 1 << max(graded_inputs.get(p.src, p.num_message_bits) - 1, 0)
    bound = int(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1).max(initial=0)) * max_input if w.size else 0
    if bound >= hw.CONV_ACC_LIMIT:
        c.add("conv accumulation", p.name, bound, f"< 2**31", "reduce weights or num_message_bits",
              f"{where}: worst-case accumulation {bound} reaches 2**31: Lava's Conv casts its float64 sum to int32, "
              f"which is not a wrap (platform-dependent); reduce weights or num_message_bits")
