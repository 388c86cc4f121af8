"""Shared runner of bench_hm2bp.py and bench_strsbp.py (not a benchmark by itself).

* ``run_train``: one ``snn2hw train`` run in a fresh process (single-threaded, passive OpenMP wait), so that
  each run's peak memory is its own; returns its results.json.
* ``step`` (``python benchmarks/_spiketrain_bench.py step ...``, in a fresh process per point): time per
  sample and peak memory of training steps of one rule at one window length T on random input spikes,
  for the memory-vs-T and speed-vs-T comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "benchmarks" / "configs"
# glibc returns blocks >= 64 KiB to the system on free (fixed mmap threshold), so that the resident set
# follows live tensors rather than the allocator's high-water mark.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
       "PYTHONHASHSEED": "0",
       "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# per-step points set the allocator themselves (``fixed_mmap_threshold``) after timing
STEP_ENV = {k: v for k, v in ENV.items() if not k.startswith("MALLOC_")}


def fixed_mmap_threshold() -> None:
    """glibc: serve blocks >= 64 KiB by mmap and return them at free (what ``ENV``'s MALLOC_ variables do
    at start-up), then give back what the heap holds."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()), "threads_per_run": 1,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def command(task: str, rule: str, config: str, epochs: int, seed: int, out: str) -> list[str]:
    return ["snn2hw", "train", "--task", task, "--rule", rule, "--config", f"benchmarks/configs/{config}",
            "--epochs", str(epochs), "--seed", str(seed), "--threads", "1", "--quiet", "--out", out]


def run_train(task: str, rule: str, config: str, epochs: int, seed: int, out_root: Path) -> dict:
    out = out_root / f"{task}-{Path(config).stem}-{rule}-s{seed}"
    cmd = command(task, rule, config, epochs, seed, str(out))
    env = {**os.environ, **ENV}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "snn2hw.cli", *cmd[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    r = json.loads((out / "results.json").read_text())
    r["command"] = " ".join(cmd)
    r["loadavg_at_start"] = load
    r["under_load"] = load > 1.5
    return r


def summarize(runs: list[dict]) -> dict:
    def stat(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if not vals:
            return None
        return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals), "max": max(vals), "n": len(vals)}

    return {k: stat(k) for k in ("float_test_accuracy", "deployed_test_accuracy", "float_val_accuracy",
                                 "rule_neuron_test_accuracy", "time_per_epoch_s", "peak_memory_mb")}


def fmt(s, pct=True) -> str:
    if s is None:
        return "-"
    if pct:
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
    return f"{s['mean']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"


def table(rows: list[dict]) -> str:
    head = "| task / network | rule | float test % | deployed test % | s/epoch, mean [min-max] | peak MB | seeds | epochs |"
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        s = row["summary"]
        lines.append(f"| {row['label']} | {row['rule']} | {fmt(s['float_test_accuracy'])} | "
                     f"{fmt(s['deployed_test_accuracy'])} | {fmt(s['time_per_epoch_s'], False)} | "
                     f"{fmt(s['peak_memory_mb'], False)} | {len(row['runs'])} | {row['epochs']} |")
    return "\n".join(lines)


