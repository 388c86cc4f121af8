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
  is ``--lava-reps`` further ``run(RunSteps(T))`` (default 3). Reported: the median steps/s of the steady
  runs ("excl. startup", with their range) and of all runs with compile and start-up ("incl. startup"). The sink's spikes are checked against the simulator
  (bit-exact, as the differential tests require). Lava runs between the first and the second half of
  the simulator's repetitions (interleaved), so a change of load affects both.
* Simulator (``snn2hw.backends.sim.run`` on a ``sim.prepare``-d graph, default options, so limit events
  are counted): batch 1 and batch 256, ``--reps`` timed runs of each, alternating, after a warm-up run
  (which also loads or compiles the numba kernels). The graph is prepared once, as Lava compiles once:
  both sides are timed in their steady state; the preparation is timed on its own and the speed-up
  including it is reported too. Reported: the median and the spread (min, max) of sample-steps/s, and
  the ratio of the median to Lava's steady steps/s. The input is the int64 0/1 array that Lava's
  source gets; a third row (``256 bool``, timed in the same alternation) gives batch 256 on the same
  spikes as bool, the dtype ``rng.random(...) < rate`` gives: the simulator checks and converts an
  int64 input in one memory-bound pass over 8 bytes per input and step, which is a third of the
  pooling network's batched time (4096 inputs per step) and no part of simulating it.
* Host probe: the neuron-update peak's compiled loop (below), best of 3 short trials, once per round of
  each network's repetitions (column ``host probe``, JSON ``host_probe_per_s``). This machine is a
  2-vCPU virtual machine: the same loop ran at 0.98 G updates/s in one quiet run and 1.94 in another
  with no other process inside it, and the simulator's own rate moved with it. A network timed while
  the probe was low was timed on a slower host; compare runs at equal probe rates, or compare code by
  interleaved CPU time in one process (``diag_sim_ab.py``).
