"""Diagnosis of HM2-BP on conv/pool networks (issue 8): per spiking layer, after calibration and at the end of
every epoch, on the validation split: mean rate, fraction of neurons silent on every sample / firing on > 90 %
of steps, weight norm; the output layer's mean count per neuron and the number of outputs silent on all samples.

    python benchmarks/diag_cnn_hm2bp.py --config benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json --epochs 6
"""
from __future__ import annotations

import argparse
import json

import torch

from snn2hw.learning import make_rule
from snn2hw.models.sequence_tasks import get_task
from snn2hw.models.tasks import build_model, default_rule_options
from snn2hw.train.trainer import Callback, Trainer, TrainerConfig


def layer_stats(model, x) -> list[str]:
    rows = []
    with torch.no_grad():
        outs = model(x, return_all=True)
    for layer, s in zip(model.layers, outs):
        if not hasattr(layer, "threshold"):
            continue
        per = s.mean(1)  # (B, N) rate per sample
        per_neuron = per.mean(0)
        w = layer._hop_weight() if hasattr(layer, "_hop_weight") else layer.weight
        rows.append(f"{type(layer).__name__:10s} n={per.shape[1]:5d} vth={layer.v_th:6.2f} rate={float(per.mean()):.3f} "
                    f"silent={float((per_neuron == 0).float().mean()):.2f} "
                    f"sat={float((per_neuron > 0.9).float().mean()):.2f} "
                    f"dead_per_sample={float((per == 0).float().mean()):.2f} |w|={float(w.detach().norm()):.2f}")
    counts = outs[-1].sum(1)
    rows.append("output mean counts " + " ".join(f"{float(c):.1f}" for c in counts.mean(0))
                + f" | silent outputs (all samples) {int((counts.sum(0) == 0).sum())}")
    return rows


class Stats(Callback):
    def __init__(self, x):
        self.x = x

    def on_fit_start(self, trainer):
        print("after calibration:")
        for r in layer_stats(trainer.model, self.x):
            print("  " + r)

    def on_epoch_end(self, trainer, row):
        print(f"epoch {row['epoch']} loss {row['loss']:.3f} acc {row['accuracy']:.3f} val {row['val_accuracy']:.3f}",
              flush=True)
        for r in layer_stats(trainer.model, self.x):
            print("  " + r)


def load_setup(config: str, task: str, rule: str, sets: list[str]):
    """(task, data, config dict, rule options) of a ``snn2hw train`` config, with ``key=json`` overrides."""
    cfg = json.load(open(config))
    t = get_task(task)
    data = t.load(cfg.get("data"))
    opts = {**default_rule_options(rule, t.steps(cfg.get("data"))), **cfg.get("rule_options", {})}
    opts.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in sets)})
    return t, data, cfg, opts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--rule", default="hm2bp")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="rule options key=json")
    ap.add_argument("--trainer", nargs="*", default=[], help="trainer options key=json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t, data, cfg, opts = load_setup(a.config, a.task, a.rule, a.set)
    model = build_model(t, cfg.get("model"), a.seed)
    tcfg = {**t.trainer_defaults, **cfg.get("trainer", {}), "epochs": a.epochs}
    tcfg.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in a.trainer)})
    print("rule options", opts, "trainer", tcfg)
    tc = TrainerConfig(**tcfg, seed=a.seed, rule=a.rule, rule_options=opts, save_best=None)
    xv = data["val"][0][:128]
    tr = Trainer(model, tc, callbacks=[Stats(xv)], rule=make_rule(a.rule, **opts), loss_fn=t.loss_fn)
    tr.fit(data["train"], data["val"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
