"""Simulator-speed benchmark: snn2hw's bit-accurate simulator against Lava's own bit-accurate CPU run.

Networks (random integer weights, input spike probability 0.1, thresholds calibrated per layer so
that every layer fires at about 10% of steps):

* ``100-200-10``, ``9x200`` (input 200 + nine LIF layers of 200), ``1000-1000-10``, ``4000-4000-10``:
  dense layers;
* ``100-200r-10``: 100-200-10 with a recurrent 200x200 projection on the hidden layer (a graph with a
  cycle: the simulator's network kernel instead of its layer-by-layer schedule);
* ``conv``: input 1x16x16 -> Conv 3x3 (8 ch, pad 1) -> Conv 3x3 (16 ch, stride 2, pad 1) -> Dense 10.

For each network, in the same process and run:

* Lava: the network lowered with ``snn2hw.backends.lava.lower`` (Lava's ``LIF``/``Dense``/``Conv`` with
  a ``RingBuffer`` source), a sink ``RingBuffer`` on the output, ``Loihi2SimCfg(select_tag="fixed_pt")``,
  one sample. A first ``run(RunSteps(W))`` compiles and starts the processes; the timed steady state
  is the second ``run(RunSteps(T))``. Reported: steps/s of the steady run ("excl. startup") and of both
  runs with compile and start-up ("incl. startup"). The sink's spikes are checked against the simulator
  (bit-exact, as the differential tests require).
* Simulator (``snn2hw.backends.sim.run``, default options, so limit events are counted): batch 1 and
  batch 256, best of ``--reps`` timed runs after a warm-up run (the warm-up also loads or compiles
  the numba kernel). Reported: sample-steps/s and the ratio to Lava's steady steps/s.
* Synaptic operations: dense MACs per sample-step (sum over projections of fan-in x fan-out; a conv's
  output size x kernel size), times sample-steps/s, against the float32 matmul peak measured in the
  same run (``torch.mm`` of two 2048x2048 matrices, best of 5, 2 FLOP per MAC). Event-driven synaptic
  ops (source spikes x fan-out) are in the JSON too.

The machine is shared (2 cores): numbers are noisy. The JSON records the load average before and
after, the thread count and ``OMP_WAIT_POLICY`` (set to PASSIVE unless given: spinning OpenMP workers
otherwise starve everything else on an oversubscribed machine and small matrix products run 10-20x
slower with 2 threads than with 1).

Usage::

    python benchmarks/bench_sim.py [--quick] [--threads 2] [--reps 3] [--nets 100-200-10 conv ...]
        [--no-lava] [--out benchmarks/results/sim.json]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from snn2hw.backends import sim  # noqa: E402
from snn2hw.hw import compiled  # noqa: E402
from snn2hw.hw import loihi2 as hw  # noqa: E402
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population  # noqa: E402

INPUT_RATE = 0.1
TARGET_RATE = 0.1
DU = DV = 410  # u and v keep about 90% per step

# name -> (layer sizes or "conv", Lava steady steps, sim batch-1 steps, sim batch-256 steps); --quick divides
NETWORKS = {
    "100-200-10": ([100, 200, 10], 1000, 4000, 400),
    "9x200": ([200] * 10, 500, 2000, 200),
    "1000-1000-10": ([1000, 1000, 10], 300, 1000, 100),
    "4000-4000-10": ([4000, 4000, 10], 150, 1000, 20),
    "100-200r-10": ("recurrent", 1000, 4000, 400),
    "conv": ("conv", 300, 2000, 100),
}


# --- networks ------------------------------------------------------------------------------------------
def _weights(rng, shape, fan_in):
    """Even (8-bit mixed-sign grid) integers with a slight excitatory bias, scaled to the fan-in."""
    sigma = min(120.0, 600.0 / np.sqrt(fan_in * INPUT_RATE + 1))
    w = rng.normal(0.15 * sigma, sigma, shape)
    return (np.clip(np.round(w / 2) * 2, -256, 254)).astype(np.int64)


def _lif(size, vth):
    return LoihiLIF(DU, DV, int(vth), np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64))


def build(name: str, seed: int = 0) -> Graph:
    """The network with every threshold at 1 (``calibrate`` sets them)."""
    rng = np.random.default_rng(seed)
    spec = NETWORKS[name][0]
    if spec == "recurrent":
        g = build("100-200-10", seed)
        rec = LoihiDense("rec", "l1", "l1", _weights(rng, (200, 200), 200) // 4 * 2)
        return dataclasses.replace(g, projections=g.projections + (rec,)).validate()
    if spec == "conv":
        c1 = LoihiConv2d("conv1", "in", "c1", _weights(rng, (8, 1, 3, 3), 9), (1, 16, 16), padding=(1, 1))
        c2 = LoihiConv2d("conv2", "c1", "c2", _weights(rng, (16, 8, 3, 3), 72), (8, 16, 16), stride=(2, 2),
                         padding=(1, 1))
        fc = LoihiDense("fc", "c2", "out", _weights(rng, (10, 1024), 1024))
        pops = (Population("c1", 2048, _lif(2048, 1)), Population("c2", 1024, _lif(1024, 1)),
                Population("out", 10, _lif(10, 1)))
        return Graph((Input("in", 256),), pops, (c1, c2, fc), ("out",)).validate()
    pops, projs, prev = [], [], "in"
    for i, (n_in, n_out) in enumerate(zip(spec[:-1], spec[1:])):
        pops.append(Population(f"l{i + 1}", n_out, _lif(n_out, 1)))
        projs.append(LoihiDense(f"w{i + 1}", prev, f"l{i + 1}", _weights(rng, (n_out, n_in), n_in)))
        prev = f"l{i + 1}"
    return Graph((Input("in", spec[0]),), tuple(pops), tuple(projs), (prev,)).validate()


def spikes_in(graph: Graph, batch: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, steps, graph.inputs[0].size)) < INPUT_RATE).astype(np.int64)


def _with_vth(graph: Graph, name: str, vth: int) -> Graph:
    pops = tuple(dataclasses.replace(p, neuron=dataclasses.replace(p.neuron, vth=int(vth))) if p.name == name else p
                 for p in graph.populations)
    return dataclasses.replace(graph, populations=pops)


def calibrate(graph: Graph, seed: int = 1) -> Graph:
    """Bisect each layer's vth (in order) for a firing rate near ``TARGET_RATE`` (with the simulator)."""
    x = spikes_in(graph, 4, 200, seed)
    for pop in graph.populations:
        lo, hi = 0, hw.VTH_MAX
        while hi - lo > 1:
            mid = (lo + hi) // 2
            rate = sim.run(_with_vth(graph, pop.name, mid), x, record=[pop.name], count_events=False).spikes[pop.name].mean()
            lo, hi = (mid, hi) if rate > TARGET_RATE else (lo, mid)
        graph = _with_vth(graph, pop.name, hi)
    return graph


