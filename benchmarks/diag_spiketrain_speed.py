"""HM2-BP / ST-RSBP against BPTT interleaved in ONE process: the per-step CPU time ratio with less noise.

``bench_spiketrain_speed.py`` runs every point in a fresh process (so that each has its own peak memory);
on a shared machine its single 5-step points move by 10-30 %. This diagnostic builds each network once,
warms each rule up, then times training steps (forward + gradients, batch 16, random input spikes of
density 0.1, the configs and rule options of ``bench_spiketrain_speed.py``) of the rule and of BPTT one
after the other, ``--reps`` times, and reports per rule the median and minimum CPU time per sample
(``time.process_time``, one thread) and the rule/BPTT ratio of both. The minimum is the figure least
disturbed by other processes; the table marks runs where others took more than 10 % of the CPUs.

    python benchmarks/diag_spiketrain_speed.py                       # 784-100-10, T = 200 400 800
    python benchmarks/diag_spiketrain_speed.py --only 784-800 braille --T 200 --reps 9

Writes ``benchmarks/results/spiketrain_speed_interleaved.json``.
"""
from __future__ import annotations

import os
import sys

from bench_env import OtherLoad, set_thread_env, under_load  # noqa: E402  (imports no torch)

set_thread_env(["--threads", "1"])

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from _spiketrain_bench import CONFIGS, ROOT, environment  # noqa: E402
from bench_spiketrain_speed import NETWORKS  # noqa: E402


def measure(label: str, task_name: str, config: str, rules: list, steps: int, reps: int, batch: int) -> list:
    import torch

    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    torch.set_num_threads(1)
    task = get_task(task_name)
    cfg = read_config(CONFIGS / config)
    model = build_model(task, cfg.get("model"), 0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, steps, task.inputs, generator=g) < 0.1).float()
    y = torch.randint(0, task.classes, (batch,), generator=g)
    made = {}
    for name in rules:
        made[name] = make_rule(name, **{**default_rule_options(name, steps), **(cfg.get("rule_options") or {})})
        made[name].setup(model)
        made[name].compute_gradients(model, x, y, task.loss_fn, {}, 1.0)  # warm-up (compilation, fits)
    cpu = {name: [] for name in rules}
    load_at_start, other = os.getloadavg()[0], OtherLoad()
    for _ in range(reps):
        for name in rules:  # interleaved
            model.zero_grad(set_to_none=True)
            c0 = time.process_time()
            made[name].compute_gradients(model, x, y, task.loss_fn, {}, 1.0)
            cpu[name].append(1e3 * (time.process_time() - c0) / batch)
    o = other.result()
    base = rules[-1]
    rows = []
    for name in rules:
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
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spiketrain_speed_interleaved.json"))
    a = ap.parse_args(argv)
    env = environment()
    rows = []
    lines = ["| network | T | rule | CPU ms/sample median [min-max] | x BPTT (medians) | x BPTT (minima) | "
             "load avg / other CPUs |", "|" + "---|" * 7]
    for label, task, config, rules, _ in NETWORKS:
        if not any(o in label for o in a.only):
            continue
        for steps in a.T:
            for r in measure(label, task, config, rules, steps, a.reps, a.batch):
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