def step_profile(argv=None) -> dict:
    """Time per sample and peak memory of ``steps`` training steps (after one warm-up) at window ``T``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rule", required=True)
    ap.add_argument("--task", default="mnist10k")
    ap.add_argument("--config", default=None)
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import PeakMemory, read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    task = get_task(a.task)
    cfg = read_config(CONFIGS / a.config) if a.config else {}
    model = build_model(task, cfg.get("model"), 0, cfg.get("data"))
    opts = {**default_rule_options(a.rule, a.T), **(cfg.get("rule_options") or {})}
    rule = make_rule(a.rule, **opts)
    rule.setup(model)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(a.batch, a.T, task.input_size(cfg.get("data")), generator=g) < 0.1).float()
    y = torch.randint(0, task.classes, (a.batch,), generator=g)
    loss_fn = task.loss_fn
    times, cpu = [], []
    # one warm-up step outside the measurement: one-off costs (ST-RSBP's Monte-Carlo fit for a new window,
    # lazy library initialisation) are not per-step memory
    rule.compute_gradients(model, x, y, loss_fn, {}, 1.0)
    for i in range(a.steps):  # timed with the allocator as a user runs it
        model.zero_grad(set_to_none=True)
        c0, t0 = time.process_time(), time.perf_counter()
        rule.compute_gradients(model, x, y, loss_fn, {}, 1.0)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # then memory, with glibc returning blocks >= 64 KiB at free so that the resident set follows live
    # tensors (a fixed mmap threshold slows code that allocates many temporaries, hence not while timing)
    fixed_mmap_threshold()
    model.zero_grad(set_to_none=True)
    with PeakMemory(torch.device("cpu")) as mem:
        for i in range(2):
            model.zero_grad(set_to_none=True)
            rule.compute_gradients(model, x, y, loss_fn, {}, 1.0)
    # CPU time of the (single-threaded) process as well as wall time: on a shared machine the wall time
    # includes waiting for a core, the CPU time much less so
    return {"rule": a.rule, "T": a.T, "batch": a.batch, "ms_per_sample": 1e3 * statistics.median(times) / a.batch,
            "ms_per_sample_spread": [1e3 * min(times) / a.batch, 1e3 * max(times) / a.batch],
            "cpu_ms_per_sample": 1e3 * statistics.median(cpu) / a.batch,
            "peak_memory_mb": mem.peak_bytes / 2**20, "loadavg": os.getloadavg()[0]}


def run_step(rule: str, T: int, config: str | None, task: str = "mnist10k", batch: int = 16) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "step", "--rule", rule, "--T", str(T), "--task", task,
           "--batch", str(batch)] + (["--config", config] if config else [])
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **STEP_ENV}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_vs_t(rules, ts, config, task, batch=16) -> list[dict]:
    out = []
    for T in ts:
        for rule in rules:  # interleaved
            r = run_step(rule, T, config, task, batch)
            print(f"  T={T:4d} {rule:13s} {r['ms_per_sample']:8.2f} ms/sample  peak {r['peak_memory_mb']:8.1f} MB"
                  f"  (load {r['loadavg']:.1f})", flush=True)
            out.append(r)
    return out


def main_runs(name: str, plan: list[dict], mem_plan: list[dict], out_json: Path, out_root: Path) -> None:
    """Run every (task, config, rule, seed) of ``plan`` interleaved by seed, print the table, write JSON."""
    env = environment()
    rows = []
    for item in plan:
        row = {**item, "runs": []}
        rows.append(row)
    for seed in range(max((len(p["seeds"]) for p in plan), default=0)):
        for row in rows:
            if seed >= len(row["seeds"]):
                continue
            r = run_train(row["task"], row["rule"], row["config"], row["epochs"], row["seeds"][seed], out_root)
            row["runs"].append({k: r.get(k) for k in ("seed", "float_val_accuracy", "float_test_accuracy",
                                                      "deployed_test_accuracy", "rule_neuron_test_accuracy",
                                                      "time_per_epoch_s", "peak_memory_mb", "best_epoch",
                                                      "command", "loadavg_at_start", "under_load")})
            print(f"{row['label']:28s} {row['rule']:7s} seed {r['seed']}: float {100 * r['float_test_accuracy']:.2f} "
                  f"deployed {100 * r.get('deployed_test_accuracy', float('nan')):.2f} "
                  f"{r['time_per_epoch_s']:.1f} s/epoch {r['peak_memory_mb']:.0f} MB", flush=True)
            row["summary"] = summarize(row["runs"])
            _write(out_json, name, env, rows, None)
    mem = []
    for m in mem_plan:
        print(f"memory/speed vs T: {m['label']}", flush=True)
        mem.append({**m, "points": memory_vs_t(m["rules"], m["T"], m["config"], m["task"])})
        _write(out_json, name, env, rows, mem)
    print(table(rows))
    _write(out_json, name, env, rows, mem)


def cli(name: str, plan: list[tuple], mem_plan: list[dict], description: str, argv=None) -> int:
    """The benchmark scripts' command line: ``plan`` rows are (label, task, config, rule, epochs, seeds)."""
    import math

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the plan's)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    ap.add_argument("--epochs-scale", type=float, default=1.0)
    ap.add_argument("--only", default=None, help="run only rows whose label contains this text")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory/speed-vs-T points")
    ap.add_argument("--memory-only", action="store_true", help="only the memory/speed-vs-T points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"))
    a = ap.parse_args(argv)
    if a.memory_only:
        plan = []
    rows = [{"label": l, "task": t, "config": c, "rule": r, "epochs": max(1, math.ceil(e * a.epochs_scale)),
             "seeds": list(range(a.first_seed, a.first_seed + (a.seeds or n)))}
            for l, t, c, r, e, n in plan if a.only is None or a.only in l]
    mem = [] if a.no_memory else [m for m in mem_plan if a.only is None or a.only in m["label"]]
    main_runs(name, rows, mem, Path(a.out), ROOT / "out" / f"bench_{name}")
    return 0


