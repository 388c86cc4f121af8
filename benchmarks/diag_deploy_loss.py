"""Where does a trained network lose accuracy in deployment? Layer by layer, on a checkpoint.

    python benchmarks/diag_deploy_loss.py CKPT [--task mnist10k] [--config CFG.json] [--split val]
                                         [--samples 1000] [--ptq] [--out JSON]

For a ``snn2hw train`` checkpoint (``SpikingSequential``) it reports, on ``--samples`` samples of a split
(validation by default; never choose options on test):

* per population: the scale, the integer threshold, each projection's exponent, and how many integer
  levels the weights of each unit get (a unit whose largest |w_int| is a few steps is nearly binary);
* accuracy of the float network, of the fully quantized network (the QAT forward with the straight
  quantizer: bit for bit the deployed network), of the network with **only** layer i quantized, and with
  **all but** layer i quantized: the layer whose quantization alone costs the most is the cause;
* per population, the spike-count error of the quantized network against the float one (mean |count
  difference| per sample and neuron, divided by the float mean count);
* with ``--ptq``: the deployed accuracy under the straight quantizer and under the calibrated spike-matching
  search of ``snn2hw.compiler.ptq`` (``PTQConfig(scale_search="spikes")``, calibration on training samples),
  compiled and run on the bit-accurate simulator.

Prints a table and writes JSON (default ``benchmarks/results/deploy_loss_<name>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from snn2hw.learning.experiment import _batches, _split_xy, read_config
from snn2hw.train.checkpoint import load_checkpoint


def _layers(model):
    return [i for i, l in enumerate(model.layers) if hasattr(l, "quantize")]


def _run(model, x, qat_layers, batch=250):
    """Output spike counts and per-layer spike counts with QAT on ``qat_layers`` (indices)."""
    from snn2hw.quantize import QuantConfig

    for i, layer in enumerate(model.layers):
        layer.qat = QuantConfig() if i in qat_layers else None
    counts = None
    with torch.no_grad():
        for lo in range(0, len(x[1]), batch):
            xb = _batches(x[0], lo, min(lo + batch, len(x[1])))
            outs = model(xb.float(), return_all=True)
            c = [o.sum(1).reshape(o.shape[0], -1) for o in outs]
            counts = c if counts is None else [torch.cat([a, b]) for a, b in zip(counts, c)]
    for layer in model.layers:
        layer.qat = None
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default=None, help="zoo task (default: the results.json beside the checkpoint)")
    ap.add_argument("--config", default=None, help="the training config (for its data options)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--ptq", action="store_true", help="also deploy with the spike-matching PTQ search")
    ap.add_argument("--calibration-samples", type=int, default=256)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table (only with --ptq)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from snn2hw.models.sequence_tasks import get_task

    ck = Path(args.checkpoint)
    res_path = ck.parent / "results.json"
    meta = json.loads(res_path.read_text()) if res_path.is_file() else {}
    task = args.task or meta.get("task")
    cfg = read_config(args.config) if args.config else {}
    data_opts = cfg.get("data") or ({"steps": meta["steps"]} if "steps" in meta else None)
    t = get_task(task)
    data = t.load(data_opts)
    x, y = _split_xy(data[args.split])
    n = min(args.samples, len(y))
    xs = _batches(x, 0, n)
    ys = y[:n]
    model = load_checkpoint(ck).eval()
    qidx = _layers(model)
    t0 = time.perf_counter()

    def acc(counts):
        return float((counts[-1].argmax(1) == ys).float().mean())

    rows = []
    out = {"checkpoint": str(ck), "task": task, "split": args.split, "samples": n}
    if not args.no_layers:
        out.update(_layer_table(model, xs, ys, qidx, acc))
    if args.ptq:
        _deploy_rows(out, model, data, xs, ys, args)
    out["seconds"] = time.perf_counter() - t0
    out["loadavg"] = list(os.getloadavg())
    dst = Path(args.out or f"benchmarks/results/deploy_loss_{ck.parent.name}.json")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2))
    print(f"wrote {dst} ({out['seconds']:.0f} s)")


def _layer_table(model, xs, ys, qidx, acc) -> dict:
    flt = _run(model, (xs, ys), set())
    full = _run(model, (xs, ys), set(qidx))
    rows = []
    from snn2hw.compiler import compile_graph

    art = compile_graph(model.to_ir())
    quant = {r["population"]: r for r in art.provenance["quantization"]}
    projs = {p.dst: p for p in art.graph.projections}
    pop_names = [p.name for p in art.graph.populations]
    for j, i in enumerate(qidx):
        only = acc(_run(model, (xs, ys), {i}))
        but = acc(_run(model, (xs, ys), set(qidx) - {i}))
        pop = pop_names[j]
        w = np.abs(np.asarray(projs[pop].weight)).reshape(np.asarray(projs[pop].weight).shape[0], -1).max(1)
        fc, qc = flt[i], full[i]
        rows.append({"layer": i, "population": pop, "kind": type(model.layers[i]).__name__,
                     "scale": quant[pop]["scale"], "vth": quant[pop]["vth"], "weight_exps": quant[pop]["weight_exps"],
                     "unit_max_w_int": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max()),
                                        "units_le_8": int((w <= 8).sum()), "units": int(len(w))},
                     "count_error_rel": float((fc - qc).abs().mean() / fc.mean().clamp(min=1e-9)),
                     "float_rate": float(fc.mean() / xs.shape[1]),
                     "acc_only_this_quantized": only, "acc_all_but_this_quantized": but})
    out = {"float_accuracy": acc(flt), "quantized_accuracy": acc(full), "layers": rows}
    print(f"{len(ys)} samples; float {100 * out['float_accuracy']:.2f} %, "
          f"all layers quantized (= deployed) {100 * out['quantized_accuracy']:.2f} %")
    print("| layer | population | kind | scale | vth | units' max abs w_int min/median/max (<= 8) | count error | "
          "only this quantized | all but this |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        u = r["unit_max_w_int"]
        print(f"| {r['layer']} | {r['population']} | {r['kind']} | {r['scale']:.4g} | {r['vth']} | "
              f"{u['min']}/{u['median']:.0f}/{u['max']} ({u['units_le_8']}/{u['units']}) | "
              f"{r['count_error_rel']:.3f} | {100 * r['acc_only_this_quantized']:.2f} | "
              f"{100 * r['acc_all_but_this_quantized']:.2f} |")
    return out


def _deploy_rows(out, model, data, xs, ys, args):
    """Deployed accuracy (compiled, simulator) under the straight quantizer and the spike-matching search,
    on the chosen split and on validation (where ``snn2hw train`` chooses between them)."""
    from snn2hw.compiler import PTQConfig, compile_graph
    from snn2hw.learning.experiment import simulated_accuracy

    xt, _ = _split_xy(data["train"])
    xv, yv = _split_xy(data["val"])
    calib = _batches(xt, 0, args.calibration_samples).cpu().numpy()
    for name, kw in (("straight", {}), ("spikes", {"ptq": PTQConfig(scale_search="spikes"),
                                                   "calibration_inputs": calib})):
        t1 = time.perf_counter()
        art = compile_graph(model.to_ir(), **kw)
        out[f"deploy_{name}_compile_s"] = time.perf_counter() - t1
        a = simulated_accuracy(art, xs, ys)
        out[f"deployed_{name}"] = a
        out[f"deployed_{name}_val"] = simulated_accuracy(art, _batches(xv, 0, len(yv)), yv)
        out[f"vth_{name}"] = {r["population"]: r["vth"] for r in art.provenance["quantization"]}
        print(f"deployed ({name}): {args.split} {100 * a:.2f} %, val {100 * out[f'deployed_{name}_val']:.2f} % "
              f"(compile {out[f'deploy_{name}_compile_s']:.1f} s); vth {out[f'vth_{name}']}")

if __name__ == "__main__":
    sys.exit(main())
