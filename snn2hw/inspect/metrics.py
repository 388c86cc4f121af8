"""Structure and activity metrics of a compiled network, and an activity-based energy/latency proxy.

Definitions follow NeuroBench (Yik et al., "The NeuroBench framework for benchmarking neuromorphic
computing algorithms and systems", Nature Communications 16, 2025; arXiv:2304.04640) where they
overlap, so that numbers can be set beside published ones:

* **footprint**: bytes needed to store the deployed parameters (weights at their stored bit width,
  counted once per kernel entry for a convolution; 16 bits of bias mantissa+exponent per neuron;
  du, dv, vth per population).
* **connection sparsity**: zero weights / all weights (kernel entries for a convolution).
* **activation sparsity**: 1 - non-zero activations / all activations, over every neuron of every
  population and every step (inputs excluded), averaged over samples.
* **synaptic operations**: per sample, every non-zero activation of a source times its fan-out into a
  projection. With binary spikes these are NeuroBench's *effective ACs*; graded (multi-bit) inputs
  give *effective MACs*; both are reported.

The energy and latency figures are a **proxy**: operation counts times per-operation figures published
for Loihi (``EnergyModel``; see docs/inspect.md for sources and caveats), not a measurement.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, LoihiConv2d, LoihiDense


@dataclass(frozen=True)
class EnergyModel:
    """Per-operation energy (pJ) and time (ns) used for the proxy. Defaults: Loihi (14 nm), Davies et al.,
    "Loihi: a neuromorphic manycore processor with on-chip learning", IEEE Micro 38(1), 2018, Table 2
    (minimum energy per synaptic spike op, active neuron update, within-tile spike; maximum time per
    synaptic op and per active neuron update). Loihi 2 per-operation figures are not published in the
    same detail; override these fields when you have better ones."""

    synop_pj: float = 23.6
    neuron_update_pj: float = 52.0
    spike_pj: float = 1.7
    synop_ns: float = 3.5
    neuron_update_ns: float = 8.4
    source: str = "Davies et al., IEEE Micro 38(1):82-99, 2018 (Loihi, 14 nm), Table 2"


# --- structure ----------------------------------------------------------------------------------------
def _conv_counts(p: LoihiConv2d) -> tuple[np.ndarray, np.ndarray]:
    """(fan-in per destination neuron, fan-out per source neuron) of a convolution's non-zero taps."""
    mask = torch.as_tensor(np.asarray(p.weight) != 0, dtype=torch.float64)
    ones_in = torch.ones(1, *p.in_shape, dtype=torch.float64)
    fan_in = torch.nn.functional.conv2d(ones_in, mask, stride=p.stride, padding=p.padding, dilation=p.dilation,
                                        groups=p.groups)
    ones_out = torch.ones(1, *p.out_shape, dtype=torch.float64)
    out_pad = []
    for ax in range(2):
        size = (p.out_shape[1 + ax] - 1) * p.stride[ax] - 2 * p.padding[ax] + p.dilation[ax] * (p.kernel_size[ax] - 1) + 1
        out_pad.append(p.in_shape[1 + ax] - size)
    if min(out_pad) < 0 or any(op >= max(s, d) for op, s, d in zip(out_pad, p.stride, p.dilation)):
        # the transposed convolution cannot reach the input size: count by scattering the dense matrix
        fan_out = np.zeros(int(np.prod(p.in_shape)))
        return fan_in.reshape(-1).numpy(), fan_out
    fan_out = torch.nn.functional.conv_transpose2d(ones_out, mask, stride=p.stride, padding=p.padding,
                                                   output_padding=tuple(out_pad), groups=p.groups, dilation=p.dilation)
    return fan_in.reshape(-1).numpy(), fan_out.reshape(-1).numpy()


def projection_counts(p) -> tuple[np.ndarray, np.ndarray]:
    """(fan-in per destination neuron, fan-out per source neuron): non-zero synapses."""
    if isinstance(p, LoihiConv2d) or hasattr(p, "in_shape"):
        return _conv_counts(p)
    nz = np.asarray(p.weight) != 0
    return nz.sum(axis=1).astype(np.float64), nz.sum(axis=0).astype(np.float64)


