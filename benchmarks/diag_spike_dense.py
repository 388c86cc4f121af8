"""Event-driven spike-input product against the dense GEMM, interleaved in one process.

Two measurements (T = 500, batch 16, 2 threads by default; the ``bench_training.py`` workload):

* ``crossover``: the product alone, forward + weight gradient (x does not require grad), at each N in
  ``--sizes`` and each input density in ``--densities`` (Bernoulli spikes): the dense path
  (``x @ W^T``, autograd's ``g^T x``) against ``snn2hw.nn.functional.spike_linear(mode="sparse")``.
  The density where the ratio crosses 1 is the threshold ``spike_dense.density_limit`` uses.
* ``layer``: the training step of ``bench_training.py``'s feed-forward layer (Linear(N, N) -> LIF,
  loss = sum of spikes, forward + backward) with ``x @ W^T`` against ``spike_linear`` (mode "auto": what
  ``LIFDense`` runs), on spikes at rate ``--rate`` and on a dense Gaussian input (where ``auto`` must
  take the dense path and lose nothing).
* ``parts``: where the event-driven layer step's time goes at each N (spikes at ``--rate``): building the
  row lists (CSR), packing W^T, the forward product kernel, the weight-gradient kernel, the LIF scan's
  forward and backward, against the two dense GEMMs (``x @ W^T``, ``g^T x``) that the floor does.
* ``ab``: the ``bench_training.py`` layer step (``--layer dense`` or ``recurrent``, spikes at ``--rate``) with
  ``spike_linear`` of commit ``--base`` (its ``snn2hw/nn/spike_dense.py``, read with ``git show``) against the
  working tree's, interleaved; checks that spikes and weight gradients are bit-identical.

Implementations alternate within every repetition, so load from other processes affects both alike.
Reports the median CPU time (``time.process_time``: all threads) and wall time of each, their ratio,
and the work done (nonzeros of x against the GEMM's rows x in_features). The weight gradients of the
two must agree to float rounding; the script checks it.

    python benchmarks/diag_spike_dense.py crossover [--sizes 256 1024 4096] [--densities 0.05 0.1 0.2 0.3 0.5]
    python benchmarks/diag_spike_dense.py layer [--sizes 256 512 1024 2048 4096] [--rate 0.1] [--reps 5]
    python benchmarks/diag_spike_dense.py parts [--sizes 2048 4096] [--reps 3]
    python benchmarks/diag_spike_dense.py ab --base 6448c2f [--layer dense] [--sizes 256 512 1024 2048 4096] [--reps 3]
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, set_thread_env, under_load, write_results  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BETA, V_TH = 0.9, 1.0


def _time(fns: dict, reps: int) -> dict:
    for f in fns.values():  # warm-up (and compilation)
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: {"cpu_ms": statistics.median(cpu[k]), "cpu_min_ms": min(cpu[k]), "cpu_max_ms": max(cpu[k]),
                "wall_ms": statistics.median(wall[k])} for k in fns}


def _finish(other, load_before: float, out_path, argv, meta: dict, rows: list) -> None:
    """Print the load line, mark the run as under load where it was, and write the JSON."""
    o = other.result()
    loaded = under_load(o, load_before)
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; other processes "
          f"{o['other_cpus'] or 0:.2f} CPUs{' (UNDER LOAD: compare only the interleaved ratios)' if loaded else ''}")
    write_results(out_path, "benchmarks/diag_spike_dense.py", argv,
                  {**meta, "other_cpus": o["other_cpus"], "under_load": loaded}, rows, load_before)


def _parts(args, sizes, dtype, sur, argv=None) -> int:
    """CPU time of each part of the event-driven layer step, interleaved in every repetition."""
    import numpy as np
    import torch

    from snn2hw.nn import buffer_pool, kernels, spike_dense
    from snn2hw.nn.functional import cuba_lif_sequence

    load_before = os.getloadavg()[0]
    other = OtherLoad()
    rows_out = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(args.batch, args.steps, n, generator=g) < args.rate).to(dtype)
        w = torch.randn(n, n, generator=g, dtype=dtype) / (n * args.rate) ** 0.5
        x2, rows = x.reshape(-1, n), args.batch * args.steps
        grad = torch.randn(rows, n, generator=g, dtype=dtype)
        cb, kc = spike_dense._tile(n, n, x.element_size())
        blocks = -(-n // cb)
        kernels._set_threads()
        csr = spike_dense._csr(x2, 1.0, kc)
        forward = spike_dense._product_kernels(cb)[0]
        packed = np.empty((blocks, n, cb), dtype=x2.numpy().dtype)
        out = buffer_pool.empty((rows, n), dtype)
        grad_w = np.empty((n, n), dtype=x2.numpy().dtype)
        a = (x2 @ w.t()).reshape(x.shape).requires_grad_(True)
        row_jobs = spike_dense._row_jobs(rows, blocks, kernels._threads())

        def lif_backward(a=a):
            a.grad = None
            cuba_lif_sequence(a, 0.0, BETA, V_TH, None, sur, detach_reset=True).sum().backward()

        parts = {"csr (row lists)": lambda: spike_dense._csr(x2, 1.0, kc),
                 "pack W^T": lambda: spike_dense._pack_transposed(w.numpy(), cb, packed),
                 "forward product": lambda: forward(*csr, packed, kc, row_jobs, out.numpy()),
                 "weight-gradient product": lambda: spike_dense._weight_grad(csr, grad.numpy(), (cb, kc), grad_w),
                 "LIF forward": lambda: cuba_lif_sequence(a.detach(), 0.0, BETA, V_TH, None, sur, detach_reset=True),
                 "LIF forward + backward": lif_backward,
                 "dense x @ W^T": lambda: x2 @ w.t(),
                 "dense g^T x": lambda: grad.t() @ x2}
        t = _time(parts, args.reps)
        row = {"n": n, "nonzeros": len(csr[1]), "parts_cpu_ms": {k: v["cpu_ms"] for k, v in t.items()}}
        rows_out.append(row)
        print(f"N={n} ({len(csr[1]):,} nonzeros, tile {kc} x {cb}):")
        for k, v in t.items():
            print(f"  {k:26s} {v['cpu_ms']:9.1f} ms cpu ({v['wall_ms']:8.1f} wall)", flush=True)
    out_path = Path(args.out or REPO / "benchmarks" / "results" / "diag_spike_dense_parts.json")
    _finish(other, load_before, out_path, argv, {"what": "parts", "steps": args.steps, "batch": args.batch,
                                                 "threads": args.threads, "rate": args.rate, "reps": args.reps},
            rows_out)
    return 0


def _base_module(base: str):
    """``snn2hw/nn/spike_dense.py`` as of commit ``base``, imported as its own module (its own kernels)."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(["git", "-C", str(REPO), "show", f"{base}:snn2hw/nn/spike_dense.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="spike_dense_base_")) / "spike_dense_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("spike_dense_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ab(args, sizes, dtype, sur, argv=None) -> int:
    """The layer step with the base commit's spike_linear (A) and the working tree's (B), interleaved."""
    import torch

    from snn2hw.nn import spike_dense
    from snn2hw.nn.functional import cuba_lif_sequence
    from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence

    base = _base_module(args.base)
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    rows_out = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)  # bench_training.py's input and weights
        x = (torch.rand(args.batch, args.steps, n, generator=g) < args.rate).to(dtype)
        w = (torch.randn(n, n, generator=g, dtype=dtype) / (n * args.rate) ** 0.5).requires_grad_(True)
        v = (torch.randn(n, n, generator=g, dtype=dtype) * 0.3 / (n * args.rate) ** 0.5).requires_grad_(True)

        def step(linear):
            w.grad = v.grad = None
            a = linear(x, w)
            if args.layer == "recurrent":
                s = recurrent_cuba_lif_sequence(a, v, 0.0, BETA, V_TH, None, surrogate=sur)
            else:
                s = cuba_lif_sequence(a, 0.0, BETA, V_TH, None, sur, detach_reset=True)
            s.sum().backward()
            return s.detach(), w.grad

        (sa, ga), (sb, gb) = step(base.spike_linear), step(spike_dense.spike_linear)
        identical = bool(torch.equal(sa, sb) and torch.equal(ga, gb))
        t = _time({"base": lambda: step(base.spike_linear), "new": lambda: step(spike_dense.spike_linear)}, args.reps)
        ratio = t["new"]["cpu_ms"] / t["base"]["cpu_ms"]
        rows_out.append({"n": n, "layer": args.layer, "base": t["base"], "new": t["new"], "cpu_ratio_new_over_base": ratio,
                         "bit_identical": identical})
        print(f"N={n:5d} {args.layer}: base {t['base']['cpu_ms']:9.1f} ms cpu ({t['base']['cpu_min_ms']:.0f}.."
              f"{t['base']['cpu_max_ms']:.0f}), new {t['new']['cpu_ms']:9.1f} ({t['new']['cpu_min_ms']:.0f}.."
              f"{t['new']['cpu_max_ms']:.0f}): new/base {ratio:.3f}; spikes and dW "
              f"{'bit-identical' if identical else 'DIFFER'}", flush=True)
    out_path = Path(args.out or REPO / "benchmarks" / "results" / f"diag_spike_dense_ab_{args.layer}.json")
    _finish(other, load_before, out_path, argv, {"what": "ab", "base": args.base, "layer": args.layer,
                                                 "steps": args.steps, "batch": args.batch, "threads": args.threads,
                                                 "rate": args.rate, "reps": args.reps}, rows_out)
    return 0 if all(r["bit_identical"] for r in rows_out) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["crossover", "layer", "parts", "ab"])
    p.add_argument("--base", default="6448c2f", help="ab: the commit whose spike_dense.py is compared")
    p.add_argument("--layer", choices=["dense", "recurrent"], default="dense", help="ab: the layer step")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from snn2hw.nn.functional import cuba_lif_sequence, spike_linear
    from snn2hw.nn.surrogate import FastSigmoid

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    sizes = args.sizes or ([256, 1024, 4096] if args.what == "crossover" else [256, 512, 1024, 2048, 4096])
    sur = FastSigmoid(10.0)
    if args.what == "parts":
        return _parts(args, sizes, dtype, sur, argv)
    if args.what == "ab":
        return _ab(args, sizes, dtype, sur, argv)
    rows_out = []
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, args.steps, n)
        w = (torch.randn(n, n, generator=g, dtype=dtype) / (n * args.rate) ** 0.5).requires_grad_(True)
        if args.what == "crossover":
            grad_out = torch.randn(shape, generator=g, dtype=dtype)
            inputs = [(f"{d:g}", (torch.rand(shape, generator=g) < d).to(dtype)) for d in args.densities]
        else:
            inputs = [(f"spikes {args.rate:g}", (torch.rand(shape, generator=g) < args.rate).to(dtype)),
                      ("dense gaussian", torch.randn(shape, generator=g, dtype=dtype))]
        for label, x in inputs:
            if args.what == "crossover":
                def dense(x=x):
                    w.grad = None
                    (x @ w.t()).backward(grad_out)
                    return w.grad

                def event(x=x):
                    w.grad = None
                    spike_linear(x, w, mode="sparse").backward(grad_out)
                    return w.grad
            else:
                def dense(x=x):
                    w.grad = None
                    cuba_lif_sequence(x @ w.t(), 0.0, BETA, V_TH, None, sur, detach_reset=True, delay=1).sum().backward()
                    return w.grad

                def event(x=x):
                    w.grad = None
                    cuba_lif_sequence(spike_linear(x, w), 0.0, BETA, V_TH, None, sur, detach_reset=True,
                                      delay=1).sum().backward()
                    return w.grad
            gd, ge = dense().clone(), event().clone()
            err = float((gd - ge).abs().max() / gd.abs().max().clamp_min(1e-30))
            t = _time({"dense": dense, "event": event}, args.reps)
            nnz = int(torch.count_nonzero(x))
            row = {"n": n, "input": label, "density": nnz / x.numel(), "nonzeros": nnz, "gemm_terms": x.numel(),
                   "dense": t["dense"], "event": t["event"], "cpu_ratio_event_over_dense":
                   t["event"]["cpu_ms"] / t["dense"]["cpu_ms"], "wall_ratio_event_over_dense":
                   t["event"]["wall_ms"] / t["dense"]["wall_ms"], "weight_grad_max_rel_diff": err}
            rows_out.append(row)
            print(f"N={n:5d} {label:>15s} density {row['density']:.3f}: dense {t['dense']['cpu_ms']:9.1f} ms cpu "
                  f"({t['dense']['wall_ms']:8.1f} wall), event {t['event']['cpu_ms']:9.1f} ms cpu "
                  f"({t['event']['wall_ms']:8.1f} wall): event/dense cpu {row['cpu_ratio_event_over_dense']:.3f} "
                  f"wall {row['wall_ratio_event_over_dense']:.3f}; dW rel diff {err:.1e}", flush=True)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"diag_spike_dense_{args.what}.json")
    _finish(other, load_before, out, argv, {"what": args.what, "steps": args.steps, "batch": args.batch,
                                            "threads": args.threads, "dtype": args.dtype, "reps": args.reps,
                                            "torch": torch.__version__}, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
