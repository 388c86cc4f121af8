"""FA, DFA, DECOLLE, e-prop and SuperSpike against BPTT: same network, same task, same data order.

For every (task, rule): the learning rate is chosen on the task's validation split (a short run per
candidate, seed 0), then ``--seeds`` full runs train on the training split with that rate; each trained
network is evaluated in float on the test split, compiled (``compile_graph(model.to_ir())``) and run on
the bit-accurate simulator for its deployed test accuracy (no quantization-aware fine-tuning: what the
rule's float network deploys as). Time per epoch is the trainer's (training only, no evaluation).

Tasks (``--tasks``):

* ``digits``: scikit-learn digits, 64-128-10 CUBA-LIF (``snn2hw.models.digits``), 24 steps; validation =
  a fixed 20% of the training split (the test split is untouched until the end).
* ``braille``: 24-128R-27 with a recurrent hidden layer (``snn2hw.models.braille``), 256 steps; validation
  = a fixed, per-letter 20% of the training split.
* ``mnist``: MNIST-10k (fixed 7000/1000/2000 split), 784-128-10 CUBA-LIF, 16 steps of regular-rate code.

Memory (``--memory``): peak extra resident memory of one ``compute_gradients`` call (batch 32, 128
recurrent hidden neurons, 27 outputs) as the number of steps T grows, one fresh subprocess per
(rule, T): the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) after the model and input
exist, and the figure is ``VmHWM - VmRSS(before)``; allocations of 1 MiB or more are served by mmap so
that freed tensors leave RSS at once. BPTT's grows with T; the online rules' should not.

Alignment (``--alignment RULE[:JSON] ...``): each rule trains ``--epochs`` epochs (seed 0) on the first task's
training part; before and after, its weight update on a fixed batch is compared with BPTT's gradient of the
same loss (SuperSpike: its van Rossum loss to the label raster): cosine and norm ratio per layer, silent
neurons, rates. This is the measurement behind the "why each rule trails BPTT" section of the docs.

The machine is shared: the JSON records the load average before and after every run, the thread count
and versions; under load the times are inflated for every rule alike (rules of one task run
interleaved by seed, so load hits them similarly), so compare ratios to BPTT in the same run.

Usage::

    python benchmarks/bench_online_rules.py [--tasks digits braille mnist] [--rules bptt fa dfa decolle eprop superspike]
        [--seeds 3] [--epochs 20] [--hp-epochs 5] [--lrs 0.002 0.005 0.02] [--threads 1]
        [--memory] [--steps-list 64 256 1024] [--out benchmarks/results/online_rules.json]
    python benchmarks/bench_online_rules.py --memory-only --rules bptt eprop decolle superspike --steps-list 64 256 1024
    python benchmarks/bench_online_rules.py --tasks digits --alignment bptt fa superspike --epochs 10 --lrs 0.005
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = ["bptt", "fa", "dfa", "decolle", "eprop", "superspike"]


# --- tasks --------------------------------------------------------------------------------------------
def _val_split(y, fraction=0.2, seed=0):
    """A fixed, per-class split of the training indices into (train, validation): the Braille module's
    ``validation_split`` (any labels), so that both hold out the same recordings."""
    from snn2hw.models.braille import validation_split

    return validation_split(y, fraction, seed)


def load_task(name: str):
    """dict: data splits (x, y), model builder, loss, batch size, steps, rule options."""
    import torch

    from snn2hw.nn.layers import SpikingSequential
    from snn2hw.train.losses import count_cross_entropy

    if name == "digits":
        from snn2hw.models import digits

        x, y, x_te, y_te = digits.load()
        tr, va = _val_split(y)
        return dict(train=(x[tr], y[tr]), val=(x[va], y[va]), full=(x, y), test=(x_te, y_te),
                    build=digits.build_model, loss=lambda o, t: count_cross_entropy(o, t, scale=0.5),
                    batch=64, steps=digits.STEPS, net="64-128-10")
    if name == "braille":
        from snn2hw.models import braille

        x, y, x_te, y_te = braille.load()
        tr, va = _val_split(y)
        return dict(train=(x[tr], y[tr]), val=(x[va], y[va]), full=(x, y), test=(x_te, y_te),
                    build=braille.build_model, loss=braille.loss_fn, batch=32, steps=braille.STEPS,
                    net="24-128R-27 (recurrent hidden)")
    if name == "mnist":
        from snn2hw.encode import regular_rate
        from snn2hw.models import mnist10k

        steps = 16
        enc = lambda s: (lambda xy: (regular_rate(xy[0], steps), xy[1]))(mnist10k.load(s))  # noqa: E731
        train, val, test = enc("train"), enc("val"), enc("test")
        full = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))

        def build(seed=0):
            torch.manual_seed(seed)
            return SpikingSequential.build([784, 128, 10], du=0.25, dv=0.1, v_th=1.0, weight_gain=3.0)

        return dict(train=train, val=val, full=full, test=test, build=build,
                    loss=lambda o, t: count_cross_entropy(o, t, scale=0.5), batch=64, steps=steps,
                    net="784-128-10")
    raise SystemExit(f"unknown task {name!r}")


def rule_options(rule: str, task: dict) -> dict:
    if rule == "superspike":
        # the label's output neuron should fire at every step from step 2 (the two hops' delay): chosen on
        # digits' validation split (benchmarks/diag_superspike_digits.py: 96.2 % against 76.3 % for every 3rd step)
        return {"target_interval": 1, "target_offset": 2}
    return {}


# --- one training run ---------------------------------------------------------------------------------
def evaluate(model, x, y, batch=256):
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).sum(1).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def deployed_accuracy(model, x, y) -> float:
    import numpy as np
    import torch

    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph

    art = compile_graph(model.to_ir())
    res = sim.run(art, x.numpy().astype(np.int64), count_events=False)
    counts = torch.from_numpy(res.spikes[art.graph.outputs[0]].astype(np.int64)).sum(1)
    return float((counts.argmax(1) == y).float().mean())


EXTRA_OPTIONS: dict = {}  # rule -> options from --set


def label(rule: str) -> str:
    """A rule's name in the results, with the options --set gave it."""
    extra = EXTRA_OPTIONS.get(rule)
    return rule if not extra else rule + "{" + ",".join(f"{k}={v}" for k, v in extra.items()) + "}"