def _weight_bits(p) -> int:
    w = np.asarray(p.weight)
    bits = int(getattr(p, "num_weight_bits", 8)) + (1 if int(getattr(p, "sign_mode", 1)) == int(hw.SignMode.MIXED) else 0)
    stored = w.size if isinstance(p, LoihiConv2d) else int(np.count_nonzero(w))
    return stored * bits


def layer_structure(graph: Graph, resources: dict | None = None, provenance: dict | None = None) -> list[dict]:
    """One row per population: neurons, synapses in, fan-in/out, memory, exponents, scale, cores."""
    resources = resources if isinstance(resources, dict) else {}
    per_pop = resources.get("per_population", {}) if isinstance(resources.get("per_population"), dict) else {}
    quant = {}
    quant_list = (provenance or {}).get("quantization", []) if isinstance(provenance, dict) else []
    for q in quant_list if isinstance(quant_list, list) else []:
        if isinstance(q, dict) and isinstance(q.get("population"), str):
            quant[q["population"]] = q
    fan_out: dict[str, np.ndarray] = {n.name: np.zeros(n.size) for n in (*graph.inputs, *graph.populations)}
    fan_in: dict[str, np.ndarray] = {p.name: np.zeros(p.size) for p in graph.populations}
    per_proj = {}
    for pr in graph.projections:
        fi, fo = projection_counts(pr)
        fan_in[pr.dst] = fan_in[pr.dst] + fi
        if fo.shape == fan_out[pr.src].shape:
            fan_out[pr.src] = fan_out[pr.src] + fo
        per_proj[pr.name] = {
            "name": pr.name, "src": pr.src, "dst": pr.dst,
            "kind": "conv2d" if isinstance(pr, LoihiConv2d) else ("sparse" if getattr(pr, "sparse", False) else "dense"),
            "synapses": int(fi.sum()),
            "weight_exp": int(getattr(pr, "weight_exp", 0)),
            "num_weight_bits": int(getattr(pr, "num_weight_bits", 0)),
            "sign_mode": int(getattr(pr, "sign_mode", 0)),
            "delay": int(pr.delay),
            "weight_memory_bits": _weight_bits(pr),
            "connection_sparsity": float(1.0 - np.count_nonzero(pr.weight) / max(np.size(pr.weight), 1)),
            "weight_range_used": _weight_range_used(pr),
        }
    rows = []
    for p in graph.populations:
        incoming = [per_proj[pr.name] for pr in graph.incoming(p.name)]
        n = p.neuron
        q = quant.get(p.name, {})
        pr_cores = per_pop.get(p.name, {}).get("cores") if isinstance(per_pop.get(p.name), dict) else None
        rows.append({
            "population": p.name,
            "neurons": p.size,
            "synapses_in": int(fan_in[p.name].sum()),
            "fan_in_mean": float(fan_in[p.name].mean()) if p.size else 0.0,
            "fan_in_max": int(fan_in[p.name].max(initial=0)),
            "fan_out_mean": float(fan_out[p.name].mean()) if p.size else 0.0,
            "fan_out_max": int(fan_out[p.name].max(initial=0)),
            "weight_memory_bits": int(sum(d["weight_memory_bits"] for d in incoming)),
            "cores": pr_cores,
            "du": getattr(n, "du", None), "dv": getattr(n, "dv", None), "vth": getattr(n, "vth", None),
            "scale": q.get("scale") if isinstance(q.get("scale"), (int, float)) else None,
            "weight_exps": {d["name"]: d["weight_exp"] for d in incoming},
            "max_weight_error": q.get("max_weight_error"),
            "projections": incoming,
        })
    return rows


def _weight_range_used(pr) -> float | None:
    """max |w| over the largest magnitude the projection's sign mode and bits allow (1.0: full range)."""
    try:
        lo, hi = hw.weight_range(hw.SignMode(int(pr.sign_mode)))
    except (ValueError, AttributeError):
        return None
    w = np.asarray(pr.weight)
    return float(np.abs(w).max(initial=0) / max(abs(lo), hi)) if w.size else 0.0


