"""Why feedback alignment (FA) trails BPTT on Braille: alignment and quantization of trained networks.

For each float checkpoint of ``python -m snn2hw.models.braille --rule fa ... --out DIR`` (``DIR/float.pt``):

Both at the start of the run (the same seed's freshly built network) and at its end:

* ``cos(B, W_out)``: the cosine between FA's fixed feedback matrix and the read-out weights it stands in for;
* the cosine between FA's update of the hidden layer (input and recurrent weights) and BPTT's gradient of the
  same loss on the same batches (how much of the true descent direction the hidden layer receives);
* each weight matrix's range (max |w| / std), which sets how coarse 8-bit quantization is for the rest;
* float and deployed (compiled, simulator) accuracy on the split the run was evaluated on (validation
  with ``--validation``, else test), read from ``DIR/results.json``.

Usage::

    python benchmarks/diag_braille_fa.py out/diag/fa_lr5e-3_s0 [more run dirs] --out benchmarks/results/braille_fa_diag.json

The FA matrix is rebuilt from the rule's seed (``fa``'s default 0, as in the runs) for the checkpoint's shapes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _hidden_grads(model, rule, x, y, loss_fn) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    if rule is None:
        loss_fn(model(x), y).backward()
    else:
        rule.compute_gradients(model, x, y, loss_fn, {})
    hidden = model.layers[0]
    return [hidden.weight.grad.clone(), hidden.rec_weight.grad.clone()]


def command_of(res: dict, run: Path) -> str:
    """The command line that produced a run's ``results.json``."""
    opts = res.get("rule_options") or {}
    over = res.get("recipe_overrides") or {}
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in over.items())
    return (f"python -m snn2hw.models.braille{' --validation' if res.get('evaluated_on') == 'validation' else ''} "
            f"--epochs {res['epochs']} --qat-epochs {res['qat_epochs']} --rule {res['rule']}"
            + (f" --rule-options '{json.dumps(opts)}'" if opts else "") + flags
            + f" --threads 1 --seed {res['seed']} --out {run}")


def summary(run: Path) -> dict:
    """A run's figures from its ``results.json`` (and the peak RSS sampled beside it, when the run predates
    ``peak_rss_mib``)."""

    if not (run / "results.json").is_file():  # a run stopped early: its per-epoch log only
        import csv

        with open(run / "logs" / "metrics.csv") as f:
            log = list(csv.DictReader(f))
        return {"run": str(run), "stopped_after_epochs": len(log), "rule": "see command",
                "validation_accuracy_by_epoch": [float(r["val_accuracy"]) for r in log],
                "train_accuracy_by_epoch": [float(r["accuracy"]) for r in log],
                "epoch_s_median": statistics.median(float(r["time_s"]) for r in log)}
    res = json.loads((run / "results.json").read_text())
    split = res.get("evaluated_on", "test")
    hwm = run.parent / (run.name + ".hwm_kb")
    peak = res.get("peak_rss_mib") or (int(hwm.read_text()) / 1024 if hwm.is_file() else None)
    return {"run": str(run), "command": command_of(res, run), "rule": res["rule"],
            "rule_options": res.get("rule_options") or {}, "recipe_overrides": res.get("recipe_overrides") or {},
            "seed": res["seed"], "epochs": res["epochs"], "evaluated_on": split,
            f"float_{split}_accuracy": res["float_accuracy"], f"deployed_{split}_accuracy": res["deployed_accuracy"],
            "train_accuracy_final": res.get("train_accuracy_final"),
            f"{split}_accuracy_by_epoch": res.get(f"{split}_accuracy_by_epoch"),
            "epoch_s_median": statistics.median(res["epoch_time_s"]), "loadavg_end": res.get("loadavg_end"),
            "peak_rss_mib_process": peak}


def deployed_accuracies(run: Path, evaluated_on: str, calibration_samples: int = 128) -> dict:
    """Accuracy of the compiled network on the run's evaluation split with straight quantization and with
    the PTQ search (uncalibrated, and calibrated on the first training samples: never the evaluated ones)."""
    import numpy as np

    from snn2hw.backends import sim
    from snn2hw.compiler import PTQConfig, compile_graph
    from snn2hw.models import braille
    from snn2hw.train.checkpoint import load_checkpoint

    (x_tr, _), (x_ev, y_ev) = braille._fit_split(braille.load(), evaluated_on == "validation")
    graph = load_checkpoint(run / "float.pt").to_ir()
    calib = x_tr[:calibration_samples].numpy()
    out = {}
    for name, ptq, cal in (("straight", None, None), ("ptq_search", PTQConfig(), None),
                           ("ptq_search_calibrated", PTQConfig(), calib)):
        art = compile_graph(graph) if ptq is None else compile_graph(graph, ptq=ptq, calibration_inputs=cal)
        res = sim.run(art, x_ev.numpy().astype(np.int64), count_events=False)
        counts = res.spikes[art.graph.outputs[0]].sum(axis=1)
        out[name] = float(np.mean(counts.argmax(axis=1) == y_ev.numpy()))
    return out


def count_margins(run: Path, evaluated_on: str) -> dict:
    """Float output spike-count margins (winner minus runner-up) on the run's evaluation split: how far
    the predictions sit from a tie, i.e. how many output spikes quantization must move to flip one."""
    from snn2hw.models import braille
    from snn2hw.train.checkpoint import load_checkpoint

    _, (x_ev, _) = braille._fit_split(braille.load(), evaluated_on == "validation")
    model = load_checkpoint(run / "float.pt").eval()
    with torch.no_grad():
        counts = torch.cat([model(x_ev[i:i + 128]).sum(1) for i in range(0, len(x_ev), 128)])
    top = counts.topk(2, dim=1).values
    m = top[:, 0] - top[:, 1]
    return {"median": float(m.median()), "fraction_at_most_2": float((m <= 2).float().mean()),
            "fraction_tied": float((m == 0).float().mean())}