def train_once(task: dict, rule: str, lr: float, epochs: int, seed: int, train, evals: dict, deploy: bool):
    from snn2hw.train.trainer import Trainer, TrainerConfig

    model = task["build"](seed)
    cfg = TrainerConfig(epochs=epochs, batch_size=task["batch"], lr=lr, optimizer="adam", scheduler="cosine",
                        seed=seed, progress=False, tensorboard=False, rule=rule,
                        rule_options={**rule_options(rule, task), **EXTRA_OPTIONS.get(rule, {})})
    t0 = time.perf_counter()
    hist = Trainer(model, cfg, loss_fn=task["loss"]).fit(train)
    out = {"rule": label(rule), "lr": lr, "epochs": epochs, "seed": seed, "train_s": time.perf_counter() - t0,
           "epoch_s": [r["time_s"] for r in hist], "loss": [r["loss"] for r in hist],
           "train_accuracy": hist[-1].get("accuracy"), "load_after": os.getloadavg()[0],
           # the whole process's peak so far (data, every earlier run): an upper bound, not this run's own;
           # the per-batch memory against T is --memory
           "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for name, (x, y) in evals.items():
        out[f"{name}_accuracy"] = evaluate(model, x, y)
    if deploy:
        x, y = evals["test"]
        out["deployed_accuracy"] = deployed_accuracy(model, x, y)
    return out


# --- the spike-raster task (SuperSpike's own) ------------------------------------------------------------
def raster_task(rules: list, epochs: int, seeds: int, lr: float) -> list:
    """Learn a generated target raster: 50 frozen Poisson inputs (rate 0.05/step), T = 100 steps, 50-hidden
    LIF layer, 10 outputs that must each fire at 3 given, randomly drawn steps; 4 such (input, target) pairs.
    BPTT minimises the same van Rossum distance (tau = 5 steps) with autograd. The deployed distance is
    the compiled network's on the simulator."""
    import numpy as np
    import torch

    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph
    from snn2hw.nn.layers import LIFDense, SpikingSequential
    from snn2hw.train.losses import van_rossum_distance
    from snn2hw.train.trainer import Trainer, TrainerConfig

    tau, steps = 5.0, 100
    g = torch.Generator().manual_seed(1234)
    x = (torch.rand(4, steps, 50, generator=g) < 0.05).float()
    target = torch.zeros(4, steps, 10)
    for b in range(4):
        for k in range(10):
            target[b, torch.randperm(steps - 20, generator=g)[:3] + 10, k] = 1.0
    rows = []
    for seed in range(seeds):
        for spec in rules:
            rule, _, feedback = spec.partition(":")
            torch.manual_seed(seed)
            model = SpikingSequential([LIFDense(50, 50, du=0.3, dv=0.2, weight_gain=2.0),
                                       LIFDense(50, 10, du=0.3, dv=0.2, weight_gain=1.0)])
            opts = {"tau": tau, "feedback": feedback} if rule == "superspike" else {}
            cfg = TrainerConfig(epochs=epochs, batch_size=4, lr=lr, optimizer="adam", seed=seed, progress=False,
                                tensorboard=False, rule=rule, rule_options=opts)
            with torch.no_grad():
                start = float(van_rossum_distance(model(x), target, tau=tau))
            t0 = time.perf_counter()
            Trainer(model, cfg, loss_fn=lambda o, t: van_rossum_distance(o, t, tau=tau), predict_fn=False).fit((x, target))
            train_s = time.perf_counter() - t0
            with torch.no_grad():
                final = float(van_rossum_distance(model(x), target, tau=tau))
            art = compile_graph(model.to_ir())
            out = sim.run(art, x.numpy().astype(np.int64), count_events=False).spikes[art.graph.outputs[0]]
            deployed = float(van_rossum_distance(torch.from_numpy(out.astype(np.float32)), target, tau=tau))
            rows.append({"rule": spec, "seed": seed, "epochs": epochs, "lr": lr, "start": start, "final": final,
                         "deployed": deployed, "train_s": train_s})
            print(f"[raster] seed {seed} {spec:<22} van Rossum D^2 {start:.2f} -> {final:.2f} (deployed {deployed:.2f})"
                  f"  {train_s:.1f} s", flush=True)
    return rows


# --- alignment with BPTT (why a rule trails it) ----------------------------------------------------------
def reference_loss(rule: str, task: dict, options: dict):
    """The loss whose BPTT gradient a rule's update is compared with: the task's loss, or for SuperSpike the
    van Rossum distance to its label raster (the loss SuperSpike descends; the task's loss is not used)."""
    if rule != "superspike":
        return task["loss"]
    from snn2hw.learning.superspike import label_raster
    from snn2hw.train.losses import van_rossum_distance

    iv, off, tau = options.get("target_interval", 4), options.get("target_offset", 2), options.get("tau", 10.0)
    return lambda o, y: van_rossum_distance(o, label_raster(y, o.shape[1], o.shape[2], iv, off, o.dtype), tau=tau)


def alignment_probe(model, rule: str, options: dict, loss_fn, x, y) -> dict:
    """Per layer: the cosine between the rule's weight update and BPTT's gradient of ``loss_fn`` on the same
    weights and batch, each update's norm relative to BPTT's, and the fraction of neurons that never spike on
    the batch (silent neurons get almost no surrogate derivative, under any rule)."""
    import torch

    from snn2hw.learning import make_rule

    def grads(name, opts):
        r = make_rule(name, **opts)
        r.setup(model)
        model.zero_grad(set_to_none=True)
        r.compute_gradients(model, x, y, loss_fn, {})
        return [l.weight.grad.detach().clone() for l in model.layers]

    ref, got = grads("bptt", {}), grads(rule, options)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        outs = model(x, return_all=True)
    cos = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) for a, b in zip(got, ref)]
    return {"cosine_vs_bptt": cos, "norm_vs_bptt": [float(a.norm() / b.norm().clamp_min(1e-30)) for a, b in zip(got, ref)],
            "silent_fraction": [float((o.sum((0, 1)) == 0).float().mean()) for o in outs],
            "rate": [float(o.mean()) for o in outs]}


