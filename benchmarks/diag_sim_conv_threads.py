"""The shallow exact conv's input stage against the float32 GEMM peak, per thread and on all threads.

``bench_sim.py``'s exact-conv table divides the wall time of a stage on all threads by the GEMM peak on all
threads. This diagnostic separates the two things that figure mixes: how fast one thread runs the stage
(CPU time per image against one thread's GEMM, in CPU time: steady under load), and how well the threads
overlap (CPU time / wall time). It times, interleaved in one process, ``--reps`` rounds of:

* the first conv of each ``bench_sim`` network (``conv``: 1x16x16 -> 8 channels 3x3, 9 MACs per output;
  ``pool``: 2x2 sum pooling) as the network kernel runs it (``compiled.input_stages._input_messages``,
  the pattern-table stage for ``conv``, the dense pooling stage for ``pool``), at batch 1 (one sample's
  ``bench_sim --quick`` steps) and batch 256 (``--quick``'s batched steps), on 1 and on ``--threads``
  threads; the batch either written whole (as ``bench_sim``'s table does: 52 MB of messages for ``conv``)
  or in the 8 MiB slices that ``network_scan`` uses;
* the float32 GEMM of ``bench_sim``'s peak (2048 x 2048) on 1 and on ``--threads`` threads.

Reported per row: MACs per CPU-second against one thread's GEMM MACs per CPU-second (best round), MACs
per wall second against the all-thread GEMM (best round), and the threads' overlap (CPU / wall).

    python benchmarks/diag_sim_conv_threads.py [--nets conv pool] [--reps 7] [--threads 2] [--out x.json]
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, set_thread_env, write_results  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_sim  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.hw import compiled  # noqa: E402
from snn2hw.ir import Graph, LoihiConv2d  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _stage(spec, x, threads: int, sliced: bool):
    """The input stage as ``network_scan`` runs it (``sliced``: one 8 MiB buffer reused per slice of the
    batch) or over the whole batch at once (``bench_sim``'s exact-conv table)."""
    per_sample = x.shape[1] * int(spec.pre_off[-1]) * spec.message_dtype.itemsize
    chunk = x.shape[0]
    if sliced and x.shape[0] > threads and per_sample:
        chunk = max(threads, compiled.runner._PRE_SLICE_BYTES // per_sample // threads * threads)
    pre = np.empty((min(chunk, x.shape[0]), x.shape[1], int(spec.pre_off[-1])), dtype=spec.message_dtype)

    def run():
        compiled._set_threads(threads)
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            compiled.input_stages._input_messages(spec, x[lo:hi], pre[:hi - lo], threads)
    return run


def _gemm(threads: int):
    a, b = torch.randn(bench_sim._PEAK_N, bench_sim._PEAK_N), torch.randn(bench_sim._PEAK_N, bench_sim._PEAK_N)

    def run():
        torch.set_num_threads(threads)
        a @ b
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=["conv", "pool"], choices=["conv", "pool"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    fns, macs, images = {}, {}, {}
    for th in sorted({1, args.threads}):
        fns[("gemm", th)] = _gemm(th)
        macs[("gemm", th)] = bench_sim._PEAK_N ** 3
    for name in args.nets:
        graph = bench_sim.calibrate(bench_sim.build(name))
        p = next(q for q in graph.projections if isinstance(q, LoihiConv2d))
        dst = graph.population(p.dst)
        spec = sim.prepare(Graph(graph.inputs, (dst,), (p,), (dst.name,)).validate()).network()
        _, _, steps_b1, steps_bn = bench_sim.NETWORKS[name]
        for batch, steps in ((1, steps_b1 // 4), (256, max(10, steps_bn // 4))):
            x = np.ascontiguousarray(bench_sim.spikes_in(graph, batch, steps, seed=6) != 0)
            for th in sorted({1, args.threads}):
                for sliced in ((False, True) if batch > 1 else (False,)):
                    key = (f"{name} b{batch}" + (" sliced" if sliced else ""), th)
                    fns[key] = _stage(spec, x, th, sliced)
                    macs[key] = batch * steps * bench_sim._synapses(p)
                    images[key] = batch * steps
    for f in fns.values():
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    load = OtherLoad()
    for _ in range(args.reps):
        for k, f in fns.items():
            w, c = _timed(f)
            wall[k].append(w)
            cpu[k].append(c)
    other = load.result()
    gemm_cpu_1 = macs[("gemm", 1)] / min(cpu[("gemm", 1)])
    gemm_wall_all = macs[("gemm", args.threads)] / min(wall[("gemm", args.threads)])
    rows = []
    print(f"GEMM (float32, {bench_sim._PEAK_N}^3): one thread {gemm_cpu_1 / 1e9:.1f} GMAC per CPU-second, "
          f"{args.threads} threads {gemm_wall_all / 1e9:.1f} GMAC/s (best of {args.reps}); other processes "
          f"{other.get('other_cpus')} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("stage | threads | CPU-ns per image | % of one thread's GEMM (CPU time) | wall GMAC/s | "
          "% of the all-thread GEMM (wall) | CPU / wall")
    for k in fns:
        if k[0] == "gemm":
            continue
        c, w = statistics.median(cpu[k]), statistics.median(wall[k])
        r = {"stage": k[0], "threads": k[1], "macs": macs[k], "cpu_seconds": cpu[k], "wall_seconds": wall[k],
             "fraction_one_thread_gemm_cpu": macs[k] / c / gemm_cpu_1,
             "fraction_all_thread_gemm_wall": macs[k] / w / gemm_wall_all, "cpu_per_wall": c / w}
        rows.append(r)
        print(f"{k[0]} | {k[1]} | {c / images[k] * 1e9:.0f} | "
              f"{100 * r['fraction_one_thread_gemm_cpu']:.0f} | {macs[k] / w / 1e9:.2f} | "
              f"{100 * r['fraction_all_thread_gemm_wall']:.0f} | {r['cpu_per_wall']:.2f}")
    if args.out:
        write_results(args.out, "benchmarks/diag_sim_conv_threads.py", argv,
                      {"gemm_macs_per_cpu_s_one_thread": gemm_cpu_1, "gemm_macs_per_s_all_threads": gemm_wall_all,
                       "gemm_cpu": cpu[("gemm", 1)], "gemm_wall": wall[("gemm", args.threads)],
                       "other_load": other, "threads": args.threads}, rows, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
