"""The simulator as it is at a git revision against the working tree's, interleaved in one process.

Loads ``snn2hw/hw/loihi2.py``, ``snn2hw/hw/compiled.py`` (or the ``compiled`` package) and
``backends/sim/simulator.py`` at ``--base`` (default ``main``) as a separate package (its own numba cache) next to the working tree's, prepares each
``bench_sim.py`` network once with both, and times ``run(prepared, x)`` (default options: limit events
counted) alternately, ``--reps`` rounds, at batch 256 (``--batch``) with ``bench_sim --quick``'s steps.
Reports the median wall and CPU time (``time.process_time``: all threads) of each and their ratio; on a
loaded machine the CPU times are the steadier figures. Spikes and event counts of both must be equal, and
the script says whether they are. The load (other processes' CPU time) is recorded.

    python benchmarks/diag_sim_ab.py [--base main] [--nets 9x200 conv pool] [--reps 7] [--batch 256] [--bool]
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, set_thread_env  # noqa: E402  (imports no torch)

set_thread_env(sys.argv)

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_sim  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.hw import compiled  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# file at the base revision -> module name in the base package, and the imports rewritten to it
_BASE_FILES = {"snn2hw/hw/loihi2.py": "loihi2", "snn2hw/hw/compiled.py": "compiled",
               "backends/sim/simulator.py": "simulator"}
_REWRITES = (("from snn2hw.hw import loihi2", "from snn2hw_base import loihi2"),
             ("from snn2hw.hw import compiled", "from snn2hw_base import compiled"),
             ("snn2hw.hw.compiled", "snn2hw_base.compiled"))  # the package (since its split) imports itself


def load_base_simulator(ref: str):
    """The simulator module of git revision ``ref``, with that revision's formulas and kernels.

    The files go to a folder named after the commit, written once: numba's cache beside them (keyed on
    each file's path and modification time) then stays warm for the next comparison with that commit,
    instead of compiling the base's kernels cold every time (minutes on a loaded machine)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", f"{ref}^{{commit}}"], check=True, capture_output=True,
                         text=True).stdout.strip()
    folder = Path(tempfile.gettempdir()) / f"snn2hw_base_sim_{sha}"
    if folder.is_dir():  # renamed into place only once complete
        sys.path.insert(0, str(folder))
        return importlib.import_module("snn2hw_base.simulator")
    folder = Path(tempfile.mkdtemp(prefix=f"snn2hw_base_sim_{sha}.partial."))
    pkg = folder / "snn2hw_base"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    files = dict(_BASE_FILES)
    listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{ref}:snn2hw/hw/compiled/"],
                            capture_output=True, text=True)
    if listed.returncode == 0:  # a revision after compiled.py became a package
        del files["snn2hw/hw/compiled.py"]
        (pkg / "compiled").mkdir()
        files.update({f"snn2hw/hw/compiled/{f}": f"compiled/{f[:-3]}" for f in listed.stdout.split() if f.endswith(".py")})
    for path, name in files.items():
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{path}"], check=True, capture_output=True,
                              text=True).stdout
        for old, new in _REWRITES:
            text = text.replace(old, new)
        (pkg / f"{name}.py").write_text(text)
    final = Path(tempfile.gettempdir()) / f"snn2hw_base_sim_{sha}"
    try:
        folder.rename(final)  # atomic: another run that got there first keeps its folder
        folder = final
    except OSError:
        pass
    sys.path.insert(0, str(folder))
    return importlib.import_module("snn2hw_base.simulator")


def compare(name: str, base_sim, batch: int, reps: int, as_bool: bool = False) -> dict:
    graph = bench_sim.calibrate(bench_sim.build(name))
    _, _, steps_b1, steps_bn = bench_sim.NETWORKS[name]
    steps = max(10, steps_bn // 4) if batch > 1 else steps_b1 // 4
    x = bench_sim.spikes_in(graph, batch, steps, seed=3)
    if as_bool:  # the same spikes as bool (bench_sim's "256 bool" row)
        x = x != 0
    impls = {"base": (base_sim, base_sim.prepare(graph)), "new": (sim, sim.prepare(graph))}
    results = {k: m.run(p, x) for k, (m, p) in impls.items()}  # warm-up (loads or compiles the kernels)
    equal = all(np.array_equal(np.asarray(results["base"].spikes[k]), np.asarray(results["new"].spikes[k]))
                for k in results["new"].spikes)
    equal = equal and results["base"].events == results["new"].events
    wall = {k: [] for k in impls}
    cpu = {k: [] for k in impls}
    load = OtherLoad()
    for _ in range(reps):
        for k, (m, p) in impls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            m.run(p, x)
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in impls}
    per = batch * steps
    return {"network": name, "batch": batch, "steps": steps, "input_dtype": str(x.dtype), "equal": bool(equal),
            "wall_seconds": wall, "cpu_seconds": cpu,
            "sample_steps_per_s": {k: per / med[k][0] for k in impls},
            "sample_steps_per_cpu_s": {k: per / med[k][1] for k in impls},
            "speedup_wall": med["base"][0] / med["new"][0], "speedup_cpu": med["base"][1] / med["new"][1],
            "other_load": load.result(), "loadavg": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main")
    ap.add_argument("--nets", nargs="+", default=["9x200", "conv", "pool"], choices=list(bench_sim.NETWORKS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bool", action="store_true", help="the input as bool instead of int64 0/1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compiled._set_threads(args.threads)
    base_sim = load_base_simulator(args.base)
    rows = []
    for name in args.nets:
        r = compare(name, base_sim, args.batch, args.reps, args.bool)
        rows.append(r)
        sps, cps = r["sample_steps_per_s"], r["sample_steps_per_cpu_s"]
        print(f"{name} batch {args.batch} {r['input_dtype']}: base {sps['base'] / 1e3:.1f}k, new {sps['new'] / 1e3:.1f}k sample-steps/s "
              f"(wall x{r['speedup_wall']:.2f}); per CPU-second base {cps['base'] / 1e3:.1f}k, new "
              f"{cps['new'] / 1e3:.1f}k (x{r['speedup_cpu']:.2f}); equal: {r['equal']}; other CPUs "
              f"{r['other_load'].get('other_cpus')}, load {r['loadavg'][0]:.1f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
