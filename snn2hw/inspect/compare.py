"""The divergence tool: the same inputs through the float network, the simulator and Lava, compared layer
by layer, so a user sees *where* hardware and model part ways, not only that accuracy dropped.

``compare(artefact, inputs, float_graph=...)`` runs every requested path, recording spikes, u and v of
every population, and measures each run against a reference (the float network when given, else the
first backend). Per population and pair of runs:

* spike counts and the count error (mean |count_a - count_b| per sample and neuron);
* the raster mismatch rate (fraction of (sample, step, neuron) entries that differ);
* the **first divergent step**: the earliest step at which any sample's spikes differ, with the sample
  and neuron (lowest index) where it happens -- downstream populations usually diverge one hop later,
  so the first layer to diverge is where to look;
* u and v error in LSBs (integer units of the hardware state; float state times the layer's scale),
  over the whole run and up to (and including) the first divergent step;
* overflow/saturation events (the simulator's counts; for the float run, how often the scaled state
  leaves the 24-bit range) and the range used (largest |v| and |u| against 2**23).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from snn2hw.backends.base import check_inputs
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LIF, Graph

STATE_LIMIT = hw.STATE_HALF  # 2**23: v saturates and u wraps beyond this magnitude


@dataclass
class Run:
    """One path's recorded run: spikes/u/v per population (u, v in integer units)."""

    name: str  # "float", "sim" or "lava"
    spikes: dict[str, np.ndarray]
    u: dict[str, np.ndarray]
    v: dict[str, np.ndarray]
    events: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Comparison:
    populations: list[str]
    runs: dict[str, Run]
    reference: str
    rows: list[dict]  # one per (population, run other than the reference)
    scales: dict[str, float]
    inputs: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def first_divergence(self, run: str | None = None) -> dict | None:
        """The earliest divergence over all populations (against the reference) for ``run``."""
        rows = [r for r in self.rows if (run is None or r["run"] == run) and r["first_divergence"]]
        if not rows:
            return None
        best = min(rows, key=lambda r: (r["first_divergence"]["step"], self.populations.index(r["population"])))
        return {"population": best["population"], "run": best["run"], **best["first_divergence"]}

    def backend_agreement(self) -> dict | None:
        """Simulator vs Lava (both integer, expected equal bit for bit): the first population and step
        where spikes, u or v differ, or ``identical``."""
        if "sim" not in self.runs or "lava" not in self.runs:
            return None
        a, b = self.runs["sim"], self.runs["lava"]
        first = None
        for pop in self.populations:
            for var in ("spikes", "u", "v"):
                x, y = getattr(a, var).get(pop), getattr(b, var).get(pop)
                if x is None or y is None:
                    continue
                fd = _first_divergence(np.asarray(x), np.asarray(y))
                if fd and (first is None or fd["step"] < first["step"]):
                    first = {"population": pop, "variable": var, **fd}
        return {"identical": first is None, "first_difference": first}

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "runs": list(self.runs),
            "samples": int(next(iter(self.inputs.values())).shape[0]),
            "steps": int(next(iter(self.inputs.values())).shape[1]),
            "scales": self.scales,
            "first_divergence": {r: self.first_divergence(r) for r in self.runs if r != self.reference},
            "layers": self.rows,
            "events": {k: r.events for k, r in self.runs.items() if r.events},
            "backend_agreement": self.backend_agreement(),
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        s0 = next(iter(self.inputs.values())).shape
        lines = [f"compare: {s0[0]} samples x {s0[1]} steps; reference = {self.reference}; runs = {', '.join(self.runs)}", ""]
        head = (f"{'layer':<10} {'run':<6} {'spikes ref':>10} {'spikes':>9} {'count err':>9} {'mismatch':>9} "
                f"{'first div (step/sample/neuron)':>31} {'max|dv| LSB':>12} {'max|du| LSB':>12} {'v range':>8} {'events':>7}")
        lines += [head, "-" * len(head)]
        for r in self.rows:
            fd = r["first_divergence"]
            fd_s = f"{fd['step']}/{fd['sample']}/{fd['neuron']}" if fd else "none"
            dv = "-" if r["v_err_lsb_max"] is None else f"{r['v_err_lsb_max']:.0f}"
            du = "-" if r["u_err_lsb_max"] is None else f"{r['u_err_lsb_max']:.0f}"
            lines.append(f"{r['population']:<10} {r['run']:<6} {r['spikes_ref']:>10} {r['spikes']:>9} "
                         f"{r['count_error']:>9.3f} {100 * r['mismatch_rate']:>8.2f}% {fd_s:>31} {dv:>12} {du:>12} "
                         f"{100 * r['v_range_used']:>7.1f}% {r['limit_events']:>7}")
        for run in self.runs:
            if run == self.reference:
                continue
            fd = self.first_divergence(run)
            lines.append("")
            if fd:
                lines.append(f"{run} vs {self.reference}: first divergence in {fd['population']!r} at step {fd['step']}, "
                             f"sample {fd['sample']}, neuron {fd['neuron']} ({self.reference} spike={fd['ref_spike']}, "
                             f"{run} spike={fd['spike']}; v there: {fd['ref_v']} vs {fd['v']} LSB)")
            else:
                lines.append(f"{run} vs {self.reference}: identical spikes in every recorded population")
        agree = self.backend_agreement()
        if agree is not None:
            lines.append("")
            lines.append("sim vs lava: identical spikes, u and v in every population, every step" if agree["identical"] else
                         f"sim vs lava: DIFFER first at {agree['first_difference']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def layer_scales(graph: Graph, float_graph: Graph | None, provenance: dict | None) -> dict[str, float]:
    """Integer units per float unit of u and v, per population: the compiler's recorded scale, else
    derived from the threshold (vth << 6 = scale * v_th)."""
    scales = {}
    quant_list = (provenance or {}).get("quantization", []) if isinstance(provenance, dict) else []
    for q in quant_list if isinstance(quant_list, list) else []:
        if isinstance(q, dict) and "population" in q and isinstance(q.get("scale"), (int, float)):
            scales[q["population"]] = float(q["scale"])
    if float_graph is not None:
        for p in graph.populations:
            if p.name in scales:
                continue
            try:
                fp = float_graph.population(p.name)
            except Exception:
                continue
            if isinstance(fp.neuron, LIF) and getattr(fp.neuron, "spiking", True) and fp.neuron.v_th > 0:
                scales[p.name] = float(p.neuron.vth) * (1 << hw.THRESHOLD_SHIFT) / fp.neuron.v_th
    return scales


def _first_divergence(a: np.ndarray, b: np.ndarray) -> dict | None:
    diff = a != b
    steps = np.flatnonzero(diff.any(axis=(0, 2)))
    if steps.size == 0:
        return None
    t = int(steps[0])
    samples = np.flatnonzero(diff[:, t].any(axis=1))
    s = int(samples[0])
    n = int(np.flatnonzero(diff[s, t])[0])
    return {"step": t, "sample": s, "neuron": n}


def _pair_row(pop: str, ref: Run, run: Run) -> dict:
    a, b = ref.spikes[pop].astype(np.int64), run.spikes[pop].astype(np.int64)
    fd = _first_divergence(a, b)
    row = {
        "population": pop, "run": run.name, "reference": ref.name,
        "spikes_ref": int(a.sum()), "spikes": int(b.sum()),
        "count_error": float(np.abs(a.sum(axis=1) - b.sum(axis=1)).mean()),
        "mismatch_rate": float((a != b).mean()),
        "mismatch_per_step": (a != b).mean(axis=(0, 2)).tolist(),
        "first_divergence": None,
    }
    for var in ("u", "v"):
        x, y = getattr(ref, var).get(pop), getattr(run, var).get(pop)
        if x is None or y is None:
            row[f"{var}_err_lsb_max"] = row[f"{var}_err_lsb_mean"] = row[f"{var}_err_lsb_max_to_divergence"] = None
            continue
        err = np.abs(x - y)
        row[f"{var}_err_lsb_max"] = float(err.max(initial=0))
        row[f"{var}_err_lsb_mean"] = float(err.mean()) if err.size else 0.0
        cut = fd["step"] + 1 if fd else err.shape[1]  # up to and including the divergent step
        row[f"{var}_err_lsb_max_to_divergence"] = float(err[:, :cut].max(initial=0))
    if fd:
        t, s, n = fd["step"], fd["sample"], fd["neuron"]
        fd.update(ref_spike=int(a[s, t, n]), spike=int(b[s, t, n]),
                  ref_v=_num(ref.v.get(pop), s, t, n), v=_num(run.v.get(pop), s, t, n))
        row["first_divergence"] = fd
    v, u = run.v.get(pop), run.u.get(pop)
    row["v_max_abs"] = float(np.abs(v).max(initial=0)) if v is not None else None
    row["u_max_abs"] = float(np.abs(u).max(initial=0)) if u is not None else None
    row["v_range_used"] = (row["v_max_abs"] or 0.0) / STATE_LIMIT
    row["u_range_used"] = (row["u_max_abs"] or 0.0) / STATE_LIMIT
    row["limit_events"] = int(sum(run.events.get(pop, {}).values()))
    row["limit_events_by_kind"] = dict(run.events.get(pop, {}))
    return row


def _num(x, s, t, n):
    if x is None:
        return None
    val = float(x[s, t, n])
    return round(val, 2) if not val.is_integer() else int(val)


def _float_run(float_graph: Graph, inputs: dict[str, np.ndarray], scales: dict[str, float], notes: list[str]) -> Run:
    from snn2hw.inspect.float_ref import run_float

    fr = run_float(float_graph, inputs)
    u, v, events = {}, {}, {}
    for pop in fr.spikes:
        k = scales.get(pop)
        if k is None:
            notes.append(f"no scale known for {pop!r}: float u/v not compared")
            continue
        u[pop], v[pop] = fr.u[pop] * k, fr.v[pop] * k
        events[pop] = {"u_beyond_24bit": int((np.abs(u[pop]) >= STATE_LIMIT).sum()),
                       "v_beyond_24bit": int((np.abs(v[pop]) >= STATE_LIMIT).sum())}
    return Run("float", fr.spikes, u, v, events)


def compare(artefact, inputs, float_graph: Graph | None = None, backends: tuple[str, ...] = ("sim", "lava"),
            samples: int | None = None) -> Comparison:
    """Run ``inputs`` through ``float_graph`` (optional) and each backend; compare per population.

    ``artefact``: an ``Artefact`` (or integer ``Graph``); ``inputs``: as the backends take them;
    ``samples`` limits the batch to its first N samples. The reference is the float run when given,
    else the first backend.
    """
    from snn2hw.backends import get_backend

    graph = artefact.graph if hasattr(artefact, "graph") else artefact
    provenance = getattr(artefact, "provenance", {}) or {}
    x = check_inputs(graph, inputs)
    if samples is not None:
        x = {k: v[:samples] for k, v in x.items()}
    pops = [p.name for p in graph.populations]
    notes: list[str] = []
    scales = layer_scales(graph, float_graph, provenance)
    runs: dict[str, Run] = {}
    if float_graph is not None:
        fnames = {p.name for p in float_graph.populations}
        if fnames != set(pops):
            missing = sorted(set(pops) ^ fnames)
            raise ValueError(f"the float network's populations differ from the artefact's (mismatch: {missing[:6]})")
        runs["float"] = _float_run(float_graph, x, scales, notes)
    for name in backends:
        res = get_backend(name)(graph, x, record=pops, record_state=pops)
        runs[name] = Run(name, {k: np.asarray(v) for k, v in res.spikes.items()},
                         {k: np.asarray(v, dtype=np.float64) for k, v in res.u.items()},
                         {k: np.asarray(v, dtype=np.float64) for k, v in res.v.items()},
                         {k: dict(v) for k, v in (res.events or {}).items()})
    if not runs:
        raise ValueError("nothing to compare: give a float network or at least one backend")
    reference = next(iter(runs))
    rows = [_pair_row(pop, runs[reference], run) for run in runs.values() if run.name != reference for pop in pops]
    if len(runs) == 1:
        rows = [_pair_row(pop, runs[reference], runs[reference]) for pop in pops]
        notes.append("only one run: figures describe it against itself (ranges, events)")
    return Comparison(pops, runs, reference, rows, scales, x, notes)