* Work and limit, per sample-step. ``dense_macs``: every synapse evaluated every step (fan-in x
  fan-out; a conv's output size x kernel size): the dense-equivalent figure. ``performed ops``: what
  the simulator's path actually does. On the whole-network kernel (every network here): an
  event-driven pass adds, for each source that spiked, its row of narrow integer weights (int8 for
  8-bit mixed-sign weights) or, for a convolution, one segment per kernel tap (the tap's weights over
  the output channels, added to channels-last sums): source spikes x fan-out additions, reading that
  many weights (and two 4-byte indices per conv segment). A binary input's convolution runs densely
  instead: with at most ``_TABLE_BITS`` taps per patch, from a table of messages indexed by each output
  position's pattern of inputs (``compiled.conv_message_table``); else, where its sums fit int32, the
  dense int32 input stage; for a sum pooling, window sums of contiguous rows
  (``compiled.dense_pool_weights``). Its performed ops are counted as its dense MACs, and
  its limit is the shorter of that work at the GEMM peak and the event formulation's. The limit
  of each projection has a compute side, its additions at the event-add peak (the same
  4-row int8 -> int32 inner loop on L1-resident rows, all threads, measured in the run), and a memory
  side, its bytes read at the read bandwidth measured in the run for the working set those reads cycle through: the
  projection's own weights for an input's projection (accumulated for all steps before the scan), all
  scanned projections' weights together for the others (each step touches every one of them). The
  bandwidth is measured at 16 KiB, 256 KiB, 8 MiB and 256 MiB per run (L1, L2, L3, memory of the
  benchmark machine), and a working set is charged at the largest measured size not above it: a
  level at least as fast as the one it can come from, so the limit is a bound (a dense product, on the
  layer schedule, is charged at the float32 GEMM peak). Neuron updates are charged at the
  neuron-update peak (the simulator's own compiled update on L1-resident state, all threads). The
  network's limit is the larger of the compute time (all operations and updates at their peaks) and
  the memory time (all bytes at their bandwidths); ``fraction of limit`` = limit time / measured time;
  ``x Lava at limit`` is the speed-up a run at the limit would reach (it bounds the batched speed-up).
  The limit leaves out forming messages and scanning for spikes, so the fraction understates.
* ``conv_accumulation``: the exact conv of the first conv projection alone, up to six ways,
  interleaved: the network kernel's event segments (as a one-projection graph: the target's neuron
  updates are included), its pattern-table input stage (``compiled.conv_message_table``; convs with at
  most ``_TABLE_BITS`` taps per patch), its dense int32 input stage (``compiled.dense_conv_taps``, or
  ``dense_pool_weights`` for the sum pooling; both stages also form the messages: what the network kernel
  runs for a binary input's convolution), the compiled direct float32 convolution
  (``compiled.conv_accumulate``, the layer schedule's path for one-channel and depthwise convs), im2col +
  float32 GEMM (``torch.nn.functional.unfold`` and ``matmul``, blocked over images so a block's columns
  stay in L2) and oneDNN's float32 ``conv2d`` (the layer schedule's path for more taps); in
  dense-equivalent MAC/s, as a fraction of the GEMM peak, and as a fraction of a dense conv's limit: the
  larger of its MACs at the GEMM peak and the least bytes it must move (binary images in, 4-byte sums
  out) at the bandwidth of that working set. With ``conv`` among the networks, the same table also
  covers two deeper spiking-CNN layers, the HM2-BP paper's MNIST ``15c5`` (1x28x28) and ``40c5``
  (15x12x12), on random 8-bit weights and binary images at the input rate (all but the event path).
  The float32 GEMM of the peak also runs once per round of that interleaved loop, and a second table
  gives each layer's fastest path against the best of those GEMMs (``% peak alongside``) as well as
  against the run's peak (the larger of the measurements at its start and end): the host's speed moves
  within a run, and a figure divided by a peak taken minutes earlier moves with it.

Load: the table's last column is the CPU time that *other* processes took while the network was timed,
in CPUs (``/proc/stat``'s busy time less this process's and its finished children's, i.e. Lava's
runtime processes), and ``*`` marks a network timed under load: other processes above 10 % of the
CPUs. (The 1-minute load average counts the benchmark's own two threads and Lava's processes, so on a
2-core machine the benchmark alone lifted it above 2 and marked every network.) The JSON also records
the load average sampled before the benchmark started and before and after every network, versions
and CPU, and the thread environment (set by the script before torch is imported:
``OMP_NUM_THREADS`` etc. = ``--threads``, ``OMP_WAIT_POLICY=PASSIVE``).

Usage::

    python benchmarks/bench_sim.py [--quick] [--threads 2] [--reps 3] [--nets 100-200-10 conv ...]
        [--no-lava] [--out benchmarks/results/sim.json]
"""
from __future__ import annotations

import os
import sys

from bench_env import OTHER_LOAD_LIMIT, OtherLoad, cpu_model, set_thread_env, under_load  # noqa: E402  (imports no torch)

# Before torch and numba start their thread pools: they read these once.
set_thread_env(sys.argv)
# Before this process does any work: the load the machine carried without the benchmark.
LOAD_AT_START = os.getloadavg()

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

# The timed simulator runs of every network: batch 1 and 256 on the int64 0/1 input that Lava gets, and
# batch 256 on the same spikes as bool.
SIM_RUNS = ("sim_b1", "sim_b256", "sim_b256_bool")


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


def projection_work(graph: Graph, prepared, rates: dict[str, float]) -> list[dict]:
    """Per projection and sample-step: the dense MACs, the path the simulator takes, the operations that
    path performs, the bytes of weights (and target indices) it must read, and the working set those
    reads cycle through (which decides the cache level they can come from; see the module docstring)."""
    sizes = {n.name: n.size for n in (*graph.inputs, *graph.populations)}
    spec = prepared.network()
    out = []
    if spec is not None:  # the whole-network kernel: event-driven, narrow integer rows
        item = spec.weights.itemsize
        ends = list(spec.w_off[1:]) + [spec.weights.size]
        per_step_set = 0  # the projections the scan reads every step cycle through together
        for k, p in enumerate(graph.projections):
            density = rates.get(p.src, INPUT_RATE)
            src_n, n_dst = int(spec.src_n[k]), sizes[p.dst]
            entries = int(ends[k] - spec.w_off[k])
            if spec.is_sparse[k]:  # per-source segments: a tap's weights over the output channels
                r0 = int(spec.row_ptr[k])
                segments = (int(spec.row_idx[r0 + src_n]) - int(spec.row_idx[r0])) // 2
                length = int(spec.seg_len[k])
                ops = src_n * density * segments / src_n * length
                path = f"event segments (conv, {length} channels), int{8 * item}"
                # per addition a weight; per segment two indices
                per_add = item + 2 * spec.row_idx.itemsize / length
                nbytes = entries * item + (2 * segments + src_n + 1 + n_dst) * spec.row_idx.itemsize
            else:
                path, per_add, ops = f"event rows, int{8 * item}", item, src_n * density * n_dst
                nbytes = entries * item
            item_out = {}
            pool = spec.dense_pools[k] if spec.dense_pools else None
            table = spec.table_convs[k] if spec.table_convs else None
            if table is not None:
                # the pattern-table stage: per output position a pattern of its taps' inputs, per output
                # a table read; charged as the dense conv's MACs (or the events, where shorter), as the
                # dense stage is, so the limit stays a bound for any exact implementation
                item_out["event_equivalent_ops"], item_out["event_equivalent_bytes"] = ops, ops * per_add
                path = "dense-equivalent: pattern table (conv)"
                ops, per_add = float(_synapses(p)), 0.0
                nbytes = int(table[0].nbytes)
            elif pool is not None or (spec.dense_convs and spec.dense_convs[k] is not None):
                # the dense int32 input stage (a sum pooling's window sums, or a conv's masked taps): every
                # tap of every output; the limit keeps the event formulation's fewer additions where that
                # is the shorter time (apply_limit), so it stays a bound for any exact implementation
                item_out["event_equivalent_ops"], item_out["event_equivalent_bytes"] = ops, ops * per_add
                path = "dense window sums (sum pooling)" if pool is not None else "dense int32 masks (conv)"
                ops, per_add = float(_synapses(p)), 0.0
                nbytes = int(pool[0].nbytes if pool is not None else spec.dense_convs[k][0].nbytes)
            if spec.ready[k]:
                path += ", all steps before the scan"
            else:
                per_step_set += nbytes
            out.append({"projection": p.name, "path": path, "dense_macs": _synapses(p), "performed_ops": ops,
                        "row_bytes_read": ops * per_add, "weight_bytes": nbytes, "working_set_bytes": nbytes,
                        **item_out})
        for k, w in enumerate(out):
            if not spec.ready[k]:
                w["working_set_bytes"] = per_step_set
        return out
    for p in graph.projections:  # the layer-by-layer schedule (graphs the kernel does not take)
        syn = _synapses(p)
        density = rates.get(p.src, INPUT_RATE)
        n_dst = sizes[p.dst]
        if isinstance(p, LoihiConv2d):
            path, ops, weight_bytes, rows = "conv2d float32", syn, 4 * int(np.prod(np.shape(p.weight))), 0
        else:
            wbytes = 4 * syn
            event = (n_dst >= sim_impl._EVENT_MIN_OUTPUTS and wbytes <= sim_impl._EVENT_WEIGHT_BYTES
                     and density < sim_impl._EVENT_DENSITY)
            path = "event (float32 rows)" if event else "dense matmul float32"
            ops = syn * density if event else syn
            rows, weight_bytes = (ops, wbytes) if event else (0, wbytes)
        out.append({"projection": p.name, "path": path, "dense_macs": syn, "performed_ops": ops,
                    "row_bytes_read": rows * 4, "weight_bytes": weight_bytes, "working_set_bytes": weight_bytes})
    return out


# --- measurements --------------------------------------------------------------------------------------
_PEAK_N = 2048  # the GEMM of the float32 peak: n x n times n x n


def matmul_peak_flops(reps: int = 5, n: int = _PEAK_N) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


_read_kernel = None


def read_bandwidth(nbytes: int, trials: int = 5) -> float:
    """Bytes/s of streaming reads over a working set of ``nbytes`` (the best of ``trials``): a compiled,
    parallel, vectorised sum over int64 words (each thread its own slice), repeated until about 256 MB
    were read. (An int32 version of this loop did not vectorise: it measured 13 GB/s at every size.)"""
    global _read_kernel
    import numba

    if _read_kernel is None:
        @numba.njit(parallel=True, nogil=True, cache=True)
        def kernel(x, reps, chunks):
            n = x.shape[0]
            total = np.zeros(chunks, dtype=np.int64)
            for c in numba.prange(chunks):
                xs = x[n * c // chunks:n * (c + 1) // chunks]
                acc = np.int64(0)
                for r in range(reps):
                    rr = np.int64(r)
                    for i in range(xs.shape[0]):
                        acc += xs[i] ^ rr  # depends on r: the pass cannot be hoisted out of the loop
                total[c] = acc
            return total.sum()

        _read_kernel = kernel
    words = max(512, nbytes // 8)
    x = np.arange(words, dtype=np.int64)
    reps = max(1, (256 << 20) // (8 * words))
    threads = int(os.environ.get("NUMBA_NUM_THREADS", "1"))
    _read_kernel(x, 1, threads)  # compile / load
    best = min(_timed(lambda: _read_kernel(x, reps, threads)) for _ in range(trials))
    return 8 * words * reps / best


# Working sets at which the read bandwidth is measured: inside L1, L2 and L3 of the benchmark machine
# (per thread; the CPU model is in the JSON) and far beyond them. A projection is charged at the
# bandwidth of the largest measured set not above its working set: a level at least as fast as the
# one its rows can come from, so the limit stays a bound.
BANDWIDTH_SETS = (16 << 10, 256 << 10, 8 << 20, 256 << 20)


def bandwidth_ladder(trials: int = 3) -> dict[int, float]:
    return {n: read_bandwidth(n, trials) for n in BANDWIDTH_SETS}


def charged_bandwidth(ladder: dict[int, float], working_set: float) -> float:
    fits = [n for n in ladder if n <= working_set]
    return ladder[max(fits)] if fits else ladder[min(ladder)]


_add_kernel = None
_neuron_kernel = None


def neuron_update_peak(trials: int = 5) -> float:
    """Neuron updates/s of the simulator's own compiled update (``compiled.neurons._neuron_updater``: the network
    kernel's loop over a population, ``loihi2.lif_step_counted`` with its event counts) on L1-resident
    state, one independent copy per thread (the best of ``trials``): no scan can update its neurons faster."""
    global _neuron_kernel
    import numba

    if _neuron_kernel is None:
        update = compiled.neurons._neuron_updater()

        @numba.njit(parallel=True, nogil=True)
        def kernel(u, v, a, bias, spikes, du, dv, vth, reps):
            threads = u.shape[0]
            out = np.zeros(threads, dtype=np.int64)
            for th in numba.prange(threads):
                total = 0
                for r in range(reps):
                    fired, f0, f1, f2 = update(u[th], v[th], a[th], bias[th], spikes[th], du, dv, vth, True)
                    total += fired + f0 + f1 + f2
                out[th] = total
            return out.sum()

        _neuron_kernel = kernel
    threads = int(os.environ.get("NUMBA_NUM_THREADS", "1"))
    rng = np.random.default_rng(0)
    n = 512
    # the network kernel's types (compiled.plan._STATE_NOTE): int32 state, input, bias and threshold, int16 du, dv
    u, v = np.zeros((threads, n), dtype=np.int32), np.zeros((threads, n), dtype=np.int32)
    a = rng.integers(-3000, 3000, (threads, n)).astype(np.int32)
    bias = rng.integers(-50, 50, (threads, n)).astype(np.int32)
    spikes = np.zeros((threads, n), dtype=np.bool_)
    du = dv = np.int16(410)
    vth = np.int32(5000)
    reps = 2000
    _neuron_kernel(u, v, a, bias, spikes, du, dv, vth, 1)
    best = min(_timed(lambda: _neuron_kernel(u, v, a, bias, spikes, du, dv, vth, reps)) for _ in range(trials))
    return threads * n * reps / best


HOST_SLOW = 0.8  # a network is marked "h" when its probes' median is below this fraction of the run's best


def host_probe() -> float:
    """The neuron-update peak's loop, best of 3 short trials: a fixed piece of compiled work whose rate
    moves only with the host. On this 2-vCPU virtual machine the same loop ran 0.98-1.94 G updates/s in
    quiet runs with no other process inside the machine, so every network records it once per round of
    its repetitions, next to its times: a figure taken while the probe was low was taken on a slower host."""
    return neuron_update_peak(trials=3)


def event_add_peak(trials: int = 5) -> float:
    """Additions/s of the event-driven inner loop at its best: int8 weight rows added four at a time
    into an int32 accumulator, all in L1, one independent copy per thread (the best of ``trials``).
    No event-driven pass can add faster, so it bounds the compute side of the limit."""
    global _add_kernel
    import numba

    if _add_kernel is None:
        @numba.njit(parallel=True, nogil=True, cache=True)
        def kernel(w, acc, reps):
            threads, rows, cols = w.shape
            for th in numba.prange(threads):
                a = acc[th]
                for r in range(reps):
                    for q in range(0, rows - 3, 4):
                        w0, w1, w2, w3 = w[th, q], w[th, q + 1], w[th, q + 2], w[th, q + 3]
                        for c in range(cols):
                            a[c] += (w0[c] + w1[c]) + (w2[c] + w3[c])
                    a[r % cols] += 1  # depends on r: the passes cannot be merged
            return acc.sum()

        _add_kernel = kernel
    threads = int(os.environ.get("NUMBA_NUM_THREADS", "1"))
    w = np.random.default_rng(0).integers(-100, 100, (threads, 32, 256)).astype(np.int8)
    acc = np.zeros((threads, 256), dtype=np.int32)
    reps = 20000
    _add_kernel(w, acc, 1)
    best = min(_timed(lambda: _add_kernel(w, acc, reps)) for _ in range(trials))
    return threads * 32 * 256 * reps / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# A network counts as timed under load when processes other than this benchmark (and the Lava
# processes it starts) used more than this fraction of the machine's CPU time while it was timed.


def time_lava(graph: Graph, x: np.ndarray, warm: int, reps: int = 1) -> dict:
    """One sample on Lava: (warm) steps with compile + start-up, then ``reps`` timed steady runs of an
    equal share of the remaining steps (their median is the figure: one run of 100-300 steps moved
    Lava's rate by up to 30 % between quiet runs, in either direction)."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink

    from snn2hw.backends.lava import lower

    total = x.shape[0]
    each = (total - warm) // reps
    out = graph.outputs[0]
    net = lower(graph, {graph.inputs[0].name: x})
    sink = Sink(shape=(graph.population(out).size,), buffer=total)
    net.populations[out].s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_start = _timed(lambda: sink.run(condition=RunSteps(num_steps=total - reps * each), run_cfg=cfg))
            t_steady = [_timed(lambda: sink.run(condition=RunSteps(num_steps=each), run_cfg=cfg))
                        for _ in range(reps)]
        spikes = np.asarray(sink.data.get()).T.astype(np.uint8)  # column t = simulator step t
    finally:
        sink.stop()
    med = statistics.median(t_steady)
    return {"steps_warm": total - reps * each, "steps_timed": each, "reps": reps, "seconds_startup_run": t_start,
            "seconds_steady_run": med, "seconds_steady_runs": t_steady, "steps_per_s": each / med,
            "steps_per_s_range": [each / max(t_steady), each / min(t_steady)],
            "steps_per_s_incl_startup": total / (t_start + sum(t_steady)), "spikes": spikes}


# The exact-conv comparison: method key -> label (table and JSON). Each computes the same exact sums of
# binary images; "dense_int32_stage" and "pattern_table_stage" also form Lava Conv's messages (what the
# network kernel does for a binary input's convolution: the table stage where the patch has at most
# compiled.input_stages._TABLE_BITS taps, the dense stage for wider ones).
CONV_METHODS = {
    "float32_conv2d_before": "float32 conv2d (oneDNN)",
    "direct_float32": "direct float32",
    "dense_int32_stage": "dense int32 input stage (+ messages)",
    "pattern_table_stage": "pattern-table input stage (+ messages)",
    "im2col_sgemm": "im2col + float32 GEMM",
    "event_segments_with_neurons": "event segments + neurons",
}
# Deeper spiking-CNN layers for the exact-conv table: the HM2-BP paper's MNIST network
# 28x28 -15c5-p2-40c5-p2- (no padding, stride 1): (in_shape, out channels, kernel)
DEEP_CONVS = {"15c5 (1x28x28)": ((1, 28, 28), 15, 5), "40c5 (15x12x12)": ((15, 12, 12), 40, 5)}
# im2col blocks: this many bytes of float32 columns, so the block stays in a core's L2 cache
_IM2COL_BLOCK_BYTES = 1 << 19


def _im2col_sgemm(x: torch.Tensor, w: torch.Tensor, p) -> torch.Tensor:
    """Exact conv of binary images ``x`` (N, C, H, W) as im2col + float32 GEMM, blocked over images so
    each block's columns stay in cache (exact: the caller checked ``conv_bound`` < 2**24)."""
    n = x.shape[0]
    o = w.shape[0]
    wf = w.to(torch.float32).reshape(p.groups, o // p.groups, -1)
    ho, wo = p.out_shape[1:]
    cols_per_image = int(np.prod(w.shape[1:])) * p.groups * ho * wo * 4
    block = max(1, _IM2COL_BLOCK_BYTES // cols_per_image)
    out = torch.empty(n, p.groups, o // p.groups, ho * wo)
    for i in range(0, n, block):
        cols = torch.nn.functional.unfold(x[i:i + block].to(torch.float32), w.shape[2:], dilation=p.dilation,
                                          padding=p.padding, stride=p.stride)
        torch.matmul(wf, cols.view(cols.shape[0], p.groups, -1, ho * wo), out=out[i:i + block])
    return out.view(n, o, ho, wo)


def conv_accumulation(graph: Graph, steps: int, batch: int, reps: int, peak_macs: float,
                      with_events: bool = True) -> dict:
    """The simulator's exact conv (first conv projection) several ways, interleaved (``CONV_METHODS``):
    the network kernel's per-source event segments (timed as a one-projection graph, so the target's
    neuron updates are included; ``with_events``), its dense int32 input stage (a binary input's conv
    and its messages, ``compiled.dense_conv_taps`` or ``dense_pool_weights``; what the network kernel
    runs for these convs now),
    the compiled direct float32 convolution (``compiled.conv_accumulate``: the layer schedule's path for
    few taps), im2col + float32 GEMM (blocked to stay in cache) and the float32 ``conv2d`` (oneDNN: the
    layer schedule's path for more taps). Dense-equivalent MAC/s and the fraction of the GEMM peak for
    each; ``apply_limit`` adds the fraction of the dense conv's limit."""
    p = next(q for q in graph.projections if isinstance(q, LoihiConv2d))
    x_np = spikes_in(graph, batch, steps, seed=6)
    x = torch.as_tensor(x_np != 0).reshape(batch * steps, *p.in_shape)
    w = torch.as_tensor(np.asarray(p.weight, dtype=np.int64))
    macs = batch * steps * _synapses(p)
    args = (p.stride, p.padding, p.dilation, p.groups)
    dst = graph.population(p.dst)
    one = Graph(graph.inputs, (dst,), (p,), (dst.name,)).validate()
    alone = sim.prepare(one)
    table_spec = alone.network()
    table_spec = table_spec if table_spec.table_convs and table_spec.table_convs[0] is not None else None
    table_on = compiled.input_stages._TABLE_INPUT_CONV
    compiled.input_stages._TABLE_INPUT_CONV = False  # the dense int32 stage, as wider patches take it
    try:
        spec = sim.prepare(one).network()
    finally:
        compiled.input_stages._TABLE_INPUT_CONV = table_on
    assert hw.conv_bound(w, 1) < 2**24  # float32 sums are exact: every float32 path applies
    assert spec is not None and (spec.dense_convs[0] is not None or spec.dense_pools[0] is not None)
    x_bool = np.ascontiguousarray(x_np != 0)
    pre = np.empty((batch, steps, int(spec.pre_off[-1])), dtype=spec.message_dtype)
    pre_table = np.empty(pre.shape, dtype=(table_spec or spec).message_dtype)  # each stage's own message type
    out_bytes = min(4, spec.message_dtype.itemsize, (table_spec or spec).message_dtype.itemsize)

    fns = {
        "float32_conv2d_before": lambda: torch.nn.functional.conv2d(
            x.to(torch.float32), w.to(torch.float32), stride=p.stride, padding=p.padding, dilation=p.dilation,
            groups=p.groups),
        "direct_float32": lambda: compiled.conv_accumulate(x, w, *args),
        "dense_int32_stage": lambda: compiled.input_stages._input_messages(spec, x_bool, pre, compiled.runtime._threads()),
        "im2col_sgemm": lambda: _im2col_sgemm(x, w, p),
    }
    if table_spec is not None:
        fns["pattern_table_stage"] = lambda: compiled.input_stages._input_messages(
            table_spec, x_bool, pre_table, compiled.runtime._threads())
    if with_events:
        fns["event_segments_with_neurons"] = lambda: sim.run(alone, x_np, count_events=False)
    ref = fns["float32_conv2d_before"]()
    for key in ("direct_float32", "im2col_sgemm"):
        assert torch.equal(fns[key](), ref), key
    fns["dense_int32_stage"]()  # messages: Lava Conv's 24-bit wrap of the exact sums (weight_exp 0)
    assert torch.equal(torch.as_tensor(pre).reshape(ref.shape).to(torch.int64),
                       hw.conv_output(ref.to(torch.int64)))
    if table_spec is not None:
        fns["pattern_table_stage"]()
        assert np.array_equal(pre_table, pre)
    for f in fns.values():
        f()
    # the GEMM peak in the same interleaved loop: the host's speed moves within a run (a quiet run's peaks
    # rose from 176 to 185 GFLOP/s and its L1 bandwidth from 239 to 273 GB/s between its start and end),
    # so a figure is also divided by the peak measured alongside it
    ga, gb = torch.randn(_PEAK_N, _PEAK_N), torch.randn(_PEAK_N, _PEAK_N)
    ga @ gb
    times = {k: [] for k in fns}
    gemm = []
    for _ in range(reps):  # interleaved
        for key, fn in fns.items():
            times[key].append(_timed(fn))
        gemm.append(_timed(lambda: ga @ gb))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"projection": p.name, "images": batch * steps, "dense_macs": macs,
           "gemm_peak_macs_alongside": _PEAK_N**3 / min(gemm),
           # what any dense conv must move at least: the binary images in, and an output per position in the
           # narrowest type a measured method writes (4-byte sums; the input stages' int16 messages where they fit)
           "min_bytes": int(x.numel() + out_bytes * ref.numel()),
           "speedup_direct_vs_conv2d": med["float32_conv2d_before"] / med["direct_float32"]}
    for k, m in med.items():
        out[k] = {"seconds": m, "dense_macs_per_s": macs / m, "fraction_of_gemm_peak": macs / m / peak_macs}
    return out


def deep_conv_rows(args, peak_macs: float) -> list[dict]:
    """The exact-conv comparison on deeper spiking-CNN layers (``DEEP_CONVS``), random 8-bit weights,
    binary inputs at ``INPUT_RATE``; 'batch 1' is one sample's steps, 'batched' 256 samples' (fewer
    steps with --quick). Rows shaped like ``bench_network``'s for ``apply_limit`` and ``conv_table``."""
    rows = []
    for name, (in_shape, out_ch, k) in DEEP_CONVS.items():
        rng = np.random.default_rng(11)
        conv = LoihiConv2d("conv", "in", "c", _weights(rng, (out_ch, in_shape[0], k, k), in_shape[0] * k * k),
                           in_shape)
        n = int(np.prod(conv.out_shape))
        g = Graph((Input("in", int(np.prod(in_shape))),), (Population("c", n, _lif(n, 1000)),), (conv,),
                  ("c",)).validate()
        steps_b1, steps_bn = (100, 4) if args.quick else (400, 16)
        rows.append({"network": name, "conv_accumulation": {
            f"b{b}": conv_accumulation(g, st, b, args.reps, peak_macs, with_events=False)
            for b, st in ((1, steps_b1), (256, steps_bn))}})
    return rows


def bench_network(name: str, args, peak_macs: float) -> dict:
    """Everything measured for one network; ``apply_limit`` adds the limit once the peak is final."""
    _, lava_steps, steps_b1, steps_b256 = NETWORKS[name]
    if args.quick:
        lava_steps, steps_b1, steps_b256 = lava_steps // 3, steps_b1 // 4, max(10, steps_b256 // 4)
    load_before = os.getloadavg()
    other_load = OtherLoad()
    graph = calibrate(build(name))
    macs = dense_macs(graph)

    # activity: firing rate of every population, and event-driven synaptic ops per sample-step
    x_rate = spikes_in(graph, 8, 300, seed=2)
    rec = sim.run(graph, x_rate, record=[p.name for p in graph.populations])
    rates = {k: float(v.mean()) for k, v in rec.spikes.items()}
    # Prepared once, as Lava compiles once: the timed runs below are the steady state of both; the
    # preparation is timed on its own (and reported, with steps/s including it)
    prep_times = []
    for _ in range(max(1, args.reps // 2)):
        t0 = time.perf_counter()
        prepared = sim.prepare(graph)
        prepared.network()
        prep_times.append(time.perf_counter() - t0)
    work = projection_work(graph, prepared, rates)
    performed = sum(w["performed_ops"] for w in work)

    row = {"network": name, "dense_macs_per_step": macs, "performed_ops_per_step": performed, "projections": work,
           "neurons": sum(p.size for p in graph.populations),
           "firing_rate": {"mean": float(np.mean(list(rates.values()))), **rates},
           "events": rec.events, "prepare_seconds": statistics.median(prep_times),
           "path": "network kernel" if prepared.network() is not None else "layer schedule"}
    runs = {}
    for key, batch, steps in (("sim_b1", 1, steps_b1), ("sim_b256", 256, steps_b256)):
        x = spikes_in(graph, batch, steps, seed=3)
        sim.run(prepared, x)  # warm-up: loads (or compiles) the kernels, touches the memory
        runs[key] = (x, steps, [])
    # the same spikes as bool, the dtype ``rng.random(...) < rate`` gives: 1 byte per input and step
    # instead of int64's 8, which the simulator checks and converts in one pass (a memory-bound pass
    # over the int64 array: on pool's 4096 inputs about a third of the batched run's CPU time)
    runs["sim_b256_bool"] = (runs["sim_b256"][0] != 0, steps_b256, [])
    sim.run(prepared, runs["sim_b256_bool"][0])

    probes = []  # the host's speed on a fixed compiled loop, once per round (see host_probe)

    def sim_reps(count):
        for _ in range(count):
            probes.append(host_probe())
            for x, _, times in runs.values():
                times.append(_timed(lambda: sim.run(prepared, x)))

    sim_reps((args.reps + 1) // 2)
    if not args.no_lava:  # between the two halves of the simulator's repetitions
        warm = max(5, lava_steps // 10)
        x = spikes_in(graph, 1, warm + args.lava_reps * lava_steps, seed=4)[0]
        lava = time_lava(graph, x, warm, args.lava_reps)
        ref = sim.run(prepared, x).spikes[graph.outputs[0]][0]
        lava_spikes = lava.pop("spikes")
        lava["matches_simulator"] = bool(np.array_equal(lava_spikes, ref))
        row["lava_b1"] = lava
    sim_reps(args.reps // 2)
    for key, (x, steps, times) in runs.items():
        batch = x.shape[0]
        med = statistics.median(times)
        sps = batch * steps / med
        r = {"batch": batch, "input_dtype": str(x.dtype), "steps": steps, "seconds_median": med, "seconds_min": min(times),
             "seconds_max": max(times), "seconds_all": times, "sample_steps_per_s": sps,
             "sample_steps_per_s_range": [batch * steps / max(times), batch * steps / min(times)],
             "dense_macs_per_s": sps * macs, "performed_ops_per_s": sps * performed,
             "sample_steps_per_s_incl_prepare": batch * steps / (med + row["prepare_seconds"])}
        if "lava_b1" in row:
            r["speedup_vs_lava"] = sps / row["lava_b1"]["steps_per_s"]
            r["speedup_vs_lava_incl_prepare"] = r["sample_steps_per_s_incl_prepare"] / row["lava_b1"]["steps_per_s"]
        row[key] = r
    probes.append(host_probe())
    row["host_probe_per_s"] = probes
    # the fixed cost of a call (input checks, weight preparation), included in every figure above
    x1 = spikes_in(graph, 1, 1, seed=5)
    row["sim_call_overhead_seconds"] = statistics.median(_timed(lambda: sim.run(prepared, x1)) for _ in range(args.reps))
    if any(isinstance(p, LoihiConv2d) for p in graph.projections):
        row["conv_accumulation"] = {f"b{b}": conv_accumulation(graph, st, b, args.reps, peak_macs)
                                    for b, st in ((1, steps_b1), (256, steps_b256))}
    load_after = os.getloadavg()
    other = other_load.result()
    row["load_average"] = {"before": load_before, "after": load_after, **other,
                           "under_load": under_load(other, args.load_at_start)}
    return row


def apply_conv_limit(row: dict, machine: dict) -> None:
    """Each exact-conv measurement's limit: a dense conv's MACs at the GEMM peak, or the least bytes it
    moves (binary images in, one output per position in the narrowest type a measured method writes) at the
    bandwidth of a working set that large, whichever takes longer; and every method's fraction of it and of
    the GEMM peak."""
    for c in row.get("conv_accumulation", {}).values():
        gemm = c["dense_macs"] / machine["gemm_peak_macs"]
        mem = c["min_bytes"] / charged_bandwidth(machine["read_bandwidth"], c["min_bytes"])
        c["limit_seconds"], c["limit_side"] = max(gemm, mem), ("GEMM" if gemm >= mem else "memory")
        for k in CONV_METHODS:
            if k in c:
                c[k]["fraction_of_gemm_peak"] = c["dense_macs"] / c[k]["seconds"] / machine["gemm_peak_macs"]
                c[k]["fraction_of_limit"] = c["limit_seconds"] / c[k]["seconds"]
                if "gemm_peak_macs_alongside" in c:
                    c[k]["fraction_of_gemm_peak_alongside"] = (c["dense_macs"] / c[k]["seconds"]
                                                               / c["gemm_peak_macs_alongside"])


def apply_limit(row: dict, machine: dict) -> None:
    """The limit of the network and its fraction (module docstring): the larger of the compute time (the
    projections' operations at their peak rates plus the neuron updates at theirs) and the memory time
    (every projection's bytes at the bandwidth charged for its working set)."""
    compute = row["neurons"] / machine["neuron_update_peak"]
    memory = 0.0
    for w in row["projections"]:
        dense = w["path"].startswith(("dense", "conv2d"))
        rate = machine["gemm_peak_macs"] if dense else machine["event_add_peak"]
        bw = charged_bandwidth(machine["read_bandwidth"], w["working_set_bytes"])
        w["read_bandwidth_bytes_per_s"] = bw
        w["compute_seconds_per_step"] = w["performed_ops"] / rate
        w["memory_seconds_per_step"] = w["row_bytes_read"] / bw
        if "event_equivalent_ops" in w:  # a dense conv: the event formulation where its time is shorter
            event = (w["event_equivalent_ops"] / machine["event_add_peak"], w["event_equivalent_bytes"] / bw)
            if max(event) < max(w["compute_seconds_per_step"], w["memory_seconds_per_step"]):
                w["compute_seconds_per_step"], w["memory_seconds_per_step"] = event
        compute += w["compute_seconds_per_step"]
        memory += w["memory_seconds_per_step"]
    limit = max(compute, memory)
    row["limit_seconds_per_sample_step"] = limit
    row["limit_terms"] = {"compute_seconds": compute, "memory_seconds": memory,
                          "neuron_seconds": row["neurons"] / machine["neuron_update_peak"]}
    if "lava_b1" in row:  # the speed-up over Lava that a run at the limit would reach
        row["speedup_vs_lava_at_limit"] = 1 / limit / row["lava_b1"]["steps_per_s"] if limit else None
    apply_conv_limit(row, machine)
    for b in SIM_RUNS:
        row[b]["fraction_of_limit"] = limit * row[b]["sample_steps_per_s"]
        row[b]["fraction_of_gemm_peak_dense_equivalent"] = row[b]["dense_macs_per_s"] / machine["gemm_peak_macs"]


def _fmt(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else (f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def table(rows: list[dict]) -> str:
    head = ("network", "rate", "Lava st/s (min..max) / incl start", "host probe G/s", "batch", "sim st/s (min..max)", "x Lava",
            "x Lava incl. prepare", "dense-eq MAC/s", "performed op/s", "% of limit", "x Lava at limit", "exact",
            "other CPUs")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lava = r.get("lava_b1")
        for b in SIM_RUNS:
            x = r[b]
            lo, hi = x["sample_steps_per_s_range"]
            lines.append(" | ".join([
                r["network"], f"{r['firing_rate']['mean']:.3f}",
                _lava_cell(lava), _probe_cell(r.get("host_probe_per_s")),
                str(x["batch"]) + (" bool" if x.get("input_dtype") == "bool" else ""), f"{_fmt(x['sample_steps_per_s'])} ({_fmt(lo)}..{_fmt(hi)})",
                f"{x['speedup_vs_lava']:.0f}" if lava else "-",
                f"{x['speedup_vs_lava_incl_prepare']:.0f}" if lava else "-",
                _fmt(x["dense_macs_per_s"]), _fmt(x["performed_ops_per_s"]), f"{100 * x['fraction_of_limit']:.0f}",
                f"{r['speedup_vs_lava_at_limit']:.0f}" if r.get("speedup_vs_lava_at_limit") else "-",
                ("yes" if lava["matches_simulator"] else "NO") if lava else "-",
                _load_cell(r["load_average"]) + (" h" if r.get("host_slow") else ""),
            ]))
    return "\n".join(lines)


def _lava_cell(lava: dict | None) -> str:
    if not lava:
        return "-"
    lo, hi = lava.get("steps_per_s_range", (lava["steps_per_s"],) * 2)
    return f"{lava['steps_per_s']:.0f} ({lo:.0f}..{hi:.0f}) / {lava['steps_per_s_incl_startup']:.0f}"


def _probe_cell(probes) -> str:
    return f"{min(probes) / 1e9:.2f}..{max(probes) / 1e9:.2f}" if probes else "-"


def _cpus(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _load_cell(load: dict) -> str:
    """The CPUs other processes used while the network was timed (load average where /proc is missing)."""
    other = load.get("other_cpus")
    cell = f"{other:.2f}" if other is not None else f"la {load['before'][0]:.1f}"
    return cell + (" *" if load["under_load"] else "")


def conv_table(rows: list[dict]) -> str:
    head = ["network / layer", "batch", "images", "limit"]
    for label in CONV_METHODS.values():
        head += [f"{label} MAC/s", "% peak", "% limit"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        for key, c in r.get("conv_accumulation", {}).items():
            cells = [r["network"], key[1:], str(c["images"]), c.get("limit_side", "-")]
            for k in CONV_METHODS:
                if k in c:
                    cells += [_fmt(c[k]["dense_macs_per_s"]), f"{100 * c[k]['fraction_of_gemm_peak']:.0f}",
                              f"{100 * c[k]['fraction_of_limit']:.0f}"]
                else:
                    cells += ["-", "-", "-"]
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def conv_alongside_table(rows: list[dict]) -> str:
    """Each layer's fastest exact path against the run's GEMM peak and against the peak measured in the
    same interleaved loop (``gemm_peak_macs_alongside``: the best of its ``--reps`` GEMMs)."""
    head = ["network / layer", "batch", "GEMM peak alongside GMAC/s", "fastest exact path", "MAC/s",
            "% run's peak", "% peak alongside"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        for key, c in r.get("conv_accumulation", {}).items():
            if "gemm_peak_macs_alongside" not in c:
                continue
            best = max((k for k in CONV_METHODS if k in c), key=lambda k: c[k]["dense_macs_per_s"])
            m = c[best]
            lines.append(" | ".join([r["network"], key[1:], f"{c['gemm_peak_macs_alongside'] / 1e9:.1f}",
                                     CONV_METHODS[best], _fmt(m["dense_macs_per_s"]),
                                     f"{100 * m['fraction_of_gemm_peak']:.0f}",
                                     f"{100 * m['fraction_of_gemm_peak_alongside']:.0f}"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (about a quarter)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--no-lava", action="store_true")
    ap.add_argument("--lava-reps", type=int, default=3,
                    help="Lava's timed steady runs per network (the median is the figure)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    args = ap.parse_args(argv)
    args.load_at_start = LOAD_AT_START[0]
    torch.set_num_threads(args.threads)
    # start numba's thread pool the way the simulator does (compiled._set_threads leaves the
    # multiprocessing start method unset, which Lava must set when it is imported); the machine
    # measurements below launch parallel kernels of their own
    compiled._set_threads(args.threads)

    load_before = os.getloadavg()
    whole_run = OtherLoad()
    peak = matmul_peak_flops()
    adds, updates, ladder = event_add_peak(), neuron_update_peak(), bandwidth_ladder()
    rows = []
    for name in args.nets:
        t0 = time.perf_counter()
        rows.append(bench_network(name, args, peak / 2))
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    deep = []
    if "conv" in args.nets:  # the exact-conv table's deeper layers, with the benchmark's conv
        t0 = time.perf_counter()
        deep = deep_conv_rows(args, peak / 2)
        print(f"[deep convs: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    peak_after = matmul_peak_flops()
    adds_after, updates_after, ladder_after = event_add_peak(), neuron_update_peak(), bandwidth_ladder()
    # the larger of the two measurements: load only ever lowers a measured peak, and a higher
    # peak makes a shorter limit, which understates (never flatters) the simulator's fraction
    machine = {"gemm_peak_macs": max(peak, peak_after) / 2, "event_add_peak": max(adds, adds_after),
               "neuron_update_peak": max(updates, updates_after),
               "read_bandwidth": {n: max(ladder[n], ladder_after[n]) for n in ladder}}
    for r in rows:
        apply_limit(r, machine)
    # a network timed while the host probe ran below HOST_SLOW of the run's best probe is marked "h"
    best_probe = max([machine["neuron_update_peak"]] + [q for r in rows for q in r.get("host_probe_per_s", [])])
    for r in rows:
        if r.get("host_probe_per_s"):
            r["host_probe_fraction_of_best"] = statistics.median(r["host_probe_per_s"]) / best_probe
            r["host_slow"] = r["host_probe_fraction_of_best"] < HOST_SLOW
    for r in deep:
        apply_conv_limit(r, machine)
    others = whole_run.result()

    print(table(rows))
    if any("conv_accumulation" in r for r in rows + deep):
        print("\nexact conv accumulation alone (interleaved medians):")
        print(conv_table(rows + deep))
        print("\nthe same, fastest path against the GEMM peak measured in the same interleaved loop:")
        print(conv_alongside_table(rows + deep))
    print(f"\nfloat32 matmul peak: {peak / 1e9:.0f} GFLOP/s before, {peak_after / 1e9:.0f} after "
          f"({args.threads} threads); {os.cpu_count()} CPUs; load average {LOAD_AT_START[0]:.1f} before the "
          f"benchmark started, {os.getloadavg()[0]:.1f} at its end (its own threads included)")
    print(f"other CPUs: CPU time other processes took while each network was timed (/proc/stat less this "
          f"process and its Lava children), in CPUs; whole run {_cpus(others['other_cpus'])}; "
          f"* = under load (other processes above {OTHER_LOAD_LIMIT:.0%} of the CPUs)")
    print("host probe: the neuron-update peak's loop (best of 3 short trials) once per round of each network's "
          "repetitions, G updates/s: the host's own speed while the network was timed (it moves with the "
          f"virtual machine's host, not with processes inside it); h = its median below {HOST_SLOW:.0%} of the "
          "run's best probe (a slower host, or load)")
    print(f"event-add peak {machine['event_add_peak'] / 1e9:.1f} G/s; neuron-update peak "
          f"{machine['neuron_update_peak'] / 1e9:.2f} G/s; read bandwidth " + ", ".join(
        f"{n >> 10} KiB: {bw / 1e9:.0f} GB/s" for n, bw in machine["read_bandwidth"].items()))
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
                    "loadavg_at_start": LOAD_AT_START, "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(), "other_processes": others,
                    "under_load_rule": f"other processes' CPU time above {OTHER_LOAD_LIMIT:.0%} of the CPUs while a "
                                       "network was timed (/proc/stat busy time less this process and its children)",
                    "under_load": any(r["load_average"]["under_load"] for r in rows)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "numba": getattr(compiled.numba, "__version__", None), "lava": lava_version},
        "simulator_path": "numba kernel" if compiled.available() else "torch",
        "matmul_peak_flops": {"before": peak, "after": peak_after},
        "event_add_peak_per_s": {"before": adds, "after": adds_after},
        "neuron_update_peak_per_s": {"before": updates, "after": updates_after},
        "read_bandwidth_bytes_per_s": {"before": ladder, "after": ladder_after},
        "limit": "max(compute, memory) per sample-step: compute = sum over projections of performed ops / peak "
                 "rate (event-add peak for event-driven passes, GEMM peak for dense products) + neurons / "
                 "neuron-update peak; memory = sum over projections of bytes of weights and indices read / read "
                 "bandwidth of the largest measured working set not above the projection's; "
                 "fraction_of_limit = limit time / measured time",
        "input_rate": INPUT_RATE, "target_rate": TARGET_RATE, "quick": args.quick, "reps": args.reps,
        "statistic": "median of interleaved repetitions (min, max kept)",
        "networks": rows,
        "deep_convs": deep,
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
