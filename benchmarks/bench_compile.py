"""Compile-path time against network size: export (model -> NIR file), import (NIR -> IR), compile (all
passes: normalize, legalize, quantize, allocate, lower) and save (the artefact), for dense
n-n-n networks of 0.1M to 10M synapses.

    python benchmarks/bench_compile.py                 # prints a table, writes benchmarks/results/compile.json
    python benchmarks/bench_compile.py --sizes 0.1 1   # millions of synapses
    python benchmarks/bench_compile.py --repeats 3

Each stage is timed on its own (median and spread over ``--repeats``); sizes are interleaved over
repeats so that a change in machine load hits all of them alike. The JSON records load averages at
start and end, the versions and the machine; runs with a load average above the core count are
marked "under load". Targets (issue 10): < 1 s at 1M synapses, < 10 s at 10M, linear growth.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import snn2hw  # noqa: E402
from snn2hw import artefact, nir_io  # noqa: E402
from snn2hw.compiler import compile_graph  # noqa: E402
from snn2hw.nn.layers import SpikingSequential  # noqa: E402

STAGES = ("export", "import", "compile", "save")


def one_run(n: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = SpikingSequential.build([n, n, n], du=0.25, dv=0.1, v_th=1.0)
    t = {}
    t0 = time.perf_counter()
    nir_io.write(model.to_ir(1e-3), workdir / "m.nir")
    t["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = nir_io.read(workdir / "m.nir", dt=1e-3)
    t["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    art = compile_graph(graph)
    t["compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    artefact.save(art, workdir / "m.npz")
    t["save"] = time.perf_counter() - t0
    t["total"] = sum(t[s] for s in STAGES)
    t["passes"] = {e["pass"]: e["seconds"] for e in art.provenance["passes"]}
    t["synapses"] = art.resources["synapses"]
    t["cores"] = art.resources["cores"]
    t["artefact_bytes"] = (workdir / "m.npz").stat().st_size
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.3, 1, 3, 10], help="millions of synapses")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/compile.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    widths = [max(2, round(math.sqrt(s * 1e6 / 2))) for s in a.sizes]  # n-n-n: 2 n^2 synapses
    load_start = os.getloadavg()
    runs: dict[int, list[dict]] = {n: [] for n in widths}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(widths[0], Path(tmp))  # warm-up (imports, allocator)
        for _ in range(a.repeats):
            for n in widths:  # interleaved
                runs[n].append(one_run(n, Path(tmp)))
    load_end = os.getloadavg()
    cores = os.cpu_count() or 1
    rows = []
    for n in widths:
        r = runs[n]
        row = {"width": n, "synapses": r[0]["synapses"], "cores": r[0]["cores"], "artefact_bytes": r[0]["artefact_bytes"]}
        for s in (*STAGES, "total"):
            vals = [x[s] for x in r]
            row[s] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        row["passes_median"] = {p: statistics.median(x["passes"][p] for x in r) for p in r[0]["passes"]}
        rows.append(row)
    under_load = max(load_start[0], load_end[0]) > cores
    result = {
        "benchmark": "export + import + compile + save of dense n-n-n networks",
        "rows": rows, "repeats": a.repeats,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": cores,
                    "load_avg_start": load_start, "load_avg_end": load_end, "under_load": under_load},
        "versions": {"snn2hw": snn2hw.__version__, "numpy": np.__version__, "torch": torch.__version__},
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()},
    }
    print(f"compile path vs size (median of {a.repeats}; load {load_start[0]:.1f} -> {load_end[0]:.1f} on {cores} cores"
          f"{', UNDER LOAD' if under_load else ''})")
    print(f"{'synapses':>10} {'cores':>5} {'export':>8} {'import':>8} {'compile':>8} {'save':>8} {'total':>8} "
          f"{'s/Msyn':>7} {'MB':>6}")
    for r in rows:
        m = {s: r[s]["median"] for s in (*STAGES, "total")}
        print(f"{r['synapses']:>10} {r['cores']:>5} " + " ".join(f"{m[s]:>8.3f}" for s in (*STAGES, "total"))
              + f" {m['total'] / (r['synapses'] / 1e6):>7.3f} {r['artefact_bytes'] / 1e6:>6.1f}")
    out = Path(a.out)
    artefact.atomic_write_bytes(out, lambda f: f.write(json.dumps(result, indent=2).encode()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
