"""The compiler's named passes and their fixed order: normalize -> legalize -> quantize -> allocate -> lower.

Each pass is a pure function ``CompileState -> CompileState`` (``lower`` returns the ``Artefact``):
it never changes its input, so a user can stop after any pass and look (``run_passes(graph,
until="quantize").graph``). Each appends one entry to ``state.log`` (pass name, seconds, a summary);
the log is stored in the artefact (``provenance["passes"]``).

- ``normalize``: structural validation (``Graph.validate``) and canonical dtypes (float64 weights and
  biases in a float graph, int64 in an integer one).
- ``legalize``: the design rules (``snn2hw.compiler.rules``) and the resource rules (a trial
  allocation), all violations at once; raises ``DesignRuleError`` unless ``collect=True``.
- ``quantize``: post-training quantization (``snn2hw.compiler.ptq``), then the integer design rules.
- ``allocate``: cores and chips (``snn2hw.compiler.allocate``).
- ``lower``: the ``Artefact`` (integer graph, resources with the placement, provenance with the
  quantization records and the pass log).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

import snn2hw
from snn2hw.artefact import Artefact
from snn2hw.compiler.allocate import Placement, allocate as allocate_cores, resource_summary
from snn2hw.compiler.calibrate import Calibration
from snn2hw.compiler.ptq import PTQConfig, plan_quantization
from snn2hw.compiler.resources import CoreLimits
from snn2hw.compiler.rules import DesignRuleError, Violation, design_rule_violations
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Graph, LoihiLIF
from snn2hw.quantize import QuantizationError, quantize_graph


@dataclass(frozen=True)
class CompileState:
    """What flows between passes. ``graph`` is float until ``quantize``, integer after it."""

    graph: Graph
    limits: CoreLimits = CoreLimits()
    ptq: PTQConfig = PTQConfig(search=False, bias_correction=False)
    calibration: Calibration | None = None
    quantization: tuple = ()  # one plain dict per population (see docs/compiler.md)
    placement: Placement | None = None
    violations: tuple = ()
    log: tuple = ()

    def logged(self, name: str, t0: float, **summary) -> "CompileState":
        entry = {"pass": name, "seconds": round(time.perf_counter() - t0, 6), **summary}
        return dataclasses.replace(self, log=self.log + (entry,))


def normalize(state: CompileState) -> CompileState:
    t0 = time.perf_counter()
    g = state.graph.validate()
    integer = g.is_quantized
    kind = np.int64 if integer else np.float64
    projs = tuple(dataclasses.replace(p, weight=np.asarray(p.weight, dtype=kind)) if np.asarray(p.weight).dtype != kind
                  else p for p in g.projections)
    pops = []
    for p in g.populations:
        n = p.neuron
        if isinstance(n, LIF) and np.asarray(n.bias).dtype != np.float64:
            n = dataclasses.replace(n, bias=np.asarray(n.bias, dtype=np.float64))
        elif isinstance(n, LoihiLIF):
            n = dataclasses.replace(n, bias_mant=np.asarray(n.bias_mant, dtype=np.int64),
                                    bias_exp=np.asarray(n.bias_exp, dtype=np.int64))
        pops.append(p if n is p.neuron else dataclasses.replace(p, neuron=n))
    g = dataclasses.replace(g, populations=tuple(pops), projections=projs)
    return dataclasses.replace(state, graph=g).logged("normalize", t0, integer=integer, **g.summary())


def legalize(state: CompileState, collect: bool = False) -> CompileState:
    t0 = time.perf_counter()
    rows = design_rule_violations(state.graph, state.limits)
    rows += allocate_cores(state.graph, state.limits, state.ptq.weight_bits).violations
    new = dataclasses.replace(state, violations=state.violations + tuple(rows))
    new = new.logged("legalize", t0, violations=len(rows))
    if rows and not collect:
        raise DesignRuleError(list(new.violations))
    return new


def quantize(state: CompileState) -> CompileState:
    t0 = time.perf_counter()
    g = state.graph
    if g.is_quantized:
        return state.logged("quantize", t0, skipped="graph already integer")
    plan = plan_quantization(g, state.ptq, state.calibration)
    qgraph, report = quantize_graph(plan.graph, _quant_config(state.ptq), plan.per_population, plan.weight_exps)
    records = []
    qprojs = {p.name: p for p in qgraph.projections}
    for r in report:
        rec = plan.records[r.population]
        for name, pr in rec["projections"].items():
            w = np.asarray(qprojs[name].weight)
            lo, hi = hw.weight_range(hw.SignMode(qprojs[name].sign_mode))
            pr.update(max_weight_error=r.max_weight_error.get(name, 0.0),
                      clipped_fraction=r.clipped_fraction.get(name, 0.0),
                      used_range=float(np.abs(w).max(initial=0) / max(abs(lo), hi)))
        records.append({"population": r.population, "scale": r.scale, "vth": r.vth, "weight_exps": r.weight_exps,
                        "max_weight_error": r.max_weight_error, **rec})
    rows = design_rule_violations(qgraph, state.limits)
    if rows:
        raise DesignRuleError(rows)
    new = dataclasses.replace(state, graph=qgraph, quantization=tuple(records))
    return new.logged("quantize", t0, search=state.ptq.search, calibrated=state.calibration is not None,
                      layers=len(records))


def _quant_config(ptq: PTQConfig):
    from snn2hw.quantize import QuantConfig

    return QuantConfig(num_weight_bits=ptq.weight_bits, threshold_target=ptq.threshold_target)


def allocate(state: CompileState, collect: bool = False) -> CompileState:
    t0 = time.perf_counter()
    placement = allocate_cores(state.graph, state.limits, state.ptq.weight_bits)
    if placement.violations and not collect:
        raise DesignRuleError(list(placement.violations))
    new = dataclasses.replace(state, placement=placement, violations=state.violations + placement.violations)
    return new.logged("allocate", t0, cores=len(placement.cores), chips=placement.chips)


def lower(state: CompileState, provenance: dict | None = None) -> Artefact:
    t0 = time.perf_counter()
    if state.placement is None or not state.graph.is_quantized:
        raise ValueError("lower needs a quantized and allocated state (run quantize and allocate first)")
    resources = resource_summary(state.graph, state.placement)
    final = state.logged("lower", t0)
    prov = {
        "snn2hw_version": snn2hw.__version__,
        "quantization": list(state.quantization),
        "quantizer": dataclasses.asdict(state.ptq),
        "passes": list(final.log),
        **(provenance or {}),
    }
    return Artefact(state.graph, resources, prov)


PASSES = ("normalize", "legalize", "quantize", "allocate", "lower")
_FUNCTIONS = {"normalize": normalize, "legalize": legalize, "quantize": quantize, "allocate": allocate}


def run_passes(graph: Graph, limits: CoreLimits = CoreLimits(), ptq: PTQConfig | None = None,
               calibration: Calibration | None = None, until: str = "allocate") -> CompileState:
    """Run the passes in order up to and including ``until`` (not ``lower``) and return the state."""
    if until not in _FUNCTIONS:
        raise ValueError(f"until must be one of {list(_FUNCTIONS)}, got {until!r}")
    state = CompileState(graph, limits, ptq or CompileState.ptq, calibration)
    for name in PASSES:
        state = _FUNCTIONS[name](state)
        if name == until:
            break
    return state


def check(graph: Graph, limits: CoreLimits = CoreLimits(), ptq: PTQConfig | None = None,
          calibration: Calibration | None = None) -> list[Violation]:
    """Every design-rule and resource violation of ``graph`` (float or integer), without raising:
    the value and resource rules on the graph as given, then, when those pass and the graph is float,
    the quantized graph's rules and its allocation."""
    state = normalize(CompileState(graph, limits, ptq or CompileState.ptq, calibration))
    state = legalize(state, collect=True)
    if state.violations:
        return list(state.violations)
    try:
        state = quantize(state)
    except QuantizationError as exc:
        return [Violation("quantization", "<network>", str(exc), "representable in Loihi 2 fixed point",
                          "see the message; adjust threshold_target or the layer's parameters", str(exc))]
    except DesignRuleError as exc:
        return list(exc.violations)
    return list(allocate(state, collect=True).placement.violations)
