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

from _spiketrain_bench import cli

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


if __name__ == "__main__":
    raise SystemExit(cli("hm2bp", PLAN, MEM_PLAN, __doc__.splitlines()[0]))
