"""Compile pass: legalize an integer graph against Loihi 2's design rules, map it onto cores, and
package it as an ``Artefact``.

Design-rule checking reports every violation at once (one line each, naming layer, parameter, value
and limit). Per-core limits are not confirmed from a primary source, so they are named, documented
defaults in ``CoreLimits`` that a user can override.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

import snn2hw
from snn2hw.artefact import Artefact
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, LoihiConv2d, LoihiDense, LoihiLIF, synapse_count
from snn2hw.quantize import QuantConfig, quantize_graph


class DesignRuleError(ValueError):
    """The graph breaks hardware limits; ``violations`` lists every one."""

    def __init__(self, violations: list[str]):
        self.violations = violations
        super().__init__(f"{len(violations)} design-rule violation(s): " + "; ".join(violations))


@dataclass(frozen=True)
class CoreLimits:
    """Resource limits used for mapping. Chip-level figures are Intel's public Loihi 2 numbers; the
    per-core ones are commonly quoted but unconfirmed, hence overridable."""

    cores_per_chip: int = 128
    neurons_per_core: int = 8192
    synapse_bytes_per_core: int = 128 * 1024
    neurons_per_chip: int = 1_048_576
    synapses_per_chip: int = 120_000_000


def design_rule_violations(graph: Graph) -> list[str]:
    """Every way ``graph`` breaks Loihi 2 / Lava fixed-point limits (empty when legal)."""
    v: list[str] = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            v.append(msg)

    for i in graph.inputs:
        check(0 <= i.num_message_bits <= hw.MESSAGE_BITS_MAX,
              f"input {i.name!r}: num_message_bits {i.num_message_bits} outside [0, {hw.MESSAGE_BITS_MAX}]")
    for p in graph.populations:
        n = p.neuron
        if not isinstance(n, LoihiLIF):
            v.append(f"population {p.name!r}: not quantized")
            continue
        check(hw.DU_MIN <= n.du <= hw.DU_MAX, f"population {p.name!r}: du {n.du} outside [{hw.DU_MIN}, {hw.DU_MAX}]")
        check(hw.DV_MIN <= n.dv <= hw.DV_MAX, f"population {p.name!r}: dv {n.dv} outside [{hw.DV_MIN}, {hw.DV_MAX}]")
        check(hw.VTH_MIN <= n.vth <= hw.VTH_MAX, f"population {p.name!r}: vth {n.vth} outside [{hw.VTH_MIN}, {hw.VTH_MAX}]")
        bm, be = np.asarray(n.bias_mant), np.asarray(n.bias_exp)
        check(bm.size == 0 or (bm.min() >= hw.BIAS_MANT_MIN and bm.max() <= hw.BIAS_MANT_MAX),
              f"population {p.name!r}: bias_mant outside 13-bit range [{hw.BIAS_MANT_MIN}, {hw.BIAS_MANT_MAX}]")
        check(be.size == 0 or (be.min() >= hw.BIAS_EXP_MIN and be.max() <= hw.BIAS_EXP_MAX),
              f"population {p.name!r}: bias_exp outside [{hw.BIAS_EXP_MIN}, {hw.BIAS_EXP_MAX}]")
    graded_inputs = {i.name: i.num_message_bits for i in graph.inputs if i.num_message_bits > 0}
    for p in graph.projections:
        if not isinstance(p, (LoihiDense, LoihiConv2d)):
            v.append(f"projection {p.name!r}: not quantized")
            continue
        if isinstance(p, LoihiConv2d):
            v.extend(_conv_violations(p, graded_inputs))
        elif p.sparse:
            check(p.delay == 0, f"projection {p.name!r}: sparse projection with delay {p.delay}: snn2hw lowers sparse "
                                f"connectivity to Lava's Sparse, which has no delay (use a dense projection)")
        check(1 <= p.num_weight_bits <= hw.WEIGHT_BITS_MAX,
              f"projection {p.name!r}: num_weight_bits {p.num_weight_bits} outside [1, {hw.WEIGHT_BITS_MAX}]")
        check(hw.WEIGHT_EXP_MIN <= p.weight_exp <= hw.WEIGHT_EXP_MAX,
              f"projection {p.name!r}: weight_exp {p.weight_exp} outside [{hw.WEIGHT_EXP_MIN}, {hw.WEIGHT_EXP_MAX}]")
        check(0 <= p.delay <= hw.MAX_DELAY, f"projection {p.name!r}: delay {p.delay} outside [0, {hw.MAX_DELAY}]")
        check(0 <= p.num_message_bits <= hw.MESSAGE_BITS_MAX,
              f"projection {p.name!r}: num_message_bits {p.num_message_bits} outside [0, {hw.MESSAGE_BITS_MAX}]")
        try:
            mode = hw.SignMode(p.sign_mode)
        except ValueError:
            v.append(f"projection {p.name!r}: unknown sign_mode {p.sign_mode}")
            continue
        lo, hi = hw.weight_range(mode)
        w = np.asarray(p.weight)
        check(w.size == 0 or (w.min() >= lo and w.max() <= hi),
              f"projection {p.name!r}: weights in [{w.min()}, {w.max()}] outside [{lo}, {hi}] for sign mode {mode.name}")
    return v


def _conv_violations(p: LoihiConv2d, graded_inputs: dict[str, int]) -> list[str]:
    """What Lava's Conv cannot express (it ignores weight_exp/num_weight_bits, has no delay, stores the
    geometry in int8 and casts a float64 sum to int32)."""
    v = []
    where = f"projection {p.name!r} (conv)"
    if p.weight_exp != 0:
        v.append(f"{where}: weight_exp {p.weight_exp} != 0: Lava's Conv ignores weight_exp")
    if p.delay != 0:
        v.append(f"{where}: delay {p.delay} != 0: Lava's Conv has no synaptic delay")
    geometry = {"kernel_size": p.kernel_size, "stride": p.stride, "padding": p.padding, "dilation": p.dilation,
                "groups": (p.groups,)}
    for what, values in geometry.items():
        if max(values) > 127:
            v.append(f"{where}: {what} {values} exceeds 127: Lava's Conv stores it as int8")
    try:
        mode = hw.SignMode(p.sign_mode)
        bits_ok = 1 <= p.num_weight_bits <= hw.WEIGHT_BITS_MAX
    except ValueError:
        return v  # reported by the generic checks
    w = np.asarray(p.weight, dtype=np.int64)
    if bits_ok and w.size:
        import torch

        prepared = hw.prepare_weights(torch.as_tensor(w), mode, p.num_weight_bits).numpy()
        if not np.array_equal(prepared, w):
            k = int(np.flatnonzero(prepared.ravel() != w.ravel())[0])
            v.append(f"{where}: weight {int(w.ravel()[k])} is not representable with {p.num_weight_bits} bits, "
                     f"sign mode {mode.name} (Lava's Conv does not clip or truncate weights; Loihi would make it "
                     f"{int(prepared.ravel()[k])})")
    max_input = 1
    if p.num_message_bits > 0:
        max_input = 1 << max(graded_inputs.get(p.src, p.num_message_bits) - 1, 0)
    bound = int(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max(initial=0)) * max_input if w.size else 0
    if bound >= hw.CONV_ACC_LIMIT:
        v.append(f"{where}: worst-case accumulation {bound} reaches 2**31: Lava's Conv casts its float64 sum to "
                 f"int32, which is not a wrap (platform-dependent); reduce weights or num_message_bits")
    return v


def allocate(graph: Graph, limits: CoreLimits = CoreLimits()) -> dict:
    """Greedy mapping of populations onto cores: each core holds at most ``neurons_per_core`` neurons
    of one population and the incoming synapses (1 byte weight + 2 byte index each, an estimate) of
    those neurons must fit ``synapse_bytes_per_core``. Returns resource figures; raises when a chip is
    exceeded."""
    per_pop = {}
    for p in graph.populations:
        fan_in = sum(synapse_count(pr) for pr in graph.incoming(p.name))
        bytes_per_neuron = 3 * fan_in / max(p.size, 1)
        by_memory = max(1, int(limits.synapse_bytes_per_core // max(bytes_per_neuron, 1e-9)))
        per_core = min(limits.neurons_per_core, by_memory)
        if bytes_per_neuron > limits.synapse_bytes_per_core:
            raise DesignRuleError([f"population {p.name!r}: one neuron's {int(bytes_per_neuron)} synapse bytes exceed a core's {limits.synapse_bytes_per_core}"])
        per_pop[p.name] = {"neurons": p.size, "fan_in_synapses": fan_in, "cores": math.ceil(p.size / per_core)}
    res = graph.summary()
    res["cores"] = sum(d["cores"] for d in per_pop.values())
    res["per_population"] = per_pop
    res["limits"] = asdict(limits)
    problems = []
    if res["cores"] > limits.cores_per_chip:
        problems.append(f"needs {res['cores']} cores, a chip has {limits.cores_per_chip}")
    if res["neurons"] > limits.neurons_per_chip:
        problems.append(f"{res['neurons']} neurons exceed a chip's {limits.neurons_per_chip}")
    if res["synapses"] > limits.synapses_per_chip:
        problems.append(f"{res['synapses']} synapses exceed a chip's {limits.synapses_per_chip}")
    if problems:
        raise DesignRuleError(problems)
    return res


def compile_graph(graph: Graph, config: QuantConfig = QuantConfig(), limits: CoreLimits = CoreLimits(),
                  provenance: dict | None = None) -> Artefact:
    """Quantize (if float), check design rules, allocate cores, return the artefact."""
    qgraph, report = quantize_graph(graph, config)
    violations = design_rule_violations(qgraph)
    if violations:
        raise DesignRuleError(violations)
    resources = allocate(qgraph, limits)
    prov = {
        "snn2hw_version": snn2hw.__version__,
        "quantization": [
            {"population": r.population, "scale": r.scale, "vth": r.vth, "weight_exps": r.weight_exps,
             "max_weight_error": r.max_weight_error}
            for r in report
        ],
        **(provenance or {}),
    }
    return Artefact(qgraph, resources, prov)
