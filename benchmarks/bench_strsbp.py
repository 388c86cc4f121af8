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

from _spiketrain_bench import cli

PLAN = [  # label, task, config, rule, epochs, seeds (sized for a shared 2-core machine)
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "strsbp", 10, 2),
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "bptt", 10, 2),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "strsbp", 2, 1),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "bptt", 2, 1),
]
MEM_PLAN = [{"label": "mnist10k 784-R100-10, batch 16", "task": "mnist10k", "config": "mnist10k_rec100.json",
             "rules": ["strsbp", "bptt"], "T": [50, 100, 200, 400]}]


if __name__ == "__main__":
    raise SystemExit(cli("strsbp", PLAN, MEM_PLAN, __doc__.splitlines()[0]))
