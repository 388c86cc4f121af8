"""Post-training quantization accuracy: float model vs straight quantization vs the PTQ search, on the
bit-accurate simulator, for digits and Braille.

    python benchmarks/bench_ptq.py --task digits                      # trains the digits model first
    python benchmarks/bench_ptq.py --task braille --checkpoint CKPT   # a trained Braille checkpoint

Calibration uses ``--calibration-samples`` training samples (never test samples). Prints a table and
writes JSON to benchmarks/results/ptq_<task>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from snn2hw.artefact import atomic_write_bytes
from snn2hw.backends import sim
from snn2hw.compiler import PTQConfig, compile_graph
from snn2hw.train.checkpoint import load_checkpoint, save_checkpoint


def _data(task: str):
    if task == "digits":
        from snn2hw.models import digits

        return digits, digits.load()
    from snn2hw.models import braille

    return braille, braille.load()


def _float_accuracy(model, x, y, batch=128) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).sum(dim=1).argmax(dim=1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def _deployed_accuracy(art, x, y) -> float:
    res = sim.run(art, x.numpy().astype(np.int64), count_events=False)
    counts = res.spikes[art.graph.outputs[0]].sum(axis=1)
    return float(np.mean(counts.argmax(axis=1) == y.numpy()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("digits", "braille"), required=True)
    ap.add_argument("--checkpoint", help="trained model (default for digits: train one with the demo recipe)")
    ap.add_argument("--epochs", type=int, default=40, help="digits training epochs when no checkpoint is given")
    ap.add_argument("--calibration-samples", type=int, default=128)
    ap.add_argument("--clip-fraction", type=float, default=PTQConfig().clip_fraction)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    module, (x_tr, y_tr, x_te, y_te) = _data(a.task)
    if a.checkpoint:
        model = load_checkpoint(a.checkpoint)
    else:
        from snn2hw.train.classifier import train_classifier

        model = module.build_model(0)
        cfg = module.train_config(epochs=a.epochs, seed=0)
        cfg.progress = False
        train_classifier(model, x_tr, y_tr, cfg)
        save_checkpoint(model, Path(a.out) / f"ptq_{a.task}.ckpt")
    graph = model.to_ir()
    calib = x_tr[: a.calibration_samples].numpy()
    rows = {"float": _float_accuracy(model, x_te, y_te)}
    t0 = time.perf_counter()
    straight = compile_graph(graph)
    rows["straight"] = _deployed_accuracy(straight, x_te, y_te)
    variants = {
        "ptq_search": (PTQConfig(clip_fraction=a.clip_fraction), None),
        "ptq_search_calibrated": (PTQConfig(clip_fraction=a.clip_fraction), calib),
    }
    records = {}
    for name, (ptq, cal) in variants.items():
        art = compile_graph(graph, ptq=ptq, calibration_inputs=cal)
        rows[name] = _deployed_accuracy(art, x_te, y_te)
        records[name] = art.provenance["quantization"]
    result = {
        "task": a.task, "test_samples": len(y_te), "calibration_samples": a.calibration_samples,
        "accuracy": rows, "drop_pp_vs_float": {k: 100 * (rows["float"] - v) for k, v in rows.items()},
        "quantization_records": records, "seconds": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "load_avg": os.getloadavg(), "torch": torch.__version__},
        "checkpoint": a.checkpoint,
    }
    print(f"PTQ accuracy, {a.task} ({len(y_te)} test samples; load average {os.getloadavg()[0]:.1f})")
    for k, v in rows.items():
        print(f"  {k:<24} {100 * v:6.2f} %   drop {result['drop_pp_vs_float'][k]:+.2f} pp")
    out = Path(a.out) / f"ptq_{a.task}.json"
    atomic_write_bytes(out, lambda f: f.write(json.dumps(result, indent=2, default=float).encode()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
