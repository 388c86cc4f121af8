"""Simulator-speed benchmark: snn2hw's bit-accurate simulator against Lava's own bit-accurate CPU run.

Networks (random integer weights, input spike probability 0.1, thresholds calibrated per layer so
that every layer fires at about 10% of steps):

* ``100-200-10``, ``9x200`` (input 200 + nine LIF layers of 200), ``1000-1000-10``, ``4000-4000-10``:
  dense layers;
* ``100-200r-10``: 100-200-10 with a recurrent 200x200 projection on the hidden layer (a graph with a
  cycle: the simulator's network kernel instead of its layer-by-layer schedule);
* ``conv``: input 1x16x16 -> Conv 3x3 (8 ch, pad 1) -> Conv 3x3 (16 ch, stride 2, pad 1) -> Dense 10;
* ``pool``: input 4x32x32 -> sum pooling 2x2 (a depthwise conv, ``ir.sum_pool2d``) -> Dense 10.

For each network, in the same process and run:

* Lava: the network lowered with ``snn2hw.backends.lava.lower`` (Lava's ``LIF``/``Dense``/``Conv`` with
  a ``RingBuffer`` source), a sink ``RingBuffer`` on the output, ``Loihi2SimCfg(select_tag="fixed_pt")``,
  one sample. A first ``run(RunSteps(W))`` compiles and starts the processes; the timed steady state
  is the second ``run(RunSteps(T))``. Reported: steps/s of the steady run ("excl. startup") and of both
  runs with compile and start-up ("incl. startup"). The sink's spikes are checked against the simulator
  (bit-exact, as the differential tests require). Lava runs between the first and the second half of
  the simulator's repetitions (interleaved), so a change of load affects both.
* Simulator (``snn2hw.backends.sim.run``, default options, so limit events are counted): batch 1 and
  batch 256, ``--reps`` timed runs of each, alternating, after a warm-up run (which also loads or
  compiles the numba kernels). Reported: the median and the spread (min, max) of sample-steps/s, and
  the ratio of the median to Lava's steady steps/s.
* Work and limit, per sample-step. ``dense_macs``: every synapse evaluated every step (fan-in x
  fan-out; a conv's output size x kernel size): the dense-equivalent figure. ``performed ops``: what
  the simulator's chosen path actually does: a dense product (matrix or ``conv2d``) performs the dense
  MACs; an event-driven pass (adding the weight rows of the spiking sources, which the simulator picks
  by spike density and weight size, and always in the kernel for graphs with cycles) performs
  source spikes x fan-out additions and reads that many weights. The limit of each projection is a
  roofline: the larger of its performed operations at the float32 GEMM peak (``torch.mm`` of two
  2048x2048 matrices, best of 5, measured before and after the networks; one addition counts as one
  MAC) and the bytes of the weight rows it must read at the read bandwidth measured in the same run
  for a working set of that projection's weight size (a compiled streaming sum, the best of several).
  The network's limit is the sum over projections; ``fraction of limit`` = limit time / measured time.
  Neuron updates are not in the limit (it bounds the synaptic work only), so the fraction understates.
* ``conv_accumulation``: the exact conv of the simulator alone, float32 (now) against the float64
  ``conv2d`` it replaced, in MAC/s and as a fraction of the GEMM peak, for batch 1 and batch 256.

Every figure is taken on a shared machine unless the load average says otherwise: the JSON records
the load average before and after every network, versions and CPU, the thread environment (set by
the script before torch is imported: ``OMP_NUM_THREADS`` etc. = ``--threads``,
``OMP_WAIT_POLICY=PASSIVE``), and the table marks networks timed under load (load > CPUs) with ``*``.

Usage::

    python benchmarks/bench_sim.py [--quick] [--threads 2] [--reps 3] [--nets 100-200-10 conv ...]
        [--no-lava] [--out benchmarks/results/sim.json]
"""
from __future__ import annotations

import os
import sys

from bench_env import cpu_model, set_thread_env  # noqa: E402  (imports no torch)

# Before torch and numba start their thread pools: they read these once.
set_thread_env(sys.argv)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from snn2hw.backends import sim  # noqa: E402
from snn2hw.backends.sim import simulator as sim_impl  # noqa: E402
from snn2hw.hw import compiled  # noqa: E402
from snn2hw.hw import loihi2 as hw  # noqa: E402
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population, sum_pool2d  # noqa: E402

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
    "pool": ("pool", 300, 2000, 100),
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
    if spec == "pool":
        pool = sum_pool2d("pool", "in", "p", (4, 32, 32), 2, weight=64)
        fc = LoihiDense("fc", "p", "out", _weights(rng, (10, 1024), 1024))
        pops = (Population("p", 1024, _lif(1024, 1)), Population("out", 10, _lif(10, 1)))
        return Graph((Input("in", 4096),), pops, (pool, fc), ("out",)).validate()
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