def weight_ranges(model) -> dict:
    """max |w| / std per weight matrix: how many quantization steps the bulk of the weights gets."""
    w_in, v, w_out = (t.detach() for t in (model.layers[0].weight, model.layers[0].effective_rec_weight(),
                                            model.layers[1].weight))
    return {k: float(w.abs().max() / w.std()) for k, w in (("input", w_in), ("recurrent", v), ("readout", w_out))}


def analyse(run: Path, batches: int, batch_size: int, rule_seed: int) -> dict:
    from snn2hw.learning import make_rule
    from snn2hw.models import braille
    from snn2hw.train.checkpoint import load_checkpoint

    res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    x, y, _, _ = braille.load()
    tr, _ = braille.validation_split(y) if res.get("evaluated_on") == "validation" else (torch.arange(len(y)), None)
    g = torch.Generator().manual_seed(0)
    idx = tr[torch.randperm(len(tr), generator=g)[: batches * batch_size]]
    out = {"run": str(run)}
    # the network as the run started (same seed, same builder) and as it ended
    init = braille.build_model(int(res.get("seed", 0)), int(res.get("hidden", braille.HIDDEN)))
    rule = make_rule("fa", seed=rule_seed, **dict(res.get("rule_options") or {}))
    rule.setup(init)  # the matrices as the run drew them (B_V's scale is taken from V at the start)
    for when, model in (("init", init), ("trained", load_checkpoint(run / "float.pt"))):
        cos_in, cos_rec = [], []
        for b in range(batches):
            sel = idx[b * batch_size:(b + 1) * batch_size]
            fa = _hidden_grads(model, rule, x[sel], y[sel], braille.loss_fn)
            bp = _hidden_grads(model, None, x[sel], y[sel], braille.loss_fn)
            cos_in.append(_cos(fa[0], bp[0]))
            cos_rec.append(_cos(fa[1], bp[1]))
        out[when] = {"cos_feedback_readout": _cos(rule.feedback[1], model.layers[1].weight.detach()),
                     "cos_hidden_update_vs_bptt": {"input": cos_in, "recurrent": cos_rec},
                     "weight_range_max_over_std": weight_ranges(model)}
    for k in ("evaluated_on", "float_accuracy", "deployed_accuracy", "train_accuracy_final", "recipe_overrides",
              "rule_options", "epochs", "seed"):
        if k in res:
            out[k] = res[k]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="output folders of python -m snn2hw.models.braille --out")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rule-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ptq", action="store_true", help="also deploy with the PTQ search (compiler), on the same split")
    ap.add_argument("--summary-only", action="store_true", help="only collect the runs' figures (no alignment)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = [summary(Path(r)) for r in a.runs]
    stopped = [r for r in rows if "stopped_after_epochs" in r]
    rows = [r for r in rows if "stopped_after_epochs" not in r]
    for r in stopped:
        print(f"{r['run']}: stopped after {r['stopped_after_epochs']} epochs, validation "
              f"{[round(100 * v, 1) for v in r['validation_accuracy_by_epoch']]}", file=sys.stderr)
    for r in rows:
        split = r["evaluated_on"]
        print(f"{r['command']}\n  float {100 * r[f'float_{split}_accuracy']:.2f}  deployed "
              f"{100 * r[f'deployed_{split}_accuracy']:.2f} ({split})  train {100 * r['train_accuracy_final']:.2f}  "
              f"{r['epoch_s_median']:.1f} s/epoch (load {r['loadavg_end']})", file=sys.stderr)
    from snn2hw.train.checkpoint import load_checkpoint

    for row in rows:
        row["weight_range_max_over_std"] = weight_ranges(load_checkpoint(Path(row["run"]) / "float.pt"))
        row["float_count_margin"] = count_margins(Path(row["run"]), row["evaluated_on"])
        print(f"{row['run']}: float count margin {row['float_count_margin']}", file=sys.stderr)
        if a.ptq:
            row[f"deployed_{row['evaluated_on']}_accuracy_by_quantization"] = deployed_accuracies(
                Path(row["run"]), row["evaluated_on"])
            print(f"{row['run']}: deployed {row['deployed_' + row['evaluated_on'] + '_accuracy_by_quantization']}",
                  file=sys.stderr)
    if not a.summary_only:
        for row in rows:
            if row["rule"] == "fa":
                row["alignment"] = analyse(Path(row["run"]), a.batches, a.batch_size, a.rule_seed)
    for r in (row["alignment"] for row in rows if "alignment" in row):
        for when in ("init", "trained"):
            d = r[when]
            ci, cr = d["cos_hidden_update_vs_bptt"]["input"], d["cos_hidden_update_vs_bptt"]["recurrent"]
            print(f"{r['run']} [{when}]: cos(B, W_out) {d['cos_feedback_readout']:.3f}  cos(FA, BPTT) hidden input "
                  f"{sum(ci) / len(ci):.3f} recurrent {sum(cr) / len(cr):.3f}  range {d['weight_range_max_over_std']}",
                  file=sys.stderr)
        print(f"  float {r.get('float_accuracy')} deployed {r.get('deployed_accuracy')} on {r.get('evaluated_on')}",
              file=sys.stderr)
    if a.out:
        import os
        import platform

        Path(a.out).write_text(json.dumps({
            "command": "python benchmarks/diag_braille_fa.py " + " ".join(argv or sys.argv[1:]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "loadavg_at_collection": list(os.getloadavg()),
                        "note": "shared 2-core machine under load: s/epoch inflated several-fold"},
            "runs": rows, "stopped_runs": stopped}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
