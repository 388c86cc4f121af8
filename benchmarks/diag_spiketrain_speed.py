"""HM2-BP / ST-RSBP against BPTT interleaved in ONE process: the per-step CPU time ratio with less noise.

``bench_spiketrain_speed.py`` runs every point in a fresh process (so that each has its own peak memory);
on a shared machine its single 5-step points move by 10-30 %. This diagnostic builds each network once,
warms each rule up, then times training steps (forward + gradients, batch 16, random input spikes of
density 0.1, the configs and rule options of ``bench_spiketrain_speed.py``) of the rule and of BPTT one
after the other, ``--reps`` times, and reports per rule the median and minimum CPU time per sample
(``time.process_time``, one thread) and the rule/BPTT ratio of both. The minimum is the figure least
disturbed by other processes; the table marks runs where others took more than 10 % of the CPUs.

``--floor`` adds a row "product floor" on networks of dense layers: the input products that both rules
make per step, timed alone in the same interleaving, with the layers' own product ``spike_linear``
(event-driven over the input spikes where the train is sparse, else the GEMM), as BPTT's layers make
them -- every layer's forward current over the (sample, step) rows of its input trains (the hidden ones
as recorded by the rule's own forward) and the first layer's weight gradient (``spike_linear``'s
backward). Its ratio to BPTT is the share of BPTT's step spent in products that HM2-BP must make too;
what is left of BPTT's step (its LIF kernels, autograd) is what HM2-BP's own work (scans, coefficients,
glue) has to undercut.

    python benchmarks/diag_spiketrain_speed.py                       # 784-100-10, T = 200 400 800
    python benchmarks/diag_spiketrain_speed.py --only 784-800 braille --T 200 --reps 9
    python benchmarks/diag_spiketrain_speed.py --only 784-100 784-800 --T 200 --floor
    python benchmarks/diag_spiketrain_speed.py --only 24-R128 784-R100 --T 200 400 800 --reps 9   # ST-RSBP

``--base-kernels DIR`` adds, for the rule, a row "RULE (base kernels)": the same rule with the compiled scans of
another checkout's ``snn2hw/learning/spsp_kernels.py`` (e.g. ``git archive 6448c2f | tar -x -C /tmp/base``) swapped
in for its steps, interleaved with the others: a step-level A/B of a change to the scans in one process. Point
``NUMBA_CACHE_DIR`` at an empty directory of its own for such a run (a cache shared with another run of the base
module fails to load).

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/diag_spiketrain_speed.py --only 784-800 --T 200 --base-kernels /tmp/base

``--variant MODULE:ATTR=VALUE`` adds a row "RULE (MODULE:ATTR=VALUE)": the rule with a module attribute set to
VALUE (a Python literal or ``A**B``; several assignments joined by ``,``) while its steps run, interleaved with
the others: a step-level A/B of a switch or constant in one process, e.g. the wide layer's weight gradient by the
row-by-row scatter against the tiled one:

    python benchmarks/diag_spiketrain_speed.py --only 784-800 --T 200 \
        --variant snn2hw.learning.spsp_kernels:SCATTER_TILE_MIN_WIDTH=10**9

Writes ``benchmarks/results/spiketrain_speed_interleaved.json``.
"""
from __future__ import annotations

import os

from bench_env import OtherLoad, set_thread_env, under_load  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from _spiketrain_bench import CONFIGS, ROOT, environment  # noqa: E402
from bench_spiketrain_speed import NETWORKS as BENCH_NETWORKS  # noqa: E402

# the benchmark's networks and ST-RSBP's other recurrent net (the rate-coded MNIST-10k one of "Which rule for which
# network"), timed here only: the fresh-process benchmark's table stays as it is
NETWORKS = BENCH_NETWORKS + [
    ("mnist10k 784-R100-10", "mnist10k", "mnist10k_rec100.json", ["strsbp", "bptt"], None),
]


def product_floor(model, rule, x):
    """A function making the input products both rules need per step on ``x`` (see the module docstring), or
    None when the network has other layers than ``LIFDense``."""
    import torch

    from snn2hw.nn.functional import spike_linear
    from snn2hw.nn.layers import LIFDense

    layers = [layer for layer in model.layers if layer is not None]
    if not all(isinstance(layer, LIFDense) for layer in layers):
        return None
    records, _ = rule.forward(model, x)
    inputs = [r.s_in.to(x.dtype).reshape(-1, r.s_in.shape[2]) for r in records]
    weights = [r.layer.weight.detach() for r in records]
    first = weights[0].clone().requires_grad_(True)
    grad = torch.randn(inputs[0].shape[0], weights[0].shape[0], generator=torch.Generator().manual_seed(1))

    def run():
        for s, w in zip(inputs[1:], weights[1:]):
            spike_linear(s, w)
        with torch.enable_grad():  # the first layer's forward and weight gradient, as BPTT's layer makes them
            spike_linear(inputs[0], first).backward(grad)
        first.grad = None

    return run