def alignment(name: str, specs: list, epochs: int, lrs: list, probe_samples: int = 256) -> list:
    """Each rule (``RULE`` or ``RULE:json-options``) trains ``epochs`` epochs (seed 0) on the task's training
    split; its update is compared with BPTT's gradient of the same loss before training and after."""
    import torch

    from snn2hw.train.trainer import Trainer, TrainerConfig

    task = load_task(name)
    x, y = task["train"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=g)[:probe_samples]
    xp, yp = x[idx], y[idx]
    rows = []
    for spec, lr in zip(specs, lrs):
        rule, _, extra = spec.partition(":")
        opts = {**rule_options(rule, task), **EXTRA_OPTIONS.get(rule, {}), **(json.loads(extra) if extra else {})}
        loss = reference_loss(rule, task, opts)
        model = task["build"](0)
        before = alignment_probe(model, rule, opts, loss, xp, yp)
        cfg = TrainerConfig(epochs=epochs, batch_size=task["batch"], lr=lr, optimizer="adam", scheduler="cosine",
                            seed=0, progress=False, tensorboard=False, rule=rule, rule_options=opts)
        Trainer(model, cfg, loss_fn=loss).fit(task["train"])
        after = alignment_probe(model, rule, opts, loss, xp, yp)
        val = evaluate(model, *task["val"])
        rows.append({"task": name, "rule": spec, "options": opts, "lr": lr, "epochs": epochs, "val_accuracy": val,
                     "before": before, "after": after})
        fmt = lambda v: "/".join(f"{a:.2f}" for a in v)  # noqa: E731
        print(f"[{name}] align {spec:<28} cos vs bptt (per layer) {fmt(before['cosine_vs_bptt'])} -> "
              f"{fmt(after['cosine_vs_bptt'])}  silent {fmt(after['silent_fraction'])}  val {100 * val:.1f} %",
              flush=True)
    return rows


