"""CPU of one Lava run with and without the remembered ProcessModel search (backends/lava/runner.py).

Lava's compiler executes every module of a process's package directory again to find its models, for every
process of every run; the backend remembers the answer per Process class during its runs. This A/B runs the
same random bundles as ``tests/test_differential.py`` (three random graphs merged into one Lava run), each
once with the search remembered and once with Lava's own search, interleaved, and prints the CPU seconds of
the Python process alone (what the change touches) and with its Lava child processes (user + sys, noisy:
they poll), median over the bundles after the first:

    .venv/bin/python benchmarks/diag_lava_model_search.py --bundles 8

Spikes and states of both runs must be equal (checked). Quiet machine: about a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def cpu_seconds() -> tuple[float, float]:
    """(this process, this process + its finished Lava child processes), user + sys."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = own.ru_utime + own.ru_stime
    return mine, mine + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundles", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diag_lava_model_search.json"))
    args = ap.parse_args()

    import numpy as np
    from hypothesis import HealthCheck, given, settings
    from test_differential import bundles, merge

    from snn2hw.backends import lava as lava_backend
    from snn2hw.backends.lava import runner

    examples = []

    @settings(max_examples=args.bundles, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(bundles())
    def collect(bundle):
        examples.append(bundle)

    collect()
    remembered = runner._remembered_model_search
    rows = []
    for graphs, xs in examples:
        merged = merge(graphs)
        steps = max(a.shape[1] for x in xs for a in x.values())
        x = {f"g{k}.{n}": np.pad(a, ((0, 0), (0, steps - a.shape[1]), (0, 0)))
             for k, xx in enumerate(xs) for n, a in xx.items()}
        every = [p.name for p in merged.populations]
        row = {"processes": len(merged.inputs) + len(merged.populations) + len(merged.projections), "steps": steps}
        results = {}
        for variant in ("lava_search", "remembered"):  # remembered second: its per-class memo is filled already
            runner._remembered_model_search = remembered if variant == "remembered" else contextlib.nullcontext
            t, (m, c) = time.perf_counter(), cpu_seconds()
            results[variant] = lava_backend.run(merged, x, record=every, record_state=every)
            m2, c2 = cpu_seconds()
            row[variant] = {"main_cpu_s": round(m2 - m, 3), "cpu_s": round(c2 - c, 3),
                            "wall_s": round(time.perf_counter() - t, 3)}
        runner._remembered_model_search = remembered
        a, b = results["lava_search"], results["remembered"]
        for kind in ("spikes", "u", "v"):
            for name in getattr(a, kind):
                assert np.array_equal(getattr(a, kind)[name], getattr(b, kind)[name]), (kind, name)
        rows.append(row)
        ls, rm = row["lava_search"], row["remembered"]
        print(f"{row['processes']:3d} processes {steps:3d} steps: main process {ls['main_cpu_s']:5.2f} -> "
              f"{rm['main_cpu_s']:5.2f} CPU-s; with Lava's processes {ls['cpu_s']:5.2f} -> {rm['cpu_s']:5.2f}", flush=True)
    rest = rows[1:] or rows  # the first bundle fills the per-class memo
    med = {f"{v}_{k}": statistics.median(r[v][k] for r in rest) for v in ("lava_search", "remembered")
           for k in ("main_cpu_s", "cpu_s")}
    saved = statistics.median((r["lava_search"]["main_cpu_s"] - r["remembered"]["main_cpu_s"]) / r["processes"]
                              for r in rest)
    print(f"median over bundles 2..: main process {med['lava_search_main_cpu_s']:.2f} -> "
          f"{med['remembered_main_cpu_s']:.2f} CPU-s, with Lava's processes {med['lava_search_cpu_s']:.2f} -> "
          f"{med['remembered_cpu_s']:.2f}; main-process CPU saved per Lava process {1000 * saved:.0f} ms "
          f"(load average {os.getloadavg()[0]:.1f})")
    Path(args.out).write_text(json.dumps({"rows": rows, "median_cpu_s": med, "saved_main_cpu_s_per_process": saved,
                                          "loadavg": os.getloadavg(), "under_load": os.getloadavg()[0] > os.cpu_count()},
                                         indent=1))


if __name__ == "__main__":
    main()
