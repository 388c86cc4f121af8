"""HM2-BP against BPTT on the same networks and tasks: accuracy (float and deployed on the bit-accurate
simulator), training time per epoch and peak memory, and time/memory per sample against the window T.

Every run is ``snn2hw train`` in a fresh single-threaded process (the command is stored with each run):
hyper-parameters are the configs' in ``benchmarks/configs``, the checkpoint is the epoch with the best
validation accuracy, test accuracy is read once at the end. Rules are interleaved seed by seed.
Prints a table and writes ``benchmarks/results/hm2bp.json``.

    python benchmarks/bench_hm2bp.py                  # the plan below (hours on a shared 2-core machine)
    python benchmarks/bench_hm2bp.py --seeds 1 --epochs-scale 0.5
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from _spiketrain_bench import ROOT, main_runs

PLAN = [  # label, task, config, rule, epochs, seeds (sized for a shared 2-core machine)
    ("digits 64-128-10 T60", "digits", "digits_mlp128.json", "hm2bp", 15, 3),
    ("digits 64-128-10 T60", "digits", "digits_mlp128.json", "bptt", 15, 3),
    ("digits 64-128-10 T60 orig. neuron", "digits", "digits_mlp128_original.json", "hm2bp", 15, 3),
    ("mnist10k 784-100-10 T100", "mnist10k", "mnist10k_mlp100.json", "hm2bp", 2, 2),
    ("mnist10k 784-100-10 T100", "mnist10k", "mnist10k_mlp100.json", "bptt", 2, 2),
    ("mnist10k 784-800-10 T100", "mnist10k", "mnist10k_mlp800.json", "hm2bp", 1, 1),
    ("mnist10k 784-800-10 T100", "mnist10k", "mnist10k_mlp800.json", "bptt", 1, 1),
]
MEM_PLAN = [{"label": "mnist10k 784-100-10, batch 16", "task": "mnist10k", "config": "mnist10k_mlp100.json",
             "rules": ["hm2bp", "bptt"], "T": [50, 100, 200, 400]}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the plan's)")
    ap.add_argument("--epochs-scale", type=float, default=1.0)
    ap.add_argument("--only", default=None, help="run only rows whose label contains this text")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory/speed-vs-T points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hm2bp.json"))
    a = ap.parse_args(argv)
    plan = [{"label": l, "task": t, "config": c, "rule": r, "epochs": max(1, math.ceil(e * a.epochs_scale)),
             "seeds": list(range(a.seeds or n))}
            for l, t, c, r, e, n in PLAN if a.only is None or a.only in l]
    main_runs("hm2bp", plan, [] if a.no_memory else MEM_PLAN, Path(a.out), ROOT / "out" / "bench_hm2bp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