# --- interleaved timing ---------------------------------------------------------------------------------
def timing(name: str, rules: list, rounds: int) -> list:
    """Median time of one training batch (``compute_gradients`` + zeroing), rules interleaved round by round so
    that load from other processes hits them alike; per epoch = per batch x batches per epoch."""
    import math

    import torch

    from snn2hw.learning import make_rule

    task = load_task(name)
    x, y = task["full"]
    xb, yb = x[:task["batch"]], y[:task["batch"]]
    setups = []
    for rule in rules:
        model = task["build"](0)
        r = make_rule(rule, **rule_options(rule, task))
        r.setup(model)
        r.compute_gradients(model, xb[:, :4], yb, task["loss"], {})  # warm-up
        setups.append((rule, model, r, []))
    for _ in range(rounds):
        for rule, model, r, times in setups:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            r.compute_gradients(model, xb, yb, task["loss"], {})
            times.append(time.perf_counter() - t0)
    batches = math.ceil(len(y) / task["batch"])
    base = statistics.median(setups[0][3]) if setups[0][0] == "bptt" else None
    rows = []
    for rule, _, _, times in setups:
        med = statistics.median(times)
        rows.append({"task": name, "rule": rule, "batch_s_median": med, "batch_s_min": min(times),
                     "batch_s_max": max(times), "epoch_s_est": med * batches, "vs_bptt": med / base if base else None,
                     "rounds": rounds, "load": os.getloadavg()[0]})
        print(f"[{name}] timing {rule:<10} {med:.3f} s/batch (min {min(times):.3f}, max {max(times):.3f})  "
              f"~{med * batches:.1f} s/epoch" + (f"  {med / base:.2f}x bptt" if base else ""), flush=True)
    return rows


