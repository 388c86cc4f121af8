"""onnxruntime on the exported integer sequence model against snn2hw's bit-accurate simulator.

Same network, same inputs, same batch, same process, same thread count: the demo network (scikit-learn
digits, 64-128-10 CUBA-LIF, compiled to Loihi 2 fixed point; untrained weights -- speed does not depend on
training, and the weights are the demo recipe's initialisation), a 1000-1000-10 dense network and a conv
network (1x16x16 -> conv 3x3 (8 ch, pad 1) -> sum pool 2x2 -> dense 10), at batch 1 and 256.

* simulator: ``snn2hw.backends.sim.run(..., count_events=False)`` (its fastest documented use; it records
  the output spikes);
* onnxruntime: ``InferenceSession`` (CPU provider, all graph optimisations, ``intra_op_num_threads`` =
  ``--threads``) on ``export_integer(..., kind="sequence")``, which outputs the spikes of every population.

Each configuration: one warm-up run each (the simulator's numba kernels load, onnxruntime builds its
session before timing), then ``--reps`` interleaved timed runs of both; reported: median and min/max of
sample-steps/s and the ratio onnxruntime / simulator. The output spikes of the two are checked equal in
the same run. The JSON records load averages, versions and the machine; the machine is shared, so runs
taken at a load above the core count are marked ``under_load``.

    python benchmarks/bench_onnx_runtime.py [--reps 5] [--threads 2] [--steps 100]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from snn2hw.backends import sim  # noqa: E402
from snn2hw.compiler import compile_graph  # noqa: E402
from snn2hw.onnx import export_integer  # noqa: E402
from snn2hw.onnx.runtime import run_sequence, session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def networks() -> dict:
    from snn2hw.models import digits
    from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
    from snn2hw.nn.layers import LIFDense, SpikingSequential

    torch.manual_seed(0)
    conv = ConvLIF((1, 16, 16), 8, 3, padding=1, du=0.25, dv=0.1, v_th=1.0, weight_gain=3.0)
    nets = {
        "demo 64-128-10": digits.build_model(0),
        "1000-1000-10": SpikingSequential.build([1000, 1000, 10], du=0.25, dv=0.1, weight_gain=3.0),
        "conv 16x16": SpikingSequential([conv, SumPoolLIF(conv.out_shape, 2, v_th=1.5), Flatten(),
                                         LIFDense(8 * 8 * 8, 10, weight_gain=3.0)]),
    }
    return {k: compile_graph(m.to_ir()) for k, m in nets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--out", default=str(RESULTS / "onnx_runtime.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    rng = np.random.default_rng(0)
    for name, art in networks().items():
        model = export_integer(art)
        sess = session(model, threads=args.threads)
        n_in = art.graph.inputs[0].size
        out = art.graph.outputs[0]
        for batch in args.batches:
            x = (rng.random((batch, args.steps, n_in)) < 0.2).astype(np.int64)
            ref = sim.run(art, x, count_events=False)  # warm-up (numba kernels)
            got = run_sequence(model, x, sess=sess)  # warm-up
            equal = bool(np.array_equal(ref.spikes[out], got.spikes[out]))
            times = {"sim": [], "onnxruntime": []}
            for _ in range(args.reps):  # interleaved
                t0 = time.perf_counter()
                sim.run(art, x, count_events=False)
                times["sim"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run_sequence(model, x, sess=sess)
                times["onnxruntime"].append(time.perf_counter() - t0)
            work = batch * args.steps
            row = {"network": name, "batch": batch, "steps": args.steps, "spikes_equal": equal,
                   "output_spikes": int(ref.spikes[out].sum())}
            for k, ts in times.items():
                row[k] = {"median_sample_steps_per_s": work / float(np.median(ts)),
                          "min_sample_steps_per_s": work / max(ts), "max_sample_steps_per_s": work / min(ts),
                          "median_s": float(np.median(ts))}
            row["ratio_onnxruntime_over_sim"] = (row["onnxruntime"]["median_sample_steps_per_s"]
                                                 / row["sim"]["median_sample_steps_per_s"])
            load = os.getloadavg()[0]
            row["load_average"] = load
            row["under_load"] = load > (os.cpu_count() or 1)
            rows.append(row)
            print(f"{name:16s} batch {batch:4d}: sim {row['sim']['median_sample_steps_per_s']:10.0f} "
                  f"onnxruntime {row['onnxruntime']['median_sample_steps_per_s']:10.0f} sample-steps/s "
                  f"(ratio {row['ratio_onnxruntime_over_sim']:.3f}, spikes equal: {equal}, load {load:.1f})",
                  flush=True)
    meta = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "threads": args.threads,
            "cpus": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("\n| network | batch | sim sample-steps/s | onnxruntime sample-steps/s | ratio ort/sim | equal | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['batch']} | {r['sim']['median_sample_steps_per_s']:.0f} | "
              f"{r['onnxruntime']['median_sample_steps_per_s']:.0f} | {r['ratio_onnxruntime_over_sim']:.3f} | "
              f"{r['spikes_equal']} | {r['load_average']:.1f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