def _synapses(p) -> int:
    w = np.shape(p.weight)
    return int(np.prod(p.expected_out_shape())) * int(np.prod(w[1:])) if isinstance(p, LoihiConv2d) else w[0] * w[1]


def dense_macs(graph: Graph) -> int:
    """Synaptic MACs per sample-step if every synapse were evaluated every step."""
    return sum(_synapses(p) for p in graph.projections)


def projection_work(graph: Graph, rates: dict[str, float]) -> list[dict]:
    """Per projection and sample-step: the dense MACs, the path the simulator takes, the operations that
    path performs and the weight bytes it reads (see the module docstring)."""
    sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
    cyclic = graph.feedforward_order() is None
    out = []
    for p in graph.projections:
        syn = _synapses(p)
        density = rates.get(p.src, INPUT_RATE)
        n_dst = sizes[p.dst]
        if isinstance(p, LoihiConv2d):
            path, ops, weight_bytes, rows = "conv2d float32", syn, 4 * int(np.prod(np.shape(p.weight))), 0
        elif cyclic:  # the network kernel adds the int64 weight rows of non-zero sources
            path, weight_bytes = "event (network kernel, int64)", 8 * syn
            ops = rows = syn * density
        else:
            wbytes = 4 * syn
            event = (compiled.available() and n_dst >= sim_impl._EVENT_MIN_OUTPUTS
                     and wbytes <= sim_impl._EVENT_WEIGHT_BYTES and density < sim_impl._EVENT_DENSITY)
            path = "event (float32 rows)" if event else "dense matmul float32"
            ops = syn * density if event else syn
            rows, weight_bytes = (ops, wbytes) if event else (0, wbytes)
        bytes_per_weight = 8 if cyclic and not isinstance(p, LoihiConv2d) else 4
        out.append({"projection": p.name, "path": path, "dense_macs": syn, "performed_ops": ops,
                    "row_bytes_read": rows * bytes_per_weight, "weight_bytes": weight_bytes})
    return out