# --- memory worker --------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_worker(rule: str, steps: int, threads: int) -> dict:
    import torch

    from snn2hw.learning import make_rule
    from snn2hw.models import braille
    from snn2hw.train.losses import count_cross_entropy

    torch.set_num_threads(threads)
    model = braille.build_model(0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(32, steps, 24, generator=g) < 0.05).float()
    y = torch.randint(0, 27, (32,), generator=g)
    r = make_rule(rule, **({"target_interval": 8} if rule == "superspike" else {}))
    r.setup(model)
    loss = lambda o, t: count_cross_entropy(o, t, scale=0.1)  # noqa: E731
    r.compute_gradients(model, x[:, :4], y, loss, {})  # warm-up: lazy state, allocator
    model.zero_grad(set_to_none=True)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM - VmRSS (clear_refs)"
    except OSError:
        method = "ru_maxrss (clear_refs not writable)"
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    r.compute_gradients(model, x, y, loss, {})
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"rule": rule, "steps": steps, "peak_extra_mib": (peak - before) / 1024, "batch_s": dt, "method": method}


def measure_memory(rules, steps_list, threads):
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": str(threads)}
    for steps in steps_list:
        for rule in rules:
            cmd = [sys.executable, __file__, "--memory-worker", rule, str(steps), "--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            if out.returncode != 0:
                raise RuntimeError(f"memory worker {rule} T={steps} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  memory {rule:<10} T={steps:<5} {row['peak_extra_mib']:8.1f} MiB  {row['batch_s']:.2f} s/batch",
                  flush=True)
    return rows


# --- main -----------------------------------------------------------------------------------------------
def _ms(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=["digits", "braille", "mnist"])
    ap.add_argument("--rules", nargs="+", default=RULES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (add seeds to an earlier run)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hp-epochs", type=int, default=5, help="epochs of each validation run")
    ap.add_argument("--lrs", nargs="+", type=float, default=[2e-3, 5e-3, 2e-2])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the online rules issue many small per-step ops, which one "
                         "thread runs fastest on a loaded machine; every rule gets the same)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory against T")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--steps-list", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "online_rules.json"))
    ap.add_argument("--raster", nargs="+", metavar="RULE[:FEEDBACK]",
                    help="run the spike-raster task for these rules (e.g. bptt superspike:symmetric superspike:random "
                         "superspike:uniform) with --epochs and --seeds; use --tasks with nothing to skip the others")
    ap.add_argument("--raster-lr", type=float, default=5e-3)
    ap.add_argument("--set", nargs=3, action="append", default=[], metavar=("RULE", "OPTION", "JSON"),
                    help="a rule option, e.g. --set eprop reset_in_trace true")
    ap.add_argument("--timing", type=int, metavar="ROUNDS", default=0,
                    help="only time one batch per rule, ROUNDS interleaved rounds per task (no training)")
    ap.add_argument("--markdown", nargs="+", metavar="JSON", help="print the results of these JSON files as a "
                    "Markdown table (with the command behind each row) and exit")
    ap.add_argument("--collect-recipe", nargs="+", metavar="RESULTS_JSON",
                    help="combine results.json files of `python -m snn2hw.models.braille --rule ...` runs (the module's "
                         "full recipe) into --out and print their table")
    ap.add_argument("--alignment", nargs="+", metavar="RULE[:JSON]",
                    help="train each rule --epochs epochs (seed 0, lr from --lrs: one value, or one per rule) on the first of "
                         "--tasks and compare its update with BPTT's gradient of the same loss, before and after")
    ap.add_argument("--memory-worker", nargs=2, metavar=("RULE", "STEPS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(a.threads)
    for rule, option, value in a.set:
        EXTRA_OPTIONS.setdefault(rule, {})[option] = json.loads(value)
    if a.markdown:
        print(markdown(a.markdown))
        return 0
    if a.collect_recipe:
        out = collect_recipe(a.collect_recipe)
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print(recipe_table(out))
        return 0
    if a.memory_worker:
        print(json.dumps(memory_worker(a.memory_worker[0], int(a.memory_worker[1]), a.threads)))
        return 0

    import snn2hw

    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads,
                          "torch": torch.__version__, "python": sys.version.split()[0],
                          "snn2hw": getattr(snn2hw, "__version__", "dev"),
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                          "load_before": os.getloadavg()},
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "tasks": {}, "memory": []}
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    if a.timing:
        result["timing"] = [row for name in a.tasks for row in timing(name, a.rules, a.timing)]
        save()
        print(format_table(result))
        return 0
    if a.alignment:
        lrs = a.lrs * len(a.alignment) if len(a.lrs) == 1 else a.lrs
        if len(lrs) != len(a.alignment):
            raise SystemExit("--alignment: give one --lrs value, or one per rule")
        result["alignment"] = alignment(a.tasks[0], a.alignment, a.epochs, lrs)
        save()
        return 0
    if a.raster:
        result["raster"] = raster_task(a.raster, a.epochs, a.seeds, a.raster_lr)
        save()
    if not a.memory_only:
        for name in a.tasks:
            task = load_task(name)
            entry = {"network": task["net"], "steps": task["steps"], "n_train": len(task["train"][1]),
                     "n_val": len(task["val"][1]), "n_test": len(task["test"][1]), "hp": {}, "runs": []}
            result["tasks"][name] = entry
            # 1. the learning rate per rule, on the validation split
            for rule in a.rules:
                if len(a.lrs) == 1:  # nothing to choose: the rate is given (say where it came from)
                    entry["hp"][label(rule)] = {"lr": a.lrs[0], "given": True}
                    continue
                scores = {}
                for lr in a.lrs:
                    r = train_once(task, rule, lr, a.hp_epochs, 0, task["train"], {"val": task["val"]}, False)
                    scores[lr] = r["val_accuracy"]
                    print(f"[{name}] hp {rule:<10} lr={lr:<7g} val {100 * r['val_accuracy']:.2f} %  "
                          f"{statistics.median(r['epoch_s']):.1f} s/epoch  load {r['load_after']:.1f}", flush=True)
                best = max(scores, key=lambda k: scores[k])
                entry["hp"][label(rule)] = {"val_accuracy_by_lr": {str(k): v for k, v in scores.items()}, "lr": best}
                save()
            # 2. full runs on train + validation, interleaved by seed
            for seed in range(a.seed_start, a.seed_start + a.seeds):
                for rule in a.rules:
                    lr = entry["hp"][label(rule)]["lr"]
                    r = train_once(task, rule, lr, a.epochs, seed, task["full"], {"test": task["test"]}, True)
                    entry["runs"].append(r)
                    print(f"[{name}] seed {seed} {rule:<10} test {100 * r['test_accuracy']:.2f} %  deployed "
                          f"{100 * r['deployed_accuracy']:.2f} %  {statistics.median(r['epoch_s']):.1f} s/epoch",
                          flush=True)
                    save()
    if a.memory or a.memory_only:
        result["memory"] = measure_memory(a.rules, a.steps_list, a.threads)
    result["machine"]["load_after"] = os.getloadavg()
    save()
    print(format_table(result))
    return 0


RECIPE_CMD = ("python -m snn2hw.models.braille --epochs {epochs} --qat-epochs 0 --rule {rule}{opts} --threads 1 "
              "--seed {seed} --out {out}")


def collect_recipe(paths: list) -> dict:
    """Runs of the Braille module's own recipe (1,080 training / 270 test recordings, Adam 5e-3, cosine, batch 32;
    the final epoch's network, nothing chosen on test) with a rule: float and deployed (straight quantization,
    no QAT) test accuracy, s/epoch and the load at the end, with the command behind each."""
    runs = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        opts = r.get("rule_options") or {}
        cmd = RECIPE_CMD.format(epochs=r["epochs"], rule=r.get("rule", "bptt"), seed=r["seed"],
                                opts=f" --rule-options '{json.dumps(opts)}'" if opts else "", out=Path(path).parent)
        runs.append({"rule": r.get("rule", "bptt"), "rule_options": opts, "seed": r["seed"], "epochs": r["epochs"],
                     "float_test_accuracy": r["float_accuracy"], "deployed_test_accuracy": r["deployed_accuracy"],
                     "train_accuracy_final": r.get("train_accuracy_final"),
                     "epoch_s_median": statistics.median(r["epoch_time_s"]) if r.get("epoch_time_s") else None,
                     "loadavg_end": r.get("loadavg_end"), "command": cmd, "source": str(path)})
    return {"task": "braille (module recipe)", "network": "24-128R-27, T=256", "runs": runs,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}


def recipe_table(result: dict) -> str:
    lines = ["| rule | options | seeds | epochs | float test % | deployed test % | s/epoch (loaded) | command |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in result["runs"]:
        groups.setdefault((r["rule"], json.dumps(r["rule_options"], sort_keys=True), r["epochs"]), []).append(r)
    for (rule, opts, epochs), rs in groups.items():
        fl = _ms([100 * r["float_test_accuracy"] for r in rs])
        dep = _ms([100 * r["deployed_test_accuracy"] for r in rs])
        ep = [r["epoch_s_median"] for r in rs if r["epoch_s_median"]]
        lines.append(f"| {rule} | {opts if opts != '{}' else '-'} | {len(rs)} | {epochs} | {fl[0]:.2f} ± {fl[1]:.2f} | "
                     f"{dep[0]:.2f} ± {dep[1]:.2f} | {statistics.median(ep) if ep else float('nan'):.1f} | "
                     f"`{rs[0]['command']}` |")
    return "\n".join(lines)


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for name, entry in result["tasks"].items():
        by_rule = {}
        for r in entry["runs"]:
            by_rule.setdefault(r["rule"], []).append(r)
        base = by_rule.get("bptt")
        base_epoch = statistics.median([statistics.median(r["epoch_s"]) for r in base]) if base else None
        for rule, runs in by_rule.items():
            epoch = statistics.median([statistics.median(r["epoch_s"]) for r in runs])
            rows.append({"task": name, "rule": rule, "lr": runs[0]["lr"], "seeds": len(runs),
                         "float": _ms([100 * r["test_accuracy"] for r in runs]),
                         "deployed": _ms([100 * r["deployed_accuracy"] for r in runs]),
                         "epoch_s": epoch, "epoch_vs_bptt": epoch / base_epoch if base_epoch else None})
    return rows


def format_table(result: dict) -> str:
    lines = []
    rows = summary_rows(result)
    if rows:
        lines.append(f"{'task':<8} {'rule':<11} {'lr':>7} {'seeds':>5} {'float test %':>15} {'deployed %':>15} "
                     f"{'s/epoch':>8} {'x bptt':>7}")
        for r in rows:
            ratio = f"{r['epoch_vs_bptt']:.2f}" if r["epoch_vs_bptt"] else "-"
            lines.append(f"{r['task']:<8} {r['rule']:<11} {r['lr']:>7g} {r['seeds']:>5} "
                         f"{r['float'][0]:>8.2f} ± {r['float'][1]:<4.2f} {r['deployed'][0]:>8.2f} ± {r['deployed'][1]:<4.2f} "
                         f"{r['epoch_s']:>8.2f} {ratio:>7}")
    if result.get("memory"):
        lines.append("")
        steps = sorted({m["steps"] for m in result["memory"]})
        lines.append("peak extra memory of one batch (MiB), batch 32, 24-128R-27: " + " ".join(f"T={s:>6}" for s in steps))
        for rule in dict.fromkeys(m["rule"] for m in result["memory"]):
            vals = {m["steps"]: m["peak_extra_mib"] for m in result["memory"] if m["rule"] == rule}
            lines.append(f"  {rule:<58} " + " ".join(f"{vals.get(s, float('nan')):>8.1f}" for s in steps))
    return "\n".join(lines)


def markdown(paths: list) -> str:
    """The tables of docs/learning-rules-online.md from result files; each row names its command by a key
    ([A], [B], ...) listed under the tables."""
    commands: dict = {}

    def key(cmd: str) -> str:
        return commands.setdefault(cmd, f"[{chr(ord('A') + len(commands))}]")

    lines = ["| task | network | rule | lr (val) | seeds | epochs | float test % | deployed test % | s/epoch (loaded) | cmd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    mem, raster, timing = [], [], []
    combined: dict = {}  # (task, rule) -> runs and commands, over all files (seeds added by later runs)
    for path in paths:
        result = json.loads(Path(path).read_text())
        for name, entry in result["tasks"].items():
            for r in entry["runs"]:
                c = combined.setdefault((name, r["rule"]), {"entry": entry, "runs": [], "cmds": []})
                c["runs"].append(r)
                if key(result["command"]) not in c["cmds"]:
                    c["cmds"].append(key(result["command"]))
        mem += [(result["command"], m) for m in result.get("memory", [])]
        raster += [(result["command"], r) for r in result.get("raster", [])]
        timing += [(result["command"], r) for r in result.get("timing", [])]
    for (name, rule), c in combined.items():
        runs, entry = c["runs"], c["entry"]
        epoch = statistics.median([statistics.median(r["epoch_s"]) for r in runs])
        fl = _ms([100 * r["test_accuracy"] for r in runs])
        dep = _ms([100 * r["deployed_accuracy"] for r in runs])
        lines.append(f"| {name} | {entry['network']}, T={entry['steps']} | {rule} | {runs[0]['lr']:g} | "
                     f"{len(runs)} | {runs[0]['epochs']} | {fl[0]:.2f} ± {fl[1]:.2f} | {dep[0]:.2f} ± {dep[1]:.2f} | "
                     f"{epoch:.1f} | {' '.join(c['cmds'])} |")
    if timing:
        lines += ["", "Time per training batch, rules interleaved (median over rounds; per epoch = per batch x batches):",
                  "", "| task | rule | s/batch (median) | min - max | ~s/epoch | x BPTT | load | cmd |",
                  "|---|---|---|---|---|---|---|---|"]
        for cmd, r in timing:
            ratio = f"{r['vs_bptt']:.2f}" if r["vs_bptt"] else "-"
            lines.append(f"| {r['task']} | {r['rule']} | {r['batch_s_median']:.3f} | {r['batch_s_min']:.3f} - "
                         f"{r['batch_s_max']:.3f} | {r['epoch_s_est']:.1f} | {ratio} | {r['load']:.0f} | {key(cmd)} |")
    if raster:
        lines += ["", "Spike-raster task (van Rossum D^2 to the target, lower is better; mean ± sd over seeds):", "",
                  "| rule | seeds | epochs | D^2 at start | D^2 trained (float) | D^2 deployed (simulator) | cmd |",
                  "|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for cmd, r in raster:
            groups.setdefault((r["rule"], cmd), []).append(r)
        for (rule, cmd), rs in groups.items():
            f = lambda k: "%.2f ± %.2f" % _ms([r[k] for r in rs])  # noqa: E731
            lines.append(f"| {rule} | {len(rs)} | {rs[0]['epochs']} | {f('start')} | {f('final')} | {f('deployed')} "
                         f"| {key(cmd)} |")
    if mem:
        steps = sorted({m["steps"] for _, m in mem})
        lines += ["", "Peak extra memory of one batch (MiB; batch 32, 24-128R-27, Braille-shaped input):", "",
                  "| rule | " + " | ".join(f"T = {s}" for s in steps) + " | cmd |",
                  "|---|" + "---|" * len(steps) + "---|"]
        rows: dict = {}
        for cmd, m in mem:
            rows.setdefault((m["rule"], cmd), {})[m["steps"]] = m["peak_extra_mib"]
        for (rule, cmd), vals in rows.items():
            cells = " | ".join(f"{vals[s]:.1f}" if s in vals else "-" for s in steps)
            lines.append(f"| {rule} | {cells} | {key(cmd)} |")
    lines += ["", "Commands (from the repository root, `OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE`, `python` = `.venv/bin/python`):", ""]
    lines += [f"- {k} `python benchmarks/{cmd}`" for cmd, k in commands.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