def footprint_bytes(graph: Graph) -> int:
    """NeuroBench footprint of the deployed parameters (see module docstring)."""
    bits = sum(_weight_bits(p) for p in graph.projections)
    bits += sum(16 * p.size + 12 + 12 + 17 for p in graph.populations)
    return int(math.ceil(bits / 8))


# --- activity -----------------------------------------------------------------------------------------
def activity(graph: Graph, inputs: dict[str, np.ndarray], spikes: dict[str, np.ndarray],
             resources: dict | None = None, energy: EnergyModel = EnergyModel()) -> dict:
    """Activity metrics of one recorded run: ``spikes`` must hold every population (batch, steps, size)."""
    first = next(iter(inputs.values()))
    batch, steps = first.shape[:2]
    acts = {**{k: np.asarray(v) for k, v in inputs.items()}, **spikes}
    graded = {i.name for i in graph.inputs if i.num_message_bits > 0}
    per_pop: dict[str, dict] = {p.name: {"population": p.name, "spikes_per_step": 0.0, "synops_in_per_sample": 0.0}
                                for p in graph.populations}
    ac = mac = 0.0
    per_proj = {}
    for pr in graph.projections:
        _, fo = projection_counts(pr)
        nz = (acts[pr.src] != 0).reshape(batch * steps, -1).astype(np.float64)
        ops = float((nz @ fo).sum()) / batch
        per_proj[pr.name] = ops
        per_pop[pr.dst]["synops_in_per_sample"] += ops
        if pr.src in graded or int(getattr(pr, "num_message_bits", 0)) > 0:
            mac += ops
        else:
            ac += ops
    total_act = nonzero = 0
    per_pop_cores = (resources or {}).get("per_population", {}) if isinstance(resources, dict) else {}
    per_pop_cores = per_pop_cores if isinstance(per_pop_cores, dict) else {}
    step_ns = 0.0
    for p in graph.populations:
        s = spikes[p.name]
        per_pop[p.name]["spikes_per_step"] = float(s.sum()) / (batch * steps)
        per_pop[p.name]["activation_sparsity"] = float(1.0 - np.count_nonzero(s) / max(s.size, 1))
        total_act += s.size
        nonzero += int(np.count_nonzero(s))
        cores = per_pop_cores.get(p.name, {}).get("cores") if isinstance(per_pop_cores.get(p.name), dict) else None
        cores = cores if isinstance(cores, int) and not isinstance(cores, bool) and cores > 0 else 1
        core_ns = (per_pop[p.name]["synops_in_per_sample"] / steps / cores) * energy.synop_ns \
            + math.ceil(p.size / cores) * energy.neuron_update_ns
        per_pop[p.name]["busiest_core_ns_per_step"] = core_ns
        step_ns = max(step_ns, core_ns)
    spikes_per_sample = sum(float(spikes[p.name].sum()) for p in graph.populations) / batch
    neuron_updates = sum(p.size for p in graph.populations) * steps
    synops = ac + mac
    e_pj = synops * energy.synop_pj + neuron_updates * energy.neuron_update_pj + spikes_per_sample * energy.spike_pj
    return {
        "samples": int(batch),
        "steps": int(steps),
        "synaptic_operations_per_sample": synops,
        "effective_acs_per_sample": ac,
        "effective_macs_per_sample": mac,
        "synops_per_projection_per_sample": per_proj,
        "spikes_per_sample": spikes_per_sample,
        "activation_sparsity": float(1.0 - nonzero / max(total_act, 1)),
        "per_population": list(per_pop.values()),
        "energy_proxy": {
            "is_proxy": True,
            "energy_per_sample_uJ": e_pj * 1e-6,
            "synop_share": synops * energy.synop_pj / e_pj if e_pj else 0.0,
            "latency_per_step_us": step_ns * 1e-3,
            "latency_per_sample_us": step_ns * steps * 1e-3,
            "model": asdict(energy),
            "formula": "E = synops*synop_pj + neurons*steps*neuron_update_pj + spikes*spike_pj; "
                       "step time = max over populations of (synops per step per core * synop_ns + "
                       "neurons per core * neuron_update_ns)",
        },
    }
