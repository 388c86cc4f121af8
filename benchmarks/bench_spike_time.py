"""Spike-time gradients (TTFS) vs surrogate-gradient BPTT on Yin-Yang, float and deployed accuracy.

Same network for both rules: 5 inputs (x, y, 1-x, 1-y, bias; one spike each, ``models.yinyang``
encoding, 30-step input window, 64 steps in all), ``--hidden`` CUBA-LIF neurons, 3 CUBA-LIF outputs;
du = 0.1, dv = 0.05, v_th = 1.

* ``spike-time``: the network of ``single_spike`` (hidden neurons inhibit themselves after their first
  spike, so the deployed network sends exactly the spikes the TTFS relaxation counts), trained with
  ``make_rule("spike-time")`` and ``first_spike_cross_entropy``; decoded by the first output spike.
* ``bptt``: the plain ``LIFDense`` network trained with the default rule and loss (cross-entropy of
  output spike counts); decoded by spike count.

Both: Adam, cosine schedule, batch 32, ``--epochs`` epochs on the first ``--train`` points of the
published training split; the epoch with the best validation accuracy (published validation split,
1000 points, measured on the discrete float network) is kept and scored on the published test split
(1000 points): float accuracy (PyTorch), and deployed accuracy (compiled, run on the bit-accurate
simulator). Learning rates and initialisation were picked on the validation split in exploratory runs.

``--recipe`` runs the ``snn2hw train --task yinyang`` recipe instead (``snn2hw.models.sequence_tasks``: the
same networks, losses and decoders; best epoch on validation; deployed on the simulator), for every rule
and seed in one process, interleaving rules per seed, and records time per epoch and peak memory::

    python benchmarks/bench_spike_time.py --recipe --seeds 0 1 2 --train 2000 --epochs 15 \
        --out benchmarks/results/spike_time_recipe.json

Run one process per seed (they are independent), then merge::

    python benchmarks/bench_spike_time.py --seed 0 --out /tmp/st0.json   # ... and seeds 1, 2
    python benchmarks/bench_spike_time.py --merge /tmp/st0.json /tmp/st1.json /tmp/st2.json
    python benchmarks/bench_spike_time.py --timing --out benchmarks/results/spike_time_timing.json
    python benchmarks/bench_spike_time.py --memory --out benchmarks/results/spike_time_memory.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # freed tensors leave RSS (memory section)

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DU, DV = 0.1, 0.05


def _env() -> dict:
    return {"load_avg": os.getloadavg(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def _deployed_predictions(net, x, decode) -> torch.Tensor:
    from snn2hw.backends import get_backend
    from snn2hw.compiler import compile_graph

    art = compile_graph(net.to_ir())
    res = get_backend("sim")(art, x.numpy().astype(np.int64))
    return decode(torch.from_numpy(res.spikes[art.graph.outputs[0]]).float())


def build(hidden: int, seed: int, rule: str):
    from snn2hw.learning.spike_time import single_spike
    from snn2hw.nn.layers import SpikingSequential

    torch.manual_seed(seed)
    if rule == "bptt":
        return SpikingSequential.build([5, hidden, 3], du=DU, dv=DV, v_th=1.0, weight_gain=3.0)
    model = SpikingSequential.build([5, hidden, 3], du=DU, dv=DV, v_th=1.0)
    with torch.no_grad():  # each hidden neuron needs a few input spikes, each output a few hidden spikes
        model.layers[0].weight.normal_(0.06, 0.1)
        model.layers[1].weight.normal_(0.015, 0.03)
    return single_spike(model)


def run_rule(rule: str, seed: int, args, data) -> dict:
    from snn2hw.learning.spike_time import first_spike_cross_entropy, predict_first_spike
    from snn2hw.train.trainer import Callback, Trainer, TrainerConfig, predict_counts

    (xtr, ytr), (xva, yva), (xte, yte) = data
    model = build(args.hidden, seed, rule)
    best = {"val_accuracy": -1.0}

    class Keep(Callback):
        def on_epoch_end(self, trainer, row):
            if row["val_accuracy"] > best["val_accuracy"]:
                best.update(val_accuracy=row["val_accuracy"], epoch=row["epoch"], state=copy.deepcopy(model.state_dict()))

    if rule == "bptt":
        cfg = TrainerConfig(epochs=args.epochs, batch_size=32, lr=args.lr_bptt, scheduler="cosine", seed=seed,
                            progress=False, tensorboard=False)
        trainer = Trainer(model, cfg, callbacks=[Keep()])
        decode = predict_counts
    else:
        cfg = TrainerConfig(epochs=args.epochs, batch_size=32, lr=args.lr_spike, scheduler="cosine", seed=seed,
                            progress=False, tensorboard=False, rule="spike-time", rule_options={"tau0": 2.0})
        trainer = Trainer(model, cfg, loss_fn=first_spike_cross_entropy, predict_fn=predict_first_spike,
                          callbacks=[Keep()])
        decode = predict_first_spike
    trainer.fit((xtr, ytr), val=(xva, yva))
    model.load_state_dict(best["state"])
    with torch.no_grad():
        float_acc = float((decode(model(xte)) == yte).float().mean())
    row = {"rule": rule, "seed": seed, "best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
           "test_float_accuracy": float_acc,
           "test_deployed_accuracy": float((_deployed_predictions(model, xte, decode) == yte).float().mean()),
           "time_per_epoch_s": statistics.median(r["time_s"] for r in trainer.history),
           "history": [{k: r.get(k) for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time_s")}
                       for r in trainer.history]}
    if rule == "spike-time":
        from snn2hw.learning import make_rule

        with torch.no_grad():
            t = make_rule("spike-time").output_times(model, xte)
        row["test_relaxation_accuracy"] = float((t.argmin(1) == yte).float().mean())
    print(f"  {rule:10s} seed {seed}: float {100 * row['test_float_accuracy']:.2f}%  deployed "
          f"{100 * row['test_deployed_accuracy']:.2f}%  (epoch {row['best_epoch']}, {row['time_per_epoch_s']:.1f} s/epoch)",
          flush=True)
    return row


def timing(args) -> dict:
    """One epoch of each rule on the first ``--timing-points`` training points, interleaved ``--timing-reps``
    times (load from other processes then affects both alike); median and min seconds, and the ratio."""
    from snn2hw.learning.spike_time import first_spike_cross_entropy, predict_first_spike
    from snn2hw.models import yinyang as Y
    from snn2hw.train.trainer import Trainer, TrainerConfig

    x, y = Y.load("train", size=args.timing_points)
    times = {"spike-time": [], "bptt": []}
    for _ in range(args.timing_reps):
        for rule in times:
            model = build(args.hidden, 0, rule)
            kw = {} if rule == "bptt" else {"loss_fn": first_spike_cross_entropy, "predict_fn": predict_first_spike}
            cfg = TrainerConfig(epochs=1, batch_size=32, lr=1e-3, progress=False, tensorboard=False, rule=rule)
            t0 = time.perf_counter()
            Trainer(model, cfg, **kw).fit((x, y))
            times[rule].append(time.perf_counter() - t0)
    out = {r: {"median_s": statistics.median(v), "min_s": min(v), "all_s": v} for r, v in times.items()}
    out["ratio_spike_time_to_bptt_median"] = out["spike-time"]["median_s"] / out["bptt"]["median_s"]
    out["points"], out["env"] = args.timing_points, _env()
    print(f"epoch of {args.timing_points} points: spike-time {out['spike-time']['median_s']:.2f} s, "
          f"bptt {out['bptt']['median_s']:.2f} s (median of {args.timing_reps}, interleaved); "
          f"ratio {out['ratio_spike_time_to_bptt_median']:.2f}")
    return out


def table(rows: list) -> str:
    lines = ["rule        seeds  float test acc (mean +- sd)  deployed (sim) test acc  s/epoch (median)"]
    for rule in ("spike-time", "bptt"):
        rs = [r for r in rows if r["rule"] == rule]
        if not rs:
            continue
        f = [100 * r["test_float_accuracy"] for r in rs]
        d = [100 * r["test_deployed_accuracy"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(f"{rule:10s}  {len(rs):5d}  {statistics.mean(f):16.2f} +- {sd(f):4.2f}   "
                     f"{statistics.mean(d):14.2f} +- {sd(d):4.2f}  {statistics.median(r['time_per_epoch_s'] for r in rs):8.1f}")
    return "\n".join(lines)


def memory_worker(rule: str, hidden: int, batch: int) -> dict:
    """Peak extra resident memory and wall time of one training step (forward + backward) of ``rule`` on a
    Yin-Yang batch, in this (fresh) process: ``VmHWM`` after resetting it just before the step, minus
    ``VmRSS`` before (the method of ``bench_gated.py``'s memory section)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gated import _rss_kib

    from snn2hw.learning import make_rule
    from snn2hw.learning.spike_time import first_spike_cross_entropy
    from snn2hw.models import yinyang as Y
    from snn2hw.train.trainer import _default_loss

    x, y = Y.load("train", size=batch)
    model = build(hidden, 0, rule)
    rule_obj = make_rule(rule)
    loss = _default_loss if rule == "bptt" else first_spike_cross_entropy
    rule_obj.setup(model)
    rule_obj.compute_gradients(model, x[:4], y[:4], loss, {})  # warm-up: lazy allocations outside the measured step
    model.zero_grad()
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    rule_obj.compute_gradients(model, x, y, loss, {})
    wall = time.perf_counter() - t0
    return {"rule": rule, "batch": batch, "steps": int(x.shape[1]), "extra_rss_mib": (_rss_kib("VmHWM") - before) / 1024,
            "step_wall_s": wall}


def memory(args) -> dict:
    import subprocess

    rows = []
    for _ in range(args.timing_reps):
        for rule in args.rules:
            cmd = [sys.executable, __file__, "--memory-worker", rule, str(args.hidden), str(args.memory_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]}", flush=True)
    summary = {r: {"extra_rss_mib_median": statistics.median(x["extra_rss_mib"] for x in rows if x["rule"] == r),
                   "step_wall_s_median": statistics.median(x["step_wall_s"] for x in rows if x["rule"] == r)}
               for r in args.rules}
    return {"rows": rows, "summary": summary, "env": _env(), "argv": sys.argv[1:]}


def recipe(args) -> dict:
    """The ``snn2hw train --task yinyang`` recipe for each seed and rule (rules interleaved per seed)."""
    from snn2hw.learning.experiment import train_task

    runs = []
    for seed in args.seeds:
        for rule in args.rules:
            lr = args.lr_bptt if rule == "bptt" else args.lr_spike
            cfg = {"data": {"train": args.train}, "model": {"hidden": args.hidden}, "trainer": {"lr": lr}}
            r = train_task("yinyang", rule, cfg,
                           epochs=args.epochs, seed=seed, out=Path(args.recipe_out) / f"{rule}-lr{lr:g}-s{seed}")
            row = {"rule": rule, "seed": seed, "lr": lr, "best_epoch": r["best_epoch"], "val_accuracy": r["float_val_accuracy"],
                   "test_float_accuracy": r["float_test_accuracy"], "test_deployed_accuracy": r["deployed_test_accuracy"],
                   "time_per_epoch_s": r["time_per_epoch_s"], "peak_memory_mb": r["peak_memory_mb"],
                   "loadavg": r["environment"]["loadavg"], "history": r["history"]}
            runs.append(row)
            print(f"  {rule:10s} seed {seed}: float {100 * row['test_float_accuracy']:.2f}%  deployed "
                  f"{100 * row['test_deployed_accuracy']:.2f}%  (epoch {row['best_epoch']}, {row['time_per_epoch_s']:.1f} s/epoch, "
                  f"{row['peak_memory_mb']:.0f} MB)", flush=True)
    return {"task": f"Yin-Yang, snn2hw train recipe: first {args.train} of the 5000 training points, 1000 validation, "
                    "1000 test; 64 steps", "network": f"5-{args.hidden}-3 CUBA-LIF, du={DU}, dv={DV}, v_th=1",
            "argv": sys.argv[1:], "runs": runs, "env": _env()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--recipe: seeds")
    p.add_argument("--recipe", action="store_true", help="run the snn2hw train recipe (see above)")
    p.add_argument("--recipe-out", default="out/bench_spike_time", help="--recipe: run folders")
    p.add_argument("--rules", nargs="+", default=["spike-time", "bptt"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hidden", type=int, default=60)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--lr-spike", type=float, default=3e-3)
    p.add_argument("--lr-bptt", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing", action="store_true", help="only the interleaved time-per-epoch comparison")
    p.add_argument("--timing-points", type=int, default=500)
    p.add_argument("--timing-reps", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="only peak memory of one training step per rule "
                   "(fresh process each, --timing-reps interleaved repeats)")
    p.add_argument("--memory-batch", type=int, default=256)
    p.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--merge", nargs="+", help="combine per-seed JSON files into --out and print the table")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "spike_time.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        rule, hidden, batch = args.memory_worker
        print(json.dumps(memory_worker(rule, int(hidden), int(batch))))
        return {}
    if args.memory:
        result = memory(args)
        print(json.dumps(result["summary"], indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return result
    if args.timing:
        result = timing(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return result
    if args.recipe:
        result = recipe(args)
    elif args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        result = {**{k: v for k, v in parts[0].items() if k != "runs"}, "runs": [r for q in parts for r in q["runs"]],
                  "envs": [q["env"] for q in parts], "argvs": [q["argv"] for q in parts]}
    else:
        from snn2hw.models import yinyang as Y

        data = (Y.load("train", size=args.train), Y.load("val"), Y.load("test"))
        result = {"task": f"Yin-Yang (Kriener et al. 2021 recipe): first {args.train} of the 5000 training points, "
                          "1000 validation, 1000 test; 64 steps",
                  "network": f"5-{args.hidden}-3 CUBA-LIF, du={DU}, dv={DV}, v_th=1", "argv": sys.argv[1:],
                  "runs": [run_rule(rule, args.seed, args, data) for rule in args.rules], "env": _env()}
    print("\n" + table(result["runs"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
