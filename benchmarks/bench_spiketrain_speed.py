"""Speed and memory of HM2-BP and ST-RSBP against BPTT on the same networks, per training step, against T.

Each point is ``python benchmarks/_spiketrain_bench.py step`` in a fresh process (one thread, passive
OpenMP wait): one warm-up step, then ``--steps`` timed training steps (forward + gradients, batch 16, random input
spikes of density 0.1, the network and rule options of the config). Rules are interleaved point by point
and the whole sweep is repeated ``--rounds`` times; the table gives, per (network, T, rule), the median
over rounds of the per-step median wall time per sample, its spread over rounds, the process CPU time
per sample (less sensitive to a loaded machine), the rule/BPTT ratios of both, and the peak resident
memory of two more steps above the level before them, taken after switching glibc to return blocks of
64 KiB and more at free, so that the resident set follows live tensors (median over rounds). Every point records the load
average and the CPU time other processes took while it ran (``bench_env.OtherLoad``: /proc/stat less this
process and its finished children); the table marks "(loaded)" the points where others took more than 10 %
of the CPUs (the load average alone counts the benchmark's own process and cannot tell).

    python benchmarks/bench_spiketrain_speed.py              # the plan below, 3 rounds (about 40 min idle)
    python benchmarks/bench_spiketrain_speed.py --rounds 1 --T 200 400 --only 784-100
    python benchmarks/bench_spiketrain_speed.py --rounds 3 --T 200 400 800 --only 784-100 784-800 braille
    python benchmarks/bench_spiketrain_speed.py --rounds 1 --T 200 400 800 --only 15c5 --steps 3

Writes ``benchmarks/results/spiketrain_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _spiketrain_bench import ROOT, STEP_ENV, environment
from bench_env import OtherLoad, under_load

NETWORKS = [  # label, task, config, rules (the baseline last), windows T (None: --T)
    ("mnist10k 784-100-10", "mnist10k", "mnist10k_mlp100.json", ["hm2bp", "bptt"], None),
    ("mnist10k 784-800-10", "mnist10k", "mnist10k_mlp800.json", ["hm2bp", "bptt"], None),
    ("braille 24-R128-27", "braille", "braille_rec128.json", ["strsbp", "bptt"], None),
    # the paper's CNN shape (conv and pool layers on the chunked path like dense ones)
    ("mnist10k 15c5-p2-40c5-p2-300-10", "mnist10k", "mnist10k_cnn.json", ["hm2bp", "bptt"], None),
]


def run_point(rule: str, T: int, task: str, config: str, steps: int, batch: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "_spiketrain_bench.py"), "step", "--rule", rule,
           "--T", str(T), "--task", task, "--config", config, "--steps", str(steps), "--batch", str(batch)]
    load_at_start = os.getloadavg()[0]
    other = OtherLoad()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **STEP_ENV}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    point = json.loads(proc.stdout.strip().splitlines()[-1])
    o = other.result()
    point.update(other_cpus=o["other_cpus"], under_load=under_load(o, load_at_start))
    return point


def summarize(points: list[dict]) -> list[dict]:
    groups: dict = {}
    for p in points:
        groups.setdefault((p["network"], p["T"], p["rule"]), []).append(p)
    rows = []
    for (net, T, rule), ps in groups.items():
        wall = [p["ms_per_sample"] for p in ps]
        cpu = [p["cpu_ms_per_sample"] for p in ps]
        rows.append({"network": net, "T": T, "rule": rule, "rounds": len(ps), "ms_per_sample": statistics.median(wall),
                     "ms_min": min(wall), "ms_max": max(wall), "cpu_ms_per_sample": statistics.median(cpu),
                     "peak_memory_mb": statistics.median(p["peak_memory_mb"] for p in ps),
                     "loadavg_max": max(p["loadavg"] for p in ps),
                     "other_cpus_max": max((p.get("other_cpus") or 0.0) for p in ps),
                     "under_load": any(p.get("under_load", p["loadavg"] > 1.5) for p in ps)})
    for r in rows:
        base = next((b for b in rows if b["network"] == r["network"] and b["T"] == r["T"] and b["rule"] == "bptt"),
                    None)
        r["wall_ratio_to_bptt"] = r["ms_per_sample"] / base["ms_per_sample"] if base else None
        r["cpu_ratio_to_bptt"] = r["cpu_ms_per_sample"] / base["cpu_ms_per_sample"] if base else None
        r["memory_ratio_to_bptt"] = (r["peak_memory_mb"] / base["peak_memory_mb"]
                                     if base and base["peak_memory_mb"] > 0 else None)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| network | T | rule | ms/sample wall, median [min-max] | x BPTT | CPU ms/sample | x BPTT | "
             "peak MB | x BPTT | load avg / other CPUs |", "|" + "---|" * 10]
    for r in rows:
        def ratio(k):
            return f"{r[k]:.2f}" if r[k] is not None else "-"

        mark = " (loaded)" if r["under_load"] else ""
        lines.append(f"| {r['network']} | {r['T']} | {r['rule']} | {r['ms_per_sample']:.2f} [{r['ms_min']:.2f}-"
                     f"{r['ms_max']:.2f}] | {ratio('wall_ratio_to_bptt')} | {r['cpu_ms_per_sample']:.2f} | "
                     f"{ratio('cpu_ratio_to_bptt')} | {r['peak_memory_mb']:.1f} | {ratio('memory_ratio_to_bptt')} | "
                     f"{r['loadavg_max']:.1f} / {r['other_cpus_max']:.2f}{mark} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=None, help="windows (default 100 200 400 800)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per point (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", nargs="+", default=None, help="networks whose label contains one of these texts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spiketrain_speed.json"))
    a = ap.parse_args(argv)
    a.T_given = a.T is not None
    a.T = a.T or [100, 200, 400, 800]
    nets = [n for n in NETWORKS if a.only is None or any(o in n[0] for o in a.only)]
    env = environment()
    points: list[dict] = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for rnd in range(a.rounds):
        for label, task, config, rules, windows in nets:
            for T in (windows if windows and not a.T_given else a.T):
                for rule in rules:  # interleaved: each rule's point next to its baseline's
                    p = run_point(rule, T, task, config, a.steps, a.batch)
                    p.update(network=label, round=rnd)
                    points.append(p)
                    print(f"round {rnd} {label:22s} T={T:4d} {rule:7s} {p['ms_per_sample']:8.2f} ms/sample "
                          f"(CPU {p['cpu_ms_per_sample']:8.2f})  peak {p['peak_memory_mb']:7.1f} MB  "
                          f"load {p['loadavg']:.1f}, other CPUs {p['other_cpus'] or 0:.2f}", flush=True)
                    rows = summarize(points)
                    out.write_text(json.dumps({"benchmark": "spiketrain_speed", "environment": {
                        **env, "loadavg_end": list(os.getloadavg())}, "batch": a.batch, "steps": a.steps,
                        "rows": rows, "points": points}, indent=1) + "\n")
    print(table(summarize(points)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
