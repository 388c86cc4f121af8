"""The compiled LIF training kernels (``snn2hw/nn/kernels.py``), this checkout against another, interleaved in ONE process.

Loads ``snn2hw/nn/kernels.py`` of ``--base`` (an unpacked older commit, e.g.
``mkdir /tmp/base && git archive 6448c2f | tar -x -C /tmp/base``) next to this checkout's and calls each
kernel of both, one after the other, ``--reps`` times on the same inputs (batch 16, T steps, N neurons, as
the training benchmark's layer). Cases, each a set of options the layers use:

* ``fwd``: the forward scan (alpha = 0 or not, bias or not; u and v not recorded, as in training);
* ``bwd ...``: the backward pass for a surrogate, detached reset or not, alpha = 0 or not, the gradients
  it receives (``s``: spikes only; ``suv``: spikes, u and v, as ``return_state=True``) and the ones it must
  return (``a``: the input only; ``a+beta+vth`` etc.).

Reports the median CPU time (``time.process_time``, one thread) of each and the new/base ratio, and checks
that both give the same outputs (bit for bit). Both modules compile into ``NUMBA_CACHE_DIR``: point it at an
empty directory of its own (a cache shared with another run of the base module fails to load).

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/diag_lif_kernel_ab.py --base /tmp/base [--n 512] [--T 500] [--only bwd]
"""
from __future__ import annotations

import sys

from bench_env import set_thread_env, write_results  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (name, surrogate, detach_reset, alpha_is_zero, incoming gradients, gradients needed (a, alpha, beta, v_th, bias))
BACKWARD_CASES = [
    ("bwd fast_sigmoid detach alpha=0 s->a", "fast_sigmoid", True, True, "s", (True, False, False, False, False)),
    ("bwd fast_sigmoid alpha s->a", "fast_sigmoid", False, False, "s", (True, False, False, False, False)),
    ("bwd arctan detach alpha s->a", "arctan", True, False, "s", (True, False, False, False, False)),
    ("bwd sigmoid alpha=0 s->a", "sigmoid", False, True, "s", (True, False, False, False, False)),
    ("bwd custom(kind 0) alpha s->a", "custom", False, False, "s", (True, False, False, False, False)),
    ("bwd fast_sigmoid alpha s->a+beta+vth", "fast_sigmoid", False, False, "s", (True, False, True, True, False)),
    ("bwd fast_sigmoid detach alpha s->all", "fast_sigmoid", True, False, "s", (True, True, True, True, True)),
    ("bwd fast_sigmoid alpha suv->a+beta", "fast_sigmoid", False, False, "suv", (True, False, True, False, False)),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="root of the other checkout (holds snn2hw/nn/kernels.py)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", nargs="+", default=None, help="run only the cases whose name contains one of these")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "diag_lif_kernel_ab.json"))
    a = ap.parse_args(argv)
    import torch

    import snn2hw.nn.kernels as new
    from snn2hw.nn.surrogate import FastSigmoid, get_surrogate

    torch.set_num_threads(1)
    spec_ = importlib.util.spec_from_file_location("base_nn_kernels", Path(a.base) / "snn2hw" / "nn" / "kernels.py")
    base = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(base)
    batch, steps, n = a.batch, a.T, a.n
    g = torch.Generator().manual_seed(0)
    inp = torch.randn(batch, steps, n, generator=g) * 0.6 + 0.15
    alpha = torch.rand(n, generator=g) * 0.9
    beta = torch.rand(n, generator=g) * 0.8 + 0.15
    vth = torch.tensor(1.0)
    bias = torch.randn(n, generator=g) * 0.05
    zero = torch.tensor(0.0)
    v_pre = inp.clone()  # a v_pre sequence with ~15 % of the values above threshold
    u_all = torch.randn(batch, steps, n, generator=g)
    g_s, g_u, g_v = (torch.randn(batch, steps, n, generator=g) for _ in range(3))
    custom = type("CustomFastSigmoid", (FastSigmoid,), {})(scale=10.0)

    def fwd_case(alpha_zero, with_bias):
        def run(m):
            out = m.lif_forward(inp, zero if alpha_zero else alpha, beta, vth, bias if with_bias else None,
                                alpha_zero, False, False)
            return [t.clone() for t in out[:2]]
        return run

    def bwd_case(sur, detach, alpha_zero, grads, need):
        surrogate = custom if sur == "custom" else get_surrogate(sur)

        def run(m):
            gs, gu, gv = (g_s, g_u, g_v) if grads == "suv" else (g_s, None, None)
            grad_a, sums = m.lif_backward(v_pre, surrogate, gs, gu, gv, u_all if need[1] else None,
                                          zero if alpha_zero else alpha, beta, vth, detach, alpha_zero, need)
            # only the sums the caller keeps (rows alpha, beta, v_th, bias)
            return [grad_a.clone()] + [sums[i] for i in range(4) if need[1 + i]]
        return run

    cases = [(f"fwd alpha={'0' if az else 'a'} bias={int(wb)}", fwd_case(az, wb)) for az, wb in
             ((True, False), (False, True))]
    cases += [(name, bwd_case(*opts)) for name, *opts in BACKWARD_CASES]
    if a.only:
        cases = [(name, f) for name, f in cases if any(o in name for o in a.only)]
    load_before = os.getloadavg()[0]
    print(f"batch {batch}, T {steps}, n {n}, 1 thread, {a.reps} interleaved repetitions; load average {load_before:.1f}")
    print("| case | base CPU ms | new CPU ms | new / base | outputs equal |\n|---|---|---|---|---|")
    rows = []
    for name, f in cases:
        times: dict = {base: [], new: []}
        outs = {m: f(m) for m in times}  # compile / warm up
        equal = all(torch.equal(x, y) for x, y in zip(outs[base], outs[new]))
        for r in range(a.reps):
            for m in (times if r % 2 == 0 else list(times)[::-1]):  # alternate which goes first
                c0 = time.process_time()
                f(m)
                times[m].append(1e3 * (time.process_time() - c0))
        old_ms, new_ms = statistics.median(times[base]), statistics.median(times[new])
        rows.append({"case": name, "base_cpu_ms": old_ms, "new_cpu_ms": new_ms, "ratio": new_ms / old_ms,
                     "base_range_ms": [min(times[base]), max(times[base])],
                     "new_range_ms": [min(times[new]), max(times[new])], "outputs_equal": equal})
        print(f"| {name} | {old_ms:.2f} | {new_ms:.2f} | {new_ms / old_ms:.3f} | {equal} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    write_results(a.out, "benchmarks/diag_lif_kernel_ab.py", argv,
                  {"batch": batch, "T": steps, "n": n, "reps": a.reps, "threads": 1, "base": str(a.base)}, rows,
                  load_before)
    return 0 if all(r["outputs_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
