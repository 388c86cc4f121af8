"""Old against new training kernels, interleaved in one process: where snn2hw's time above the GEMM floor goes.

Loads ``snn2hw/nn/kernels.py`` as it is at a git revision (``--base``, default ``main``) next to the
working tree's, and times, interleaved, one after the other in each of ``--reps`` rounds (T = 500,
batch 16, 2 threads, the ``bench_training.py`` feed-forward workload: Linear(N, N) -> LIF, loss =
sum(spikes)):

* ``floor``: the two GEMMs (``x @ W^T`` and the weight gradient from a precomputed output gradient);
* ``base step`` / ``new step``: the whole training step with the base's / the working tree's kernels
  (``snn2hw.nn.functional`` switched between the two modules);
* ``base backward`` / ``new backward``: the LIF backward kernel alone, fed the expanded gradient of
  ``s.sum()`` as autograd passes it;
* ``forward``: the LIF forward kernel alone.

Reports the median wall time and the median CPU time (``time.process_time``: all threads, system time
included) with their ratios to the floor, and the median count of minor page faults per call (first
touches of fresh pages: about 3 us of CPU each on the CI machine's VM; the LIF kernels take their large
outputs from ``snn2hw.nn.buffer_pool`` to avoid them). On a loaded machine the CPU times are the steadier
figures.
The weight gradients of both steps must be equal, and the script says whether they are.

    python benchmarks/diag_training_kernels.py [--n 1024] [--base main] [--reps 9] [--surrogate fast_sigmoid]
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, cpu_model, set_thread_env, under_load  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_base_kernels(ref: str):
    """``snn2hw/nn/kernels.py`` at git revision ``ref``, imported as a separate module (its own numba cache)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:snn2hw/nn/kernels.py"], check=True,
                            capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="snn2hw_base_kernels_"))
    path = folder / "base_kernels.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base", default="main", help="git revision whose kernels.py is the baseline")
    p.add_argument("--surrogate", default="fast_sigmoid")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "diag_training_kernels.json"))
    args = p.parse_args(argv)

    import torch

    from snn2hw.nn import functional as F
    from snn2hw.nn import kernels as new_kernels
    from snn2hw.nn.surrogate import get_surrogate

    torch.set_num_threads(args.threads)
    base_kernels = load_base_kernels(args.base)
    sur = get_surrogate(args.surrogate)
    n, batch, steps = args.n, args.batch, args.steps
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, steps, n, generator=g) < 0.1).float()
    w = (torch.randn(n, n, generator=g) / (n * 0.1) ** 0.5).requires_grad_(True)
    grad_out = torch.randn(batch, steps, n, generator=g)
    beta, v_th = torch.tensor(0.9), torch.tensor(1.0)
    a0 = (x @ w.t()).detach()
    v_pre = new_kernels.lif_forward(a0, None, beta, v_th, None, True, False, False)[0]
    g_s = torch.ones(()).expand(batch, steps, n)  # what s.sum() hands back

    def floor():
        w.grad = None
        (x @ w.t()).backward(grad_out)

    def step(module):
        def run():
            F.kernels = module
            try:
                w.grad = None
                F.cuba_lif_sequence(x @ w.t(), 0.0, 0.9, 1.0, None, sur, detach_reset=True).sum().backward()
            finally:
                F.kernels = new_kernels
            return w.grad
        return run

    def backward(module):
        return lambda: module.lif_backward(v_pre, sur, g_s, None, None, None, None, beta, v_th, True, True,
                                           (True, False, False, False, False))

    fns = {"floor": floor, "base step": step(base_kernels), "new step": step(new_kernels),
           "base backward": backward(base_kernels), "new backward": backward(new_kernels),
           "forward": lambda: new_kernels.lif_forward(a0, None, beta, v_th, None, True, False, False)}
    equal = torch.equal(fns["base step"]().clone(), fns["new step"]().clone())
    for f in fns.values():  # warm-up (and compilation)
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    load_before = os.getloadavg()[0]
    other = OtherLoad()
    for _ in range(args.reps):
        for k, f in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    o = other.result()
    loaded = under_load(o, load_before)
    rows = {k: {"wall_ms": statistics.median(wall[k]), "wall_min_ms": min(wall[k]), "wall_max_ms": max(wall[k]),
                "cpu_ms": statistics.median(cpu[k]), "minor_faults": statistics.median(faults[k])} for k in fns}
    fw, fc = rows["floor"]["wall_ms"], rows["floor"]["cpu_ms"]
    print(f"N={n} T={steps} batch={batch} threads={args.threads} surrogate={sur.name} base={args.base} "
          f"reps={args.reps}; other processes {o['other_cpus'] or 0:.2f} CPUs{' (UNDER LOAD)' if loaded else ''}")
    print(f"{'':15s} {'wall ms':>9s} {'min..max':>17s} {'x floor':>8s} {'cpu ms':>9s} {'x floor':>8s} {'faults':>7s}")
    for k, r in rows.items():
        print(f"{k:15s} {r['wall_ms']:9.1f} {r['wall_min_ms']:8.1f}..{r['wall_max_ms']:<8.1f} {r['wall_ms'] / fw:8.2f} "
              f"{r['cpu_ms']:9.1f} {r['cpu_ms'] / fc:8.2f} {r['minor_faults']:7.0f}")
    print(f"weight gradients of the two steps equal: {equal}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"n": n, "steps": steps, "batch": batch, "threads": args.threads,
                                        "surrogate": sur.name, "base": args.base, "reps": args.reps,
                                        "torch": torch.__version__, "cpu_model": cpu_model(),
                                        "load_average_1min_before": load_before, "other_cpus": o["other_cpus"],
                                        "under_load": loaded, "weight_grads_equal": equal},
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
