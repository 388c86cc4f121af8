"""The spike-train rules' two compiled time scans, this checkout against another, interleaved in ONE process.

Loads ``snn2hw/learning/spsp_kernels.py`` of ``--base`` (an unpacked older commit, e.g.
``git archive 127d444 | tar -x -C /tmp/base``) next to this checkout's and times, one after the other,
``--reps`` times, on the same inputs (batch 16, a third of the neurons silent and given one virtual spike,
2 % of the rest spiking per step):

* ``fwd``: the forward LIF scan (``lif_scan_chunk``) with HM2-BP's time-weighted current sum;
* ``adj``: the reverse S-PSP scan (``adjoint_scan_chunk``) with virtual spikes and the coefficient scale, as
  a dense first layer's backward runs it.

Reports the median CPU time (``time.process_time``, one thread) of each and the new/base ratio. Both modules
compile into ``NUMBA_CACHE_DIR``: point it at an empty directory of its own (a cache shared with
another run of the base module fails to load).

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/diag_spsp_scan_ab.py --base /tmp/base --sizes 100 800 --T 400
"""
from __future__ import annotations

from bench_env import set_thread_env  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="root of the other checkout (holds snn2hw/learning/spsp_kernels.py)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 800])
    ap.add_argument("--T", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=11)
    a = ap.parse_args(argv)
    import torch

    import snn2hw.learning.spsp_kernels as new
    from snn2hw.learning.spsp import NeuronSpec

    torch.set_num_threads(1)
    spec_ = importlib.util.spec_from_file_location("base_spsp_kernels",
                                                   Path(a.base) / "snn2hw" / "learning" / "spsp_kernels.py")
    base = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(base)
    batch, steps = a.batch, a.T
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| neurons | scan | base CPU ms | new CPU ms | new / base |\n|---|---|---|---|---|")
    for n in a.sizes:
        g = torch.Generator().manual_seed(0)
        cur = torch.rand(batch, steps, n, generator=g) * 0.6
        post = torch.rand(batch, steps, n, generator=g) < 0.02
        post[:, :, :n // 3] = False
        virtual = torch.zeros(batch, n)
        virtual[:, :n // 3] = 1
        spec = NeuronSpec(torch.tensor(0.75), torch.tensor(0.9), torch.tensor(1.0), None, 0)
        scale = torch.randn(batch, n, generator=g)

        def fwd(m):
            acc = torch.zeros(batch, n, dtype=torch.float64)
            m.lif_scan_chunk(cur, spec, {}, torch.empty(batch, steps, n, dtype=torch.bool), acc, None,
                             torch.zeros_like(acc), torch.ones(steps, 1), torch.zeros_like(acc))

        def adj(m):
            sums = torch.zeros(2, batch, n, dtype=torch.float64)
            m.adjoint_scan_chunk(post, 0, steps, spec, torch.float32, {}, sums[0], sums[1], virtual=virtual,
                                 scale=scale)

        for f in (fwd, adj):
            times: dict = {base: [], new: []}
            for m in times:
                f(m)  # compile / warm up
            for _ in range(a.reps):
                for m in times:
                    c0 = time.process_time()
                    f(m)
                    times[m].append(1e3 * (time.process_time() - c0))
            old_ms, new_ms = statistics.median(times[base]), statistics.median(times[new])
            print(f"| {n} | {f.__name__} | {old_ms:.2f} | {new_ms:.2f} | {new_ms / old_ms:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