def _write(path: Path, name: str, env: dict, rows, mem) -> None:
    import os as _os

    env = {**env, "loadavg_end": list(_os.getloadavg())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "environment": env, "rows": rows, "memory_vs_T": mem},
                               indent=1, default=str) + "\n")


def report(paths: list[str]) -> str:
    """Markdown tables (rule x task; time and memory vs T) from benchmark JSON files, with each row's command."""
    lines = ["| task / network | rule | float test % | deployed test % | s/epoch | peak MB | seeds x epochs | command (seed 0) |",
             "|" + "---|" * 8]
    mem_lines = ["| network | T | rule | ms / sample (median) | peak MB |", "|" + "---|" * 5]
    merged: dict = {}  # rows of the same (label, rule, epochs) from several files (e.g. seeds run apart)
    for p in paths:
        data = json.loads(Path(p).read_text())
        for row in data.get("rows") or []:
            key = (row["label"], row["rule"], row["epochs"])
            merged.setdefault(key, {**row, "runs": []})["runs"] += row.get("runs") or []
    for row in merged.values():
        if row["runs"]:
            row["runs"].sort(key=lambda r: r["seed"])
            s = summarize(row["runs"])
            extra = ""
            if s.get("rule_neuron_test_accuracy"):
                extra = f" (orig. neuron: {fmt(s['rule_neuron_test_accuracy'])})"
            cmd = row["runs"][0]["command"].replace(" --quiet", "").replace(str(ROOT) + "/", "")
            lines.append(f"| {row['label']} | {row['rule']} | {fmt(s['float_test_accuracy'])}{extra} | "
                         f"{fmt(s['deployed_test_accuracy'])} | {fmt(s['time_per_epoch_s'], False)} | "
                         f"{fmt(s['peak_memory_mb'], False)} | {len(row['runs'])} x {row['epochs']} | `{cmd}` |")
    for p in paths:
        data = json.loads(Path(p).read_text())
        for plan in (data.get("memory_vs_T") or data.get("plans") or []):
            for pt in plan["points"]:
                mem_lines.append(f"| {plan['label']} | {pt['T']} | {pt['rule']} | {pt['ms_per_sample']:.2f} | "
                                 f"{pt['peak_memory_mb']:.1f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(mem_lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "step":
        print(json.dumps(step_profile(sys.argv[2:])))
    elif len(sys.argv) > 1 and sys.argv[1] == "report":
        print(report(sys.argv[2:]))
    else:
        raise SystemExit("usage: python benchmarks/_spiketrain_bench.py step --rule R --T N [--config C] | "
                         "report FILE.json...")