def base_scans(root: str) -> dict:
    """The compiled scans (``_SCANS``) of another checkout's ``snn2hw/learning/spsp_kernels.py``."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("base_spsp_kernels",
                                                  Path(root) / "snn2hw" / "learning" / "spsp_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._SCANS


def with_scans(scans: dict, run):
    """``run`` with ``spsp_kernels._SCANS`` replaced by ``scans`` while it runs."""
    from snn2hw.learning import spsp_kernels

    def swapped():
        own = spsp_kernels._SCANS
        spsp_kernels._SCANS = scans
        try:
            run()
        finally:
            spsp_kernels._SCANS = own
    return swapped


def with_attribute(spec: str, run):
    """``run`` with ``MODULE:ATTR=VALUE`` (``spec``; VALUE a Python literal or ``A**B``; several assignments
    separated by ``,``) set while it runs."""
    import ast
    import importlib

    changes = []
    for part in spec.split(","):
        target, value = part.split("=", 1)
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        getattr(module, attr)  # fails early on a misspelt name
        tree = ast.parse(value, mode="eval").body
        changes.append((module, attr, ast.literal_eval(tree.left) ** ast.literal_eval(tree.right)
                        if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Pow) else ast.literal_eval(tree)))

    def swapped():
        own = [getattr(module, attr) for module, attr, _ in changes]
        for module, attr, new in changes:
            setattr(module, attr, new)
        try:
            run()
        finally:
            for (module, attr, _), value in zip(changes, own):
                setattr(module, attr, value)
    return swapped


def build(task_name: str, config: str, rules: list, steps: int, batch: int):
    """(task, model, x, y, {rule name: rule}) of a network of ``NETWORKS``: random input spikes of density 0.1, every
    rule set up and warmed up by one step (compilation, fits)."""
    import torch

    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    torch.set_num_threads(1)
    task = get_task(task_name)
    cfg = read_config(CONFIGS / config)
    data = cfg.get("data")  # the input's width follows the config's data options (braille's bins)
    model = build_model(task, cfg.get("model"), 0, data)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, steps, task.input_size(data), generator=g) < 0.1).float()
    y = torch.randint(0, task.classes, (batch,), generator=g)
    made = {}
    for name in rules:
        made[name] = make_rule(name, **{**default_rule_options(name, steps), **(cfg.get("rule_options") or {})})
        made[name].setup(model)
        made[name].compute_gradients(model, x, y, task.loss_fn, {}, 1.0)
    return task, model, x, y, made


def measure(label: str, task_name: str, config: str, rules: list, steps: int, reps: int, batch: int,
            floor: bool = False, base: dict | None = None, variants: tuple = ()) -> list:
    task, model, x, y, made = build(task_name, config, rules, steps, batch)
    steps_of = {name: (lambda r=made[name]: r.compute_gradients(model, x, y, task.loss_fn, {}, 1.0)) for name in rules}
    if base is not None:  # the rule with the other checkout's scans, right before the rule itself
        variant = with_scans(base, steps_of[rules[0]])
        variant()  # warm-up
        steps_of = {f"{rules[0]} (base kernels)": variant, **steps_of}
    for spec in variants:  # the rule with a changed module attribute, right before the rule itself
        variant = with_attribute(spec, steps_of[rules[0]])
        variant()  # warm-up (and compilation of whatever the change selects)
        steps_of = {f"{rules[0]} ({spec})": variant, **steps_of}
    products = product_floor(model, made[rules[0]], x) if floor else None
    if products is not None:
        products()
        steps_of = {"product floor": products, **steps_of}
    cpu = {name: [] for name in steps_of}
    load_at_start, other = os.getloadavg()[0], OtherLoad()
    for _ in range(reps):
        for name, run in steps_of.items():  # interleaved
            model.zero_grad(set_to_none=True)
            c0 = time.process_time()
            run()
            cpu[name].append(1e3 * (time.process_time() - c0) / batch)
    o = other.result()
    base = rules[-1]
    rows = []
    for name in steps_of:
        med, low = statistics.median(cpu[name]), min(cpu[name])
        rows.append({"network": label, "T": steps, "rule": name, "reps": reps, "cpu_ms_per_sample_median": med,
                     "cpu_ms_per_sample_min": low, "cpu_ms_per_sample_max": max(cpu[name]),
                     "ratio_median": med / statistics.median(cpu[base]), "ratio_min": low / min(cpu[base]),
                     "other_cpus": o["other_cpus"], "loadavg": os.getloadavg()[0],
                     "under_load": under_load(o, load_at_start)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", nargs="+", default=["784-100"], help="networks whose label contains one of these")
    ap.add_argument("--floor", action="store_true", help="also time the input products alone (dense networks)")
    ap.add_argument("--base-kernels", default=None, help="another checkout's root: also time the rule with its scans")
    ap.add_argument("--variant", nargs="+", default=[], metavar="MODULE:ATTR=VALUE",
                    help="also time the rule with a module attribute changed (an A/B in one process)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spiketrain_speed_interleaved.json"))
    a = ap.parse_args(argv)
    env = environment()
    base = base_scans(a.base_kernels) if a.base_kernels else None
    rows = []
    lines = ["| network | T | rule | CPU ms/sample median [min-max] | x BPTT (medians) | x BPTT (minima) | "
             "load avg / other CPUs |", "|" + "---|" * 7]
    for label, task, config, rules, _ in NETWORKS:
        if not any(o in label for o in a.only):
            continue
        for steps in a.T:
            for r in measure(label, task, config, rules, steps, a.reps, a.batch, a.floor, base, tuple(a.variant)):
                rows.append(r)
                mark = " (loaded)" if r["under_load"] else ""
                lines.append(f"| {label} | {steps} | {r['rule']} | {r['cpu_ms_per_sample_median']:.3f} "
                             f"[{r['cpu_ms_per_sample_min']:.3f}-{r['cpu_ms_per_sample_max']:.3f}] | "
                             f"{r['ratio_median']:.2f} | {r['ratio_min']:.2f} | {r['loadavg']:.1f} / "
                             f"{r['other_cpus'] or 0:.2f}{mark} |")
                print(lines[-1], flush=True)
    with open(a.out, "w") as f:
        json.dump({"benchmark": "spiketrain_speed_interleaved", "environment": {
            **env, "loadavg_end": list(os.getloadavg())}, "batch": a.batch, "rows": rows}, f, indent=1)
        f.write("\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
