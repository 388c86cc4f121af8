"""ST-RSBP against BPTT on the same recurrent networks and tasks: accuracy (float and deployed on the
bit-accurate simulator), training time per epoch and peak memory, and time/memory per sample against T.

Every run is ``snn2hw train`` in a fresh single-threaded process (the command is stored with each run);
hyper-parameters are the configs' in ``benchmarks/configs``; the checkpoint is the epoch with the best
validation accuracy. Rules are interleaved seed by seed. Prints a table and writes
``benchmarks/results/strsbp.json``.

    python benchmarks/bench_strsbp.py
    python benchmarks/bench_strsbp.py --seeds 1 --epochs-scale 0.5
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from _spiketrain_bench import ROOT, main_runs

PLAN = [  # label, task, config, rule, epochs, seeds (sized for a shared 2-core machine)
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "strsbp", 10, 2),
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "bptt", 10, 2),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "strsbp", 2, 1),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "bptt", 2, 1),
]
MEM_PLAN = [{"label": "mnist10k 784-R100-10, batch 16", "task": "mnist10k", "config": "mnist10k_rec100.json",
             "rules": ["strsbp", "bptt"], "T": [50, 100, 200, 400]}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the plan's)")
    ap.add_argument("--epochs-scale", type=float, default=1.0)
    ap.add_argument("--only", default=None, help="run only rows whose label contains this text")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory/speed-vs-T points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "strsbp.json"))
    a = ap.parse_args(argv)
    plan = [{"label": l, "task": t, "config": c, "rule": r, "epochs": max(1, math.ceil(e * a.epochs_scale)),
             "seeds": list(range(a.seeds or n))}
            for l, t, c, r, e, n in PLAN if a.only is None or a.only in l]
    main_runs("strsbp", plan, [] if a.no_memory else MEM_PLAN, Path(a.out), ROOT / "out" / "bench_strsbp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