# --- measurements --------------------------------------------------------------------------------------
def matmul_peak_flops(reps: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


_read_kernel = None


def read_bandwidth(nbytes: int, trials: int = 5) -> float:
    """Bytes/s of streaming reads over a working set of ``nbytes`` (the best of ``trials``): a compiled,
    parallel, vectorised integer sum over the buffer, repeated until about 256 MB were read."""
    global _read_kernel
    import numba

    if _read_kernel is None:
        @numba.njit(parallel=True, nogil=True, cache=True)
        def kernel(x, reps, chunks):
            n = x.shape[0]
            total = np.zeros(chunks, dtype=np.int64)
            for c in numba.prange(chunks):
                lo = n * c // chunks
                hi = n * (c + 1) // chunks
                acc = 0
                for r in range(reps):
                    for i in range(lo, hi):
                        acc += x[i] ^ r  # depends on r: the pass cannot be hoisted out of the loop
                total[c] = acc
            return total.sum()

        _read_kernel = kernel
    words = max(1024, nbytes // 4)
    x = np.arange(words, dtype=np.int32)
    reps = max(1, (256 << 20) // (4 * words))
    threads = int(os.environ.get("NUMBA_NUM_THREADS", "1"))
    _read_kernel(x, 1, threads)  # compile / load
    best = min(_timed(lambda: _read_kernel(x, reps, threads)) for _ in range(trials))
    return 4 * words * reps / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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


def conv_accumulation(graph: Graph, steps: int, batch: int, reps: int, peak_macs: float) -> dict:
    """The simulator's exact conv alone (first conv projection), float32 against the float64 it replaced."""
    p = next(q for q in graph.projections if isinstance(q, LoihiConv2d))
    x = torch.as_tensor(spikes_in(graph, batch, steps, seed=6) != 0).reshape(batch * steps, *p.in_shape)
    w = torch.as_tensor(np.asarray(p.weight, dtype=np.int64))
    macs = batch * steps * _synapses(p)
    args = (p.stride, p.padding, p.dilation, p.groups)

    def f32():
        return hw.conv_accumulate(x, w, *args, 1)

    def f64():  # the former path: float64 conv2d of the same images
        return torch.nn.functional.conv2d(x.to(torch.float64), w.to(torch.float64), stride=p.stride,
                                          padding=p.padding, dilation=p.dilation, groups=p.groups)

    assert f32().dtype == torch.float32 and torch.equal(f32().to(torch.float64), f64())
    t32, t64 = [], []
    for _ in range(reps):  # interleaved
        t32.append(_timed(f32))
        t64.append(_timed(f64))
    m32, m64 = statistics.median(t32), statistics.median(t64)
    return {"projection": p.name, "images": batch * steps, "macs": macs,
            "float32": {"seconds": m32, "macs_per_s": macs / m32, "fraction_of_gemm_peak": macs / m32 / peak_macs},
            "float64_before": {"seconds": m64, "macs_per_s": macs / m64,
                               "fraction_of_gemm_peak": macs / m64 / peak_macs},
            "speedup": m64 / m32}


def bench_network(name: str, args, peak_macs: float) -> dict:
    """Everything measured for one network; ``apply_limit`` adds the limit once the peak is final."""
    _, lava_steps, steps_b1, steps_b256 = NETWORKS[name]
    if args.quick:
        lava_steps, steps_b1, steps_b256 = lava_steps // 3, steps_b1 // 4, max(10, steps_b256 // 4)
    load_before = os.getloadavg()
    graph = calibrate(build(name))
    macs = dense_macs(graph)

    # activity: firing rate of every population, and event-driven synaptic ops per sample-step
    x_rate = spikes_in(graph, 8, 300, seed=2)
    rec = sim.run(graph, x_rate, record=[p.name for p in graph.populations])
    rates = {k: float(v.mean()) for k, v in rec.spikes.items()}
    work = projection_work(graph, rates)
    for w in work:  # the read bandwidth at this projection's working set, in this run
        w["read_bandwidth_bytes_per_s"] = read_bandwidth(w["weight_bytes"])
    performed = sum(w["performed_ops"] for w in work)

    row = {"network": name, "dense_macs_per_step": macs, "performed_ops_per_step": performed, "projections": work,
           "firing_rate": {"mean": float(np.mean(list(rates.values()))), **rates},
           "events": rec.events}
    runs = {}
    for batch, steps in ((1, steps_b1), (256, steps_b256)):
        x = spikes_in(graph, batch, steps, seed=3)
        sim.run(graph, x)  # warm-up: loads (or compiles) the kernels, touches the memory
        runs[batch] = (x, steps, [])

    def sim_reps(count):
        for _ in range(count):
            for batch, (x, _, times) in runs.items():
                times.append(_timed(lambda: sim.run(graph, x)))

    sim_reps((args.reps + 1) // 2)
    if not args.no_lava:  # between the two halves of the simulator's repetitions
        warm = max(5, lava_steps // 10)
        x = spikes_in(graph, 1, warm + lava_steps, seed=4)[0]
        lava = time_lava(graph, x, warm)
        ref = sim.run(graph, x).spikes[graph.outputs[0]][0]
        lava_spikes = lava.pop("spikes")
        lava["matches_simulator"] = bool(np.array_equal(lava_spikes, ref))
        row["lava_b1"] = lava
    sim_reps(args.reps // 2)
    for batch, (x, steps, times) in runs.items():
        med = statistics.median(times)
        sps = batch * steps / med
        r = {"batch": batch, "steps": steps, "seconds_median": med, "seconds_min": min(times),
             "seconds_max": max(times), "sample_steps_per_s": sps,
             "sample_steps_per_s_range": [batch * steps / max(times), batch * steps / min(times)],
             "dense_macs_per_s": sps * macs, "performed_ops_per_s": sps * performed}
        if "lava_b1" in row:
            r["speedup_vs_lava"] = sps / row["lava_b1"]["steps_per_s"]
        row[f"sim_b{batch}"] = r
    # the fixed cost of a call (input checks, weight preparation), included in every figure above
    x1 = spikes_in(graph, 1, 1, seed=5)
    row["sim_call_overhead_seconds"] = statistics.median(_timed(lambda: sim.run(graph, x1)) for _ in range(args.reps))
    if any(isinstance(p, LoihiConv2d) for p in graph.projections):
        row["conv_accumulation"] = {f"b{b}": conv_accumulation(graph, st, b, args.reps, peak_macs)
                                    for b, st in ((1, steps_b1), (256, steps_b256))}
    load_after = os.getloadavg()
    row["load_average"] = {"before": load_before, "after": load_after,
                           "under_load": max(load_before[0], load_after[0]) > (os.cpu_count() or 1)}
    return row


def apply_limit(row: dict, peak_macs: float) -> None:
    """The roofline limit of every projection and the network's fraction of it (module docstring)."""
    for w in row["projections"]:
        w["limit_seconds_per_step"] = max(w["performed_ops"] / peak_macs,
                                          w["row_bytes_read"] / w["read_bandwidth_bytes_per_s"])
    limit = sum(w["limit_seconds_per_step"] for w in row["projections"])
    row["limit_seconds_per_sample_step"] = limit
    for b in ("sim_b1", "sim_b256"):
        row[b]["fraction_of_limit"] = limit * row[b]["sample_steps_per_s"]
        row[b]["fraction_of_gemm_peak_dense_equivalent"] = row[b]["dense_macs_per_s"] / peak_macs


def _fmt(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else (f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def table(rows: list[dict]) -> str:
    head = ("network", "rate", "Lava st/s (excl/incl start)", "batch", "sim st/s (min..max)", "x Lava",
            "dense-eq MAC/s", "performed op/s", "% of limit", "exact", "load")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lava = r.get("lava_b1")
        for b in ("sim_b1", "sim_b256"):
            x = r[b]
            lo, hi = x["sample_steps_per_s_range"]
            lines.append(" | ".join([
                r["network"], f"{r['firing_rate']['mean']:.3f}",
                f"{lava['steps_per_s']:.0f} / {lava['steps_per_s_incl_startup']:.0f}" if lava else "-",
                str(x["batch"]), f"{_fmt(x['sample_steps_per_s'])} ({_fmt(lo)}..{_fmt(hi)})",
                f"{x['speedup_vs_lava']:.0f}" if lava else "-",
                _fmt(x["dense_macs_per_s"]), _fmt(x["performed_ops_per_s"]), f"{100 * x['fraction_of_limit']:.0f}",
                ("yes" if lava["matches_simulator"] else "NO") if lava else "-",
                f"{r['load_average']['before'][0]:.1f}{' *' if r['load_average']['under_load'] else ''}",
            ]))
    return "\n".join(lines)


def conv_table(rows: list[dict]) -> str:
    head = ("network", "batch", "images", "float64 before MAC/s", "% peak", "float32 now MAC/s", "% peak", "speed-up")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        for key, c in r.get("conv_accumulation", {}).items():
            lines.append(" | ".join([
                r["network"], key[1:], str(c["images"]), _fmt(c["float64_before"]["macs_per_s"]),
                f"{100 * c['float64_before']['fraction_of_gemm_peak']:.0f}", _fmt(c["float32"]["macs_per_s"]),
                f"{100 * c['float32']['fraction_of_gemm_peak']:.0f}", f"{c['speedup']:.1f}"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (about a quarter)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
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
        rows.append(bench_network(name, args, peak / 2))
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    peak_after = matmul_peak_flops()
    # the larger of the two measurements: load only ever lowers a measured peak, and a higher
    # peak makes a shorter limit, which understates (never flatters) the simulator's fraction
    peak_macs = max(peak, peak_after) / 2
    for r in rows:
        apply_limit(r, peak_macs)

    print(table(rows))
    if any("conv_accumulation" in r for r in rows):
        print("\nexact conv accumulation alone (interleaved medians):")
        print(conv_table(rows))
    print(f"\nfloat32 matmul peak: {peak / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} after "
          f"({args.threads} threads); load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; * = timed under load (load average above the CPU count)")
    try:
        import lava

        lava_version = getattr(lava, "__version__", "0.10.0")
    except ImportError:
        lava_version = None
    result = {
        "command": " ".join(["benchmarks/bench_sim.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
                    "threads": args.threads, "thread_env": {k: os.environ.get(k) for k in (
                        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY",
                        "KMP_BLOCKTIME")},
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "under_load": any(r["load_average"]["under_load"] for r in rows)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "numba": getattr(compiled.numba, "__version__", None), "lava": lava_version},
        "simulator_path": "numba kernel" if compiled.available() else "torch",
        "matmul_peak_flops": {"before": peak, "after": peak_after},
        "limit": "per projection max(performed ops / GEMM peak MAC rate, weight-row bytes read / read bandwidth "
                 "at that working set), summed over projections; fraction_of_limit = limit time / measured time",
        "input_rate": INPUT_RATE, "target_rate": TARGET_RATE, "quick": args.quick, "reps": args.reps,
        "statistic": "median of interleaved repetitions (min, max kept)",
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
