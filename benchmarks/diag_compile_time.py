"""Cold compile time of the training kernels (``snn2hw/nn/spike_dense.py``, ``nn/kernels.py``, ``nn/recurrent_kernels.py``).

CI starts from a fresh clone, so every numba kernel the tests call is compiled once per run (the on-disk
cache is empty). This script measures that cost per use case. Each case runs in two fresh processes:

* **cold**: ``NUMBA_CACHE_DIR`` set to an empty folder; the first call compiles every kernel the case
  needs, the second call is the warm run. ``compile`` = first call - second call (CPU seconds, all
  threads; the process's own import of torch and snn2hw is not counted);
* **cached**: the same folder, now filled; the first call loads the kernels from disk.

It also counts the compiled kernel files (``.nbc``: one per kernel and type signature) each case adds.
Figures are CPU time, so they are comparable under load, but a loaded machine inflates them somewhat
(shared caches); the script records the load average.

    python benchmarks/diag_compile_time.py [--cases spike_linear_f32 lif_f32 ...] [--out FILE]
"""
from __future__ import annotations

import os
import sys

from bench_env import set_thread_env, write_results  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SURROGATES = ["fast_sigmoid", "sigmoid", "arctan", "triangle", "exponential", "gaussian", "boxcar"]
CASES = (["spike_linear_f32", "spike_linear_f64", "spike_linear_narrow_f32", "lif_f32", "lif_f64",
          "lif_all_grads_f32", "recurrent_f32"] + [f"lif_surrogate_{s}" for s in SURROGATES[1:]])


def _case(name: str):
    """A function doing one forward + backward of the case (the kernels it needs compile on its first call)."""
    import torch

    from snn2hw.nn.functional import cuba_lif_sequence, spike_linear
    from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence
    from snn2hw.nn.surrogate import get_surrogate

    dtype = torch.float64 if name.endswith("_f64") else torch.float32
    g = torch.Generator().manual_seed(0)
    batch, steps, n = 4, 50, 256
    x = (torch.rand(batch, steps, n, generator=g) < 0.1).to(dtype)
    m = 10 if "narrow" in name else n
    w = (torch.randn(m, n, generator=g, dtype=dtype) * 0.3).requires_grad_(True)
    surrogate = get_surrogate(name.split("lif_surrogate_")[1] if "surrogate" in name else "fast_sigmoid")
    if name.startswith("spike_linear"):
        return lambda: spike_linear(x, w, mode="sparse").sum().backward()
    a = torch.randn(batch, steps, n, generator=g, dtype=dtype).requires_grad_(True)
    if name.startswith("recurrent"):
        v = (torch.randn(n, n, generator=g, dtype=dtype) * 0.05).requires_grad_(True)
        return lambda: recurrent_cuba_lif_sequence(a, v, 0.0, 0.9, 1.0, None, surrogate=surrogate).sum().backward()
    if name.startswith("lif_all_grads"):
        params = [torch.full((n,), c, dtype=dtype, requires_grad=True) for c in (0.5, 0.9, 1.0, 0.0)]
        return lambda: cuba_lif_sequence(a, *params, surrogate).sum().backward()
    return lambda: cuba_lif_sequence(a, 0.0, 0.9, 1.0, None, surrogate, detach_reset=True).sum().backward()


def _child(name: str) -> dict:
    fn = _case(name)
    times = []
    for _ in range(2):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return {"first_cpu_s": times[0], "second_cpu_s": times[1]}


def _run_child(name: str, cache: str, threads: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, __file__, "--child", name, "--threads", threads], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--threads", default="2")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "diag_compile_time.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    load_before = os.getloadavg()[0]
    rows = []
    print(f"{'case':28s} {'compile s':>10s} {'warm s':>8s} {'cached 1st s':>13s} {'kernels':>8s}")
    for name in args.cases:
        with tempfile.TemporaryDirectory(prefix="snn2hw_numba_cache_") as cache:
            cold = _run_child(name, cache, args.threads)
            files = sum(1 for _ in Path(cache).rglob("*.nbc"))
            cached = _run_child(name, cache, args.threads)
        row = {"case": name, "compile_cpu_s": cold["first_cpu_s"] - cold["second_cpu_s"],
               "warm_cpu_s": cold["second_cpu_s"], "cached_first_cpu_s": cached["first_cpu_s"],
               "compiled_kernels": files}
        rows.append(row)
        print(f"{name:28s} {row['compile_cpu_s']:10.2f} {row['warm_cpu_s']:8.3f} {row['cached_first_cpu_s']:13.3f} "
              f"{files:8d}", flush=True)
    total = sum(r["compile_cpu_s"] for r in rows)
    print(f"total compile CPU {total:.1f} s over {sum(r['compiled_kernels'] for r in rows)} kernel files; load average "
          f"before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    write_results(args.out, "benchmarks/diag_compile_time.py", argv, {"threads": args.threads}, rows, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