def dense_macs(graph: Graph) -> int:
    """Synaptic MACs per sample-step if every synapse were evaluated every step."""
    total = 0
    for p in graph.projections:
        w = np.shape(p.weight)
        if isinstance(p, LoihiConv2d):
            total += int(np.prod(p.expected_out_shape())) * int(np.prod(w[1:]))
        else:
            total += w[0] * w[1]
    return total


def fan_out(graph: Graph) -> dict[str, float]:
    """Mean synapses per source neuron, per source node (for event-driven op counts)."""
    out: dict[str, float] = {}
    sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
    for p in graph.projections:
        w = np.shape(p.weight)
        syn = int(np.prod(p.expected_out_shape())) * int(np.prod(w[1:])) if isinstance(p, LoihiConv2d) else w[0] * w[1]
        out[p.src] = out.get(p.src, 0.0) + syn / sizes[p.src]
    return out


# --- measurements --------------------------------------------------------------------------------------
def matmul_peak_flops(reps: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_sim(graph: Graph, x: np.ndarray, reps: int) -> tuple[float, object]:
    res = sim.run(graph, x)  # warm-up: loads (or compiles) the kernels, touches the memory
    return min(_timed(lambda: sim.run(graph, x)) for _ in range(reps)), res


def time_lava(graph: Graph, x: np.ndarray, warm: int) -> dict:
    """One sample on Lava: (warm) steps with compile + start-up, then len(x) - warm timed steps."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink

    from snn2hw.backends.lava import lower

    total = x.shape[0]
    out = graph.outputs[0]
    net = lower(graph, {graph.inputs[0].name: x})
    sink = Sink(shape=(graph.population(out).size,), buffer=total)
    net.populations[out].s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_start = _timed(lambda: sink.run(condition=RunSteps(num_steps=warm), run_cfg=cfg))
            t_steady = _timed(lambda: sink.run(condition=RunSteps(num_steps=total - warm), run_cfg=cfg))
        spikes = np.asarray(sink.data.get()).T.astype(np.uint8)  # column t = simulator step t
    finally:
        sink.stop()
    return {"steps_warm": warm, "steps_timed": total - warm, "seconds_startup_run": t_start,
            "seconds_steady_run": t_steady, "steps_per_s": (total - warm) / t_steady,
            "steps_per_s_incl_startup": total / (t_start + t_steady), "spikes": spikes}


def bench_network(name: str, args) -> dict:
    _, lava_steps, steps_b1, steps_b256 = NETWORKS[name]
    if args.quick:
        lava_steps, steps_b1, steps_b256 = lava_steps // 3, steps_b1 // 4, max(10, steps_b256 // 4)
    graph = calibrate(build(name))
    macs = dense_macs(graph)

    # activity: firing rate of every population, and event-driven synaptic ops per sample-step
    x_rate = spikes_in(graph, 8, 300, seed=2)
    rec = sim.run(graph, x_rate, record=[p.name for p in graph.populations])
    rates = {k: float(v.mean()) for k, v in rec.spikes.items()}
    fo = fan_out(graph)
    event_ops = sum(fo.get(i.name, 0.0) * i.size * INPUT_RATE for i in graph.inputs)
    event_ops += sum(fo.get(p.name, 0.0) * p.size * rates[p.name] for p in graph.populations)

    row = {"network": name, "dense_macs_per_step": macs, "event_ops_per_step": event_ops,
           "firing_rate": {"mean": float(np.mean(list(rates.values()))), **rates},
           "events": rec.events}
    for batch, steps in ((1, steps_b1), (256, steps_b256)):
        x = spikes_in(graph, batch, steps, seed=3)
        seconds, _ = time_sim(graph, x, args.reps)
        sps = batch * steps / seconds
        row[f"sim_b{batch}"] = {"batch": batch, "steps": steps, "seconds": seconds, "sample_steps_per_s": sps,
                                "dense_macs_per_s": sps * macs, "event_ops_per_s": sps * event_ops}
    # the fixed cost of a call (input checks, weight preparation), included in every figure above
    row["sim_call_overhead_seconds"], _ = time_sim(graph, spikes_in(graph, 1, 1, seed=5), args.reps)
    if not args.no_lava:
        warm = max(5, lava_steps // 10)
        x = spikes_in(graph, 1, warm + lava_steps, seed=4)[0]
        lava = time_lava(graph, x, warm)
        ref = sim.run(graph, x).spikes[graph.outputs[0]][0]
        lava_spikes = lava.pop("spikes")
        lava["matches_simulator"] = bool(np.array_equal(lava_spikes, ref))
        row["lava_b1"] = lava
        for batch in (1, 256):
            row[f"sim_b{batch}"]["speedup_vs_lava"] = row[f"sim_b{batch}"]["sample_steps_per_s"] / lava["steps_per_s"]
    return row


def _fmt(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else (f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def table(rows: list[dict]) -> str:
    head = ("network", "rate", "Lava st/s (excl/incl start)", "sim b1 st/s", "x Lava", "sim b256 st/s", "x Lava",
            "MAC/s b256", "% peak", "exact")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lava = r.get("lava_b1")
        b1, b256 = r["sim_b1"], r["sim_b256"]
        lines.append(" | ".join([
            r["network"], f"{r['firing_rate']['mean']:.3f}",
            f"{lava['steps_per_s']:.0f} / {lava['steps_per_s_incl_startup']:.0f}" if lava else "-",
            _fmt(b1["sample_steps_per_s"]), f"{b1['speedup_vs_lava']:.0f}" if lava else "-",
            _fmt(b256["sample_steps_per_s"]), f"{b256['speedup_vs_lava']:.0f}" if lava else "-",
            _fmt(b256["dense_macs_per_s"]), f"{100 * b256['fraction_of_matmul_peak']:.0f}",
            ("yes" if lava["matches_simulator"] else "NO") if lava else "-",
        ]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (about a quarter)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--no-lava", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    peak = matmul_peak_flops()
    rows = []
    for name in args.nets:
        t0 = time.perf_counter()
        rows.append(bench_network(name, args))
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    peak_after = matmul_peak_flops()
    # the larger of the two measurements: load only ever lowers a measured peak, and a higher
    # denominator understates (never flatters) the simulator's fraction
    peak_macs = max(peak, peak_after) / 2
    for r in rows:
        for b in ("sim_b1", "sim_b256"):
            r[b]["fraction_of_matmul_peak"] = r[b]["dense_macs_per_s"] / peak_macs

    print(table(rows))
    print(f"\nfloat32 matmul peak: {peak / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} after "
          f"({args.threads} threads); load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    try:
        import lava

        lava_version = getattr(lava, "__version__", "0.10.0")
    except ImportError:
        lava_version = None
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "numba": getattr(compiled.numba, "__version__", None), "lava": lava_version},
        "simulator_path": "numba kernel" if compiled.available() else "torch",
        "matmul_peak_flops": {"before": peak, "after": peak_after},
        "input_rate": INPUT_RATE, "target_rate": TARGET_RATE, "quick": args.quick, "reps": args.reps,
        "networks": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
