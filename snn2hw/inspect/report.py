"""``snn2hw report``: what a compiled network is made of and, given inputs, what it does per step.

``build_report(artefact, inputs)`` returns a JSON-able dict: per population (and per core where the
artefact records a placement) neurons, synapses, fan-in/out, weight memory, the quantizer's scale and
weight exponents; NeuroBench-style footprint and connection sparsity; and, from a recorded run on the
simulator (or Lava), synaptic operations, spikes per step, activation sparsity and the energy/latency
proxy of ``snn2hw.inspect.metrics``. ``info`` describes any file snn2hw reads.
"""
from __future__ import annotations

import numpy as np

from snn2hw.inspect.metrics import EnergyModel, activity, footprint_bytes, layer_structure


def build_report(artefact, inputs=None, backend: str = "sim", energy: EnergyModel = EnergyModel(),
                 samples: int | None = None) -> dict:
    from snn2hw.backends import get_backend
    from snn2hw.backends.base import check_inputs

    graph = artefact.graph
    resources = dict(artefact.resources or {})
    provenance = dict(artefact.provenance or {})
    layers = layer_structure(graph, resources, provenance)
    rep = {
        "totals": {
            "inputs": sum(i.size for i in graph.inputs),
            "neurons": sum(p.size for p in graph.populations),
            "synapses": int(sum(r["synapses_in"] for r in layers)),
            "cores": resources.get("cores"),
            "footprint_bytes": footprint_bytes(graph),
            "connection_sparsity": _connection_sparsity(graph),
        },
        "layers": layers,
        "cores": _per_core(resources),
        "activity": None,
    }
    if inputs is not None:
        x = check_inputs(graph, inputs)
        if samples is not None:
            x = {k: v[:samples] for k, v in x.items()}
        pops = [p.name for p in graph.populations]
        res = get_backend(backend)(graph, x, record=pops)
        act = activity(graph, x, {k: np.asarray(v) for k, v in res.spikes.items()}, resources, energy)
        act["backend"] = backend
        act["limit_events"] = {k: dict(v) for k, v in (res.events or {}).items()}
        rep["activity"] = act
    return rep


def _connection_sparsity(graph) -> float:
    total = sum(int(np.size(p.weight)) for p in graph.projections)
    nz = sum(int(np.count_nonzero(p.weight)) for p in graph.projections)
    return float(1.0 - nz / total) if total else 0.0


def _per_core(resources: dict) -> list[dict] | None:
    """Per-core rows when the artefact records a placement (a list of dicts under a known key)."""
    for key in ("placement", "per_core", "cores_detail"):
        val = resources.get(key)
        if isinstance(val, list) and all(isinstance(v, dict) for v in val):
            return val
        if isinstance(val, dict):
            cores = val.get("cores")
            if isinstance(cores, list) and all(isinstance(v, dict) for v in cores):
                return cores
    return None


def format_report(rep: dict) -> str:
    t = rep["totals"]
    lines = [f"network: {t['inputs']} inputs, {t['neurons']} neurons, {t['synapses']} synapses, "
             f"{t['cores'] if t['cores'] is not None else '?'} cores; footprint {t['footprint_bytes']} bytes, "
             f"connection sparsity {100 * t['connection_sparsity']:.1f}%", ""]
    head = (f"{'layer':<10} {'neurons':>8} {'syn in':>9} {'fan-in avg/max':>15} {'fan-out avg/max':>16} "
            f"{'w mem KiB':>9} {'cores':>5} {'scale':>9} {'vth':>7}  weight_exp (bits, range used)")
    lines += [head, "-" * len(head)]
    for r in rep["layers"]:
        exps = ", ".join(f"{p['name']}: {p['weight_exp']} ({p['num_weight_bits']}b, {100 * (p['weight_range_used'] or 0):.0f}%)"
                         for p in r["projections"])
        scale = f"{r['scale']:.4g}" if isinstance(r["scale"], (int, float)) else "-"
        lines.append(f"{r['population']:<10} {r['neurons']:>8} {r['synapses_in']:>9} "
                     f"{r['fan_in_mean']:>8.1f}/{r['fan_in_max']:<6} {r['fan_out_mean']:>9.1f}/{r['fan_out_max']:<6} "
                     f"{r['weight_memory_bits'] / 8192:>9.2f} {str(r['cores'] or '-'):>5} {scale:>9} {str(r['vth']):>7}  {exps}")
    if rep.get("cores"):
        lines += ["", "per core (from the artefact's placement):"]
        for c in rep["cores"]:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in c.items()))
    a = rep.get("activity")
    if a:
        e = a["energy_proxy"]
        lines += ["", f"activity ({a['backend']}, {a['samples']} samples x {a['steps']} steps, per sample):",
                  f"  synaptic operations {a['synaptic_operations_per_sample']:.4g} (effective ACs {a['effective_acs_per_sample']:.4g}, "
                  f"effective MACs {a['effective_macs_per_sample']:.4g}); spikes {a['spikes_per_sample']:.4g}; "
                  f"activation sparsity {100 * a['activation_sparsity']:.2f}%"]
        for p in a["per_population"]:
            lines.append(f"  {p['population']:<10} spikes/step {p['spikes_per_step']:>9.3f}  synops in/sample "
                         f"{p['synops_in_per_sample']:>11.4g}  sparsity {100 * p['activation_sparsity']:6.2f}%  "
                         f"busiest core {p['busiest_core_ns_per_step']:.0f} ns/step")
        ev = {k: sum(v.values()) for k, v in a.get("limit_events", {}).items()}
        if ev:
            lines.append("  overflow/saturation events: " + ", ".join(f"{k}: {v}" for k, v in ev.items()))
        lines += [f"energy/latency PROXY (operation counts x published per-op figures, not a measurement): "
                  f"{e['energy_per_sample_uJ']:.4g} uJ and {e['latency_per_sample_us']:.4g} us per sample "
                  f"({e['latency_per_step_us']:.4g} us per step); figures: {e['model']['source']}"]
    return "\n".join(lines)


def info(path, dt: float | None = None) -> dict:
    """What a checkpoint, NIR file or artefact holds (kind, inputs, outputs, populations, sizes)."""
    from snn2hw.inspect.sources import open_source

    src = open_source(path, dt)
    g = src.graph
    d = {"path": str(path), "kind": src.kind}
    if g is not None:
        d.update({
            "inputs": [{"name": i.name, "size": i.size} for i in g.inputs],
            "outputs": list(g.outputs),
            "populations": [{"name": p.name, "size": p.size} for p in g.populations],
            "projections": [{"name": p.name, "src": p.src, "dst": p.dst, "type": type(p).__name__, "delay": int(p.delay)}
                            for p in g.projections],
            "summary": g.summary(),
            "dt": g.dt,
        })
    if src.artefact is not None:
        d["resources"] = src.artefact.resources
        d["provenance"] = src.artefact.provenance
    if src.model is not None:
        d["layers"] = [type(layer).__name__ for layer in src.model.layers]
        d["parameters"] = int(sum(p.numel() for p in src.model.parameters()))
        d["extra"] = {k: v for k, v in (src.checkpoint_extra or {}).items() if isinstance(v, (int, float, str, bool))}
    return d
