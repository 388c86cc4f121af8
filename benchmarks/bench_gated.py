"""Huh & Sejnowski's gated-synapse QIF network on delayed-memory XOR: learning, memory vs T, deployment.

Sections (``--sections``, default all):

* ``train``: per seed, a ``GatedQIF`` (3 inputs, ``--hidden`` QIF neurons, 1 output) trained with the
  ``gated`` rule (``--mode``, default discrete) by ``Trainer`` (Adam, batch 32, grad-norm clip 1) on
  ``--train`` generated trials; the epoch with the lowest validation loss (``--val`` trials of another
  seed) is kept and scored on ``--test`` trials of a third seed. Success = test accuracy >= 95%.
  One extra run with ``mode="adjoint"`` (seed 0) shows the same learning curve and its time per epoch.
* ``memory``: peak extra resident memory of one forward + backward pass vs T, discrete vs adjoint
  (fresh subprocess per point; peak RSS counter reset just before the pass, ``VmHWM - VmRSS``; glibc
  serves >= 1 MiB allocations by mmap so freed tensors leave RSS), with the pass's wall time and the
  bytes autograd saved for backward (``saved_tensors_hooks``).
* ``control`` (not in the default set): the same BPTT fine-tuning from the LIF mapping of an *untrained*
  ``GatedQIF`` (written with ``--out`` to a separate file).
* ``pc_ae`` / ``delayed_xor`` (not in the default set): the ``snn2hw train`` recipe of that task
  (``snn2hw.models.sequence_tasks``; what ``snn2hw train --task T --rule gated --seed S`` runs) for each
  seed, with float and deployed (LIF mapping) scores, time per epoch and peak memory; for ``pc_ae`` also
  the baselines: predicting zero (NMSE 1), predicting the training mean, and the best linear read-out
  of the synaptically filtered input spikes (no spiking bottleneck). Control per seed: the same
  deployment (LIF mapping, read-out refitted) of the seed's *untrained* network. Written to ``--out``.
* ``deploy``: each trained network mapped onto snn2hw's CUBA-LIF layers (``GatedQIF.to_lif_network``),
  accuracy of the float LIF network and of the compiled network on the bit-accurate simulator; then the
  LIF network fine-tuned with surrogate-gradient BPTT (``--finetune-epochs``) and deployed again.

Prints tables and writes ``benchmarks/results/gated.json``. The machine load is recorded: on a shared
machine times are inflated, accuracies are not.

    python benchmarks/bench_gated.py [--seeds 0 1 2] [--epochs 10] [--hidden 40] [--sections train memory deploy]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {"load_avg": os.getloadavg(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def train_one(seed: int, mode: str, args, data) -> dict:
    from snn2hw.models import delayed_xor as X
    from snn2hw.nn.gated import GatedQIF
    from snn2hw.train.trainer import Callback, Trainer, TrainerConfig

    (xtr, ytr), (xva, yva), (xte, yte) = data
    torch.manual_seed(seed)
    model = GatedQIF(3, args.hidden, 1, tau_v=10.0, tau_s=10.0, i0=-0.05, input_gain=2.0, rec_gain=1.0)
    curve, best = [], {"val_loss": float("inf")}

    class Track(Callback):
        def on_epoch_end(self, trainer, row):
            with torch.no_grad():
                o = model(xva)
            vl, va = float(X.masked_mse(o, yva)), X.accuracy(o, yva)
            curve.append({"epoch": row["epoch"], "loss": row["loss"], "val_loss": vl, "val_accuracy": va,
                          "time_s": row["time_s"]})
            if vl < best["val_loss"]:
                best.update(val_loss=vl, epoch=row["epoch"], state=copy.deepcopy(model.state_dict()))

    cfg = TrainerConfig(epochs=args.epochs, batch_size=32, lr=1e-2, grad_clip=1.0, seed=seed, progress=False,
                        tensorboard=False, rule="gated", rule_options={"mode": mode})
    t0 = time.perf_counter()
    Trainer(model, cfg, loss_fn=X.masked_mse, predict_fn=False, callbacks=[Track()]).fit((xtr, ytr))
    wall = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    with torch.no_grad():
        acc = X.accuracy(model(xte), yte)
    return {"seed": seed, "mode": mode, "test_accuracy": acc, "best_epoch": best["epoch"],
            "time_per_epoch_s": statistics.median(r["time_s"] for r in curve), "wall_s": wall, "curve": curve,
            "model": model}


def section_train(args, data) -> tuple[list, list]:
    runs = [train_one(s, args.mode, args, data) for s in args.seeds]
    extra = [train_one(args.seeds[0], "adjoint", args, data)] if args.mode == "discrete" and not args.no_adjoint_run else []
    return runs, extra


# --- memory vs T (each point in a fresh process) -----------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return -1


def memory_worker(mode: str, steps: int, hidden: int, batch: int) -> dict:
    from snn2hw.nn.gated import GatedQIF

    torch.manual_seed(0)
    model = GatedQIF(3, hidden, 1, i0=0.05, input_gain=2.0, mode=mode)
    x = (torch.rand(batch, steps, 3) < 0.1).float()
    small = (torch.rand(batch, 8, 3) < 0.1).float()
    model(small).sum().backward()  # warm-up: lazy allocations outside the measured pass
    model.zero_grad()
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    before = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    (out ** 2).sum().backward()
    wall = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return {"mode": mode, "steps": steps, "extra_rss_mib": (peak - before) / 1024 if reset else None,
            "saved_for_backward_mib": saved[0] / 2**20, "wall_s": wall,
            "recomputed_steps": model.last_adjoint_stats.recomputed_steps if mode == "adjoint" else 0,
            "peak_snapshots": model.last_adjoint_stats.peak_snapshots if mode == "adjoint" else 0}


def section_memory(args) -> list:
    rows = []
    for steps in args.memory_steps:
        for mode in ("discrete", "adjoint"):
            cmd = [sys.executable, __file__, "--memory-worker", mode, str(steps), str(args.memory_hidden),
                   str(args.memory_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  memory T={steps:5d} {mode:8s} {rows[-1]}", flush=True)
    return rows


# --- the snn2hw train recipes, over seeds -------------------------------------------------------------
def section_task(task: str, args) -> dict:
    from snn2hw.learning.experiment import train_task
    from snn2hw.models import pc_autoencoder as P
    from snn2hw.models.sequence_tasks import get_task

    runs = []
    for seed in args.seeds:
        r = train_task(task, "gated", {}, epochs=args.task_epochs, seed=seed, out=Path(args.task_out) / f"{task}_s{seed}")
        row = {k: v for k, v in r.items() if k not in ("model", "history")} | {"history": r["history"]}
        # control: the same deployment (LIF mapping + read-out refit) of the *untrained* network of this seed
        t = get_task(task)
        data = t.load()
        untrained = t.setup("gated", {}, seed).model
        scores, _ = t.setup("gated", {}, seed).deploy(untrained, *data["test"], data["train"])
        row["control_untrained"] = {k: v for k, v in scores.items() if k != "deployment"}
        runs.append(row)
        print(f"  {task} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()
                                                   if k.startswith(("float_test", "deployed_test", "mapped_float"))
                                                   and isinstance(v, float)), flush=True)
        print(f"    control (untrained network, same deployment): {row['control_untrained']}", flush=True)
    out = {"task": task, "runs": runs}
    if task == "pc_ae":
        d = get_task("pc_ae").load()
        (xtr, ytr), (xte, yte) = d["train"], d["test"]
        mean = torch.nanmean(ytr.reshape(-1, ytr.shape[-1]), dim=0)
        out["baselines_test_nmse"] = {"zero": P.nmse(torch.zeros_like(yte), yte),
                                      "training_mean": P.nmse(mean.expand_as(yte), yte),
                                      "linear_readout_of_input_spikes": P.linear_baseline(xtr, ytr, xte, yte, 5.0)}
        print(f"  baselines (test NMSE): {out['baselines_test_nmse']}")
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, float) and k.startswith(("float_", "deployed_", "mapped_", "time_per", "peak_"))})
    out["summary"] = {k: {"mean": statistics.mean(r[k] for r in runs),
                          "sd": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0,
                          "values": [r[k] for r in runs]} for k in keys}
    return out


# --- deployment -----------------------------------------------------------------------------------------
def section_deploy(args, runs, data) -> list:
    from snn2hw.models import delayed_xor as X
    from snn2hw.nn.gated_deploy import deployed_readout
    from snn2hw.train.trainer import Trainer, TrainerConfig

    (xtr, ytr), (xva, yva), (xte, yte) = data
    rows = []
    for run in runs:
        net = run["model"].to_lif_network()
        with torch.no_grad():
            float_acc = X.accuracy(net(xte), yte)
        sim_acc = X.accuracy(torch.from_numpy(deployed_readout(net, xte)), yte)
        row = {"seed": run["seed"], "qif_test_accuracy": run["test_accuracy"], "lif_float_accuracy": float_acc,
               "lif_deployed_accuracy": sim_acc}
        if args.finetune_epochs > 0:
            cfg = TrainerConfig(epochs=args.finetune_epochs, batch_size=32, lr=2e-3, grad_clip=1.0, seed=run["seed"],
                                progress=False, tensorboard=False)
            Trainer(net, cfg, loss_fn=X.masked_mse, predict_fn=False).fit((xtr, ytr))
            with torch.no_grad():
                row["finetuned_float_accuracy"] = X.accuracy(net(xte), yte)
            row["finetuned_deployed_accuracy"] = X.accuracy(torch.from_numpy(deployed_readout(net, xte)), yte)
        rows.append(row)
        print(f"  deploy seed {run['seed']}: {row}", flush=True)
    return rows


def section_control(args, data) -> list:
    """BPTT for ``--finetune-epochs`` on the same LIF architecture mapped from an *untrained* GatedQIF:
    does the QIF-trained initialisation matter for the fine-tuned result?"""
    from snn2hw.models import delayed_xor as X
    from snn2hw.nn.gated import GatedQIF
    from snn2hw.nn.gated_deploy import deployed_readout
    from snn2hw.train.trainer import Trainer, TrainerConfig

    (xtr, ytr), _, (xte, yte) = data
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        net = GatedQIF(3, args.hidden, 1, tau_v=10.0, tau_s=10.0, i0=-0.05, input_gain=2.0, rec_gain=1.0).to_lif_network()
        cfg = TrainerConfig(epochs=args.finetune_epochs, batch_size=32, lr=2e-3, grad_clip=1.0, seed=seed,
                            progress=False, tensorboard=False)
        Trainer(net, cfg, loss_fn=X.masked_mse, predict_fn=False).fit((xtr, ytr))
        with torch.no_grad():
            fa = X.accuracy(net(xte), yte)
        rows.append({"seed": seed, "untrained_init_bptt_float_accuracy": fa,
                     "untrained_init_bptt_deployed_accuracy": X.accuracy(torch.from_numpy(deployed_readout(net, xte)), yte)})
        print(f"  control seed {seed}: {rows[-1]}", flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=40)
    p.add_argument("--mode", choices=["discrete", "adjoint"], default="discrete")
    p.add_argument("--no-adjoint-run", action="store_true")
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--test", type=int, default=512)
    p.add_argument("--sections", nargs="+", default=["train", "memory", "deploy"])
    p.add_argument("--memory-steps", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--memory-hidden", type=int, default=256)
    p.add_argument("--memory-batch", type=int, default=64)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gated.json"))
    p.add_argument("--task-epochs", type=int, default=None, help="pc_ae/delayed_xor sections: override the recipe's epochs")
    p.add_argument("--task-out", default="out/bench_gated", help="pc_ae/delayed_xor sections: run folders")
    p.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        mode, steps, hidden, batch = args.memory_worker
        print(json.dumps(memory_worker(mode, int(steps), int(hidden), int(batch))))
        return {}
    tasks = [t for t in ("pc_ae", "delayed_xor") if t in args.sections]
    if tasks:  # the snn2hw train recipes only
        result = {"env_start": _env(), "argv": sys.argv[1:], **{t: section_task(t, args) for t in tasks},
                  "env_end": _env()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.out}")
        return result
    from snn2hw.models import delayed_xor as X

    data = (X.make(args.train, seed=100), X.make(args.val, seed=101), X.make(args.test, seed=102))
    result = {"task": f"delayed-memory XOR (snn2hw.models.delayed_xor defaults, T={data[0][0].shape[1]}), "
                      f"{args.train}/{args.val}/{args.test} train/val/test trials",
              "network": f"GatedQIF 3-{args.hidden}(recurrent)-1, tau_v = tau_s = 10 steps, delta = 1 rad",
              "env_start": _env(), "argv": sys.argv[1:]}
    runs, extra = [], []
    if "train" in args.sections:
        runs, extra = section_train(args, data)
        accs = [r["test_accuracy"] for r in runs]
        result["train"] = [{k: v for k, v in r.items() if k != "model"} for r in runs + extra]
        result["summary"] = {"mode": args.mode, "seeds": len(runs), "test_accuracy_mean": statistics.mean(accs),
                             "test_accuracy_min": min(accs), "success_rate": sum(a >= 0.95 for a in accs) / len(accs),
                             "time_per_epoch_s_median": statistics.median(r["time_per_epoch_s"] for r in runs)}
        print("\nrule gated  mode      seed  test acc  best epoch  s/epoch")
        for r in runs + extra:
            print(f"            {r['mode']:9s} {r['seed']:4d}  {100 * r['test_accuracy']:7.2f}%  {r['best_epoch']:10d}  "
                  f"{r['time_per_epoch_s']:7.1f}")
    if "memory" in args.sections:
        result["memory"] = section_memory(args)
        print("\n    T  mode      extra RSS MiB  saved-for-backward MiB  fwd+bwd s  snapshots")
        for r in result["memory"]:
            print(f"{r['steps']:5d}  {r['mode']:8s}  {r['extra_rss_mib'] or float('nan'):13.1f}  "
                  f"{r['saved_for_backward_mib']:22.1f}  {r['wall_s']:9.2f}  {r['peak_snapshots']:9d}")
    if "deploy" in args.sections and runs:
        result["deploy"] = section_deploy(args, runs, data)
        print("\nseed  QIF test  LIF float  LIF deployed  fine-tuned float  fine-tuned deployed")
        for r in result["deploy"]:
            print(f"{r['seed']:4d}  {100 * r['qif_test_accuracy']:7.2f}%  {100 * r['lif_float_accuracy']:8.2f}%  "
                  f"{100 * r['lif_deployed_accuracy']:11.2f}%  {100 * r.get('finetuned_float_accuracy', float('nan')):15.2f}%  "
                  f"{100 * r.get('finetuned_deployed_accuracy', float('nan')):18.2f}%")
    if "control" in args.sections:
        result["control"] = section_control(args, data)
    result["env_end"] = _env()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
