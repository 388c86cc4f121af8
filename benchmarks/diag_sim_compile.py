"""Cold compile time of the simulator's numba kernels, as CI's fresh clone pays it.

Runs the given test files (default: the simulator's) in this process with an empty numba cache
(a fresh ``NUMBA_CACHE_DIR``, set before numba is imported) and records numba's compile events
(``numba.core.event``, kind ``numba:compile``). Prints, per compiled function, how many times it was
compiled (type specialisations and kernel variants) and their time *exclusive* of the functions compiled inside them (a
kernel's compile also compiles the formulas it calls; those are charged to the formulas), then the
total compile time against the wall time of the run. With ``--cache DIR`` the cache is kept in DIR
(a second run against the same DIR measures the warm path).

    python benchmarks/diag_sim_compile.py [--cache DIR] [--json out.json] [--root REPO] [test files ...]
"""
from __future__ import annotations

import os
import sys
import tempfile

if __name__ == "__main__":  # before numba is imported: it reads the cache directory once
    _args = sys.argv[1:]
    _cache = _args[_args.index("--cache") + 1] if "--cache" in _args else tempfile.mkdtemp(prefix="numba-cold-")
    os.environ["NUMBA_CACHE_DIR"] = _cache

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/test_hw_compiled.py", "tests/test_hw_loihi2.py", "tests/test_sim.py",
                 "tests/test_sim_fast_paths.py", "tests/test_sim_network_kernel.py"]


def exclusive_times(records) -> dict:
    """{(qualname, signature): [compiles, seconds]} of compile time, nested compiles charged to themselves
    (one signature compiles once per kernel variant: closures with other constants are other functions)."""
    from numba.core import event

    out: dict = collections.defaultdict(lambda: [0, 0.0])
    stack: list = []  # [key, start, time spent in nested compiles]
    for ts, ev in records:
        data = ev.data or {}
        disp = data.get("dispatcher")
        name = getattr(getattr(disp, "py_func", None), "__qualname__", str(disp))
        module = getattr(getattr(disp, "py_func", None), "__module__", "?")
        key = (f"{module}.{name}", str(data.get("args")))
        if ev.status == event.EventStatus.START:
            stack.append([key, ts, 0.0])
        else:
            k, t0, nested = stack.pop()
            total = ts - t0
            out[k][0] += 1
            out[k][1] += total - nested
            if stack:
                stack[-1][2] += total
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tests", nargs="*", default=DEFAULT_TESTS)
    ap.add_argument("--cache", default=None, help="numba cache directory (default: a fresh empty one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("--root", default=str(ROOT), help="repository whose tests run (default: this script's; "
                    "another checkout measures its code, run with its own Python)")
    args = ap.parse_args()
    import pytest
    from numba.core import event

    os.chdir(args.root)
    t0 = time.perf_counter()
    with event.install_recorder("numba:compile") as rec:
        argv = ["-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args.tests]
        if args.k:
            argv += ["-k", args.k]
        code = pytest.main(argv)
    wall = time.perf_counter() - t0
    per = exclusive_times(rec.buffer)
    by_fn: dict = collections.defaultdict(lambda: [0, 0.0])
    for (fn, _sig), (n, sec) in per.items():
        by_fn[fn][0] += n
        by_fn[fn][1] += sec
    total = sum(sec for _, sec in per.values())
    print(f"\nnumba cache: {os.environ['NUMBA_CACHE_DIR']}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'function':70s} {'compiles':>15s} {'compile s':>10s}")
    for fn, (n, sec) in sorted(by_fn.items(), key=lambda kv: -kv[1][1]):
        if sec >= 0.05:
            print(f"{fn[-70:]:70s} {n:15d} {sec:10.2f}")
    print(f"total compile {total:.1f} s of {wall:.1f} s wall (pytest exit {int(code)})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "wall_s": wall, "compile_s": total, "load_average": os.getloadavg(), "tests": args.tests,
            "functions": {fn: {"compiles": n, "seconds": sec} for fn, (n, sec) in by_fn.items()},
            "signatures": [{"function": fn, "args": sig, "compiles": n, "seconds": sec}
                           for (fn, sig), (n, sec) in per.items()],
        }, indent=2))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
