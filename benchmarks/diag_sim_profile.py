"""Where the whole-network kernel's time goes, per network of ``bench_sim.py``, batch 256 (and 1).

Ablations of one ``compiled.network_scan`` run, interleaved, medians of ``--reps``:

* ``full``: the run as ``sim.run`` does it (limit events counted);
* ``no_counts``: the same without counting limit events (``count_events=False``);
* ``no_scanned``: every projection that the scan forms step by step (from a population) made to arrive
  after the last step, so only the input stage, the ready messages and every neuron update remain; the
  difference to ``full`` is the scanned projections' time: scanning sources for spikes, the
  event-driven adds and forming messages;
* ``input_stage``: the binary inputs' projections alone, formed for all steps (``_input_messages``);
* ``neurons_only``: no projection at all: every neuron updated every step with zero input (the scan's
  fixed cost per neuron: the update, its event counts, the spike store);
* ``run_int64`` / ``run_bool``: the whole ``sim.run(prepared, x)`` call as ``bench_sim.py`` times it
  (its int64 0/1 input), and the same on a bool input; ``check_int64``: checking and converting the
  int64 input alone (``check_inputs(..., binary_as_bool=True)``). The differences are the per-call
  costs outside ``network_scan``.

Reported per sample-step in ns of CPU time (``time.process_time``, all threads: steadier than wall time
on a loaded machine; wall times are kept in the JSON), and each phase's share of ``full``. The load
(other processes' CPU time, ``bench_env.OtherLoad``) is recorded with the figures.

    python benchmarks/diag_sim_profile.py [--nets 9x200 conv pool] [--reps 5] [--threads 2]
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, set_thread_env  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_sim  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.backends.base import check_inputs  # noqa: E402
from snn2hw.hw import compiled  # noqa: E402


def _input_stage(spec, x, threads):
    pre = np.empty((x.shape[0], x.shape[1], int(spec.pre_off[-1])), dtype=spec.message_dtype)
    chunk = x.shape[0]
    per_sample = x.shape[1] * int(spec.pre_off[-1]) * spec.message_dtype.itemsize
    if x.shape[0] > threads and per_sample:
        chunk = max(threads, compiled.runner._PRE_SLICE_BYTES // per_sample // threads * threads)
    for lo in range(0, x.shape[0], chunk):
        compiled.input_stages._input_messages(spec, x[lo:lo + chunk], pre[:min(chunk, x.shape[0] - lo)], threads)


def profile(name: str, batch: int, steps: int, reps: int) -> dict:
    graph = bench_sim.calibrate(bench_sim.build(name))
    prepared = sim.prepare(graph)
    spec = prepared.network()
    x64 = bench_sim.spikes_in(graph, batch, steps, seed=3)
    x = np.ascontiguousarray(x64 != 0)
    never = np.where(spec.ready, spec.lags, steps + 1)  # scanned projections arrive after the last step
    no_scanned = spec._replace(lags=never)
    nothing = spec._replace(lags=np.full_like(spec.lags, steps + 1), ready=np.zeros_like(spec.ready))
    threads = compiled.runtime._threads()
    fns = {
        "full": lambda: compiled.network_scan(spec, x, steps, count_events=True),
        "no_counts": lambda: compiled.network_scan(spec, x, steps, count_events=False),
        "no_scanned": lambda: compiled.network_scan(no_scanned, x, steps, count_events=True),
        "input_stage": lambda: _input_stage(spec, x, threads),
        "neurons_only": lambda: compiled.network_scan(nothing, x, steps, count_events=True),
        "run_int64": lambda: sim.run(prepared, x64),
        "run_bool": lambda: sim.run(prepared, x),
        "check_int64": lambda: check_inputs(graph, x64, binary_as_bool=True),
    }
    for f in fns.values():
        f()
    load = OtherLoad()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    per = batch * steps
    ns = {k: 1e9 * statistics.median(v) / per for k, v in cpu.items()}
    wall_ns = {k: 1e9 * statistics.median(v) / per for k, v in times.items()}
    phases = {
        "input stage (binary inputs' projections, all steps)": ns["input_stage"],
        "scanned projections (source scan, event adds, messages)": ns["full"] - ns["no_scanned"],
        "neuron updates + event counts + spike stores": ns["neurons_only"],
        "ready messages added + rest": ns["no_scanned"] - ns["input_stage"] - ns["neurons_only"],
        "of which limit-event counting": ns["full"] - ns["no_counts"],
        "sim.run on bool input, beyond network_scan": ns["run_bool"] - ns["full"],
        "sim.run on int64 input (as bench_sim), beyond network_scan": ns["run_int64"] - ns["full"],
        "of which checking/converting the int64 input": ns["check_int64"],
    }
    return {"network": name, "batch": batch, "steps": steps, "neurons": int(spec.pop_off[-1]),
            "cpu_ns_per_sample_step": ns, "wall_ns_per_sample_step": wall_ns, "phases_cpu_ns": phases,
            "sample_steps_per_s": per / statistics.median(times["full"]), "other_load": load.result()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=["9x200", "conv", "pool"], choices=list(bench_sim.NETWORKS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compiled._set_threads(args.threads)
    rows = []
    for name in args.nets:
        for batch in args.batch:
            steps = max(10, bench_sim.NETWORKS[name][3] // 4) if batch > 1 else bench_sim.NETWORKS[name][2] // 4
            r = profile(name, batch, steps, args.reps)
            rows.append(r)
            full = r["cpu_ns_per_sample_step"]["full"]
            print(f"{name} batch {batch}: {full:.0f} CPU-ns/sample-step ({r['sample_steps_per_s'] / 1e3:.1f}k st/s), "
                  f"{r['neurons']} neurons, other CPUs {r['other_load'].get('other_cpus')}, "
                  f"load {os.getloadavg()[0]:.1f}")
            for k, v in r["phases_cpu_ns"].items():
                print(f"    {k:58s} {v:8.0f} ns  {100 * v / full:5.1f} %")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
