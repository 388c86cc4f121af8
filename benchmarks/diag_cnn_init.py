"""Diagnosis of BPTT on conv/pool networks (issue 8): per-layer firing rates, membrane and surrogate
statistics, linear-probe accuracy of each layer's spike counts, and how they move over the first Adam steps.

    python benchmarks/diag_cnn_init.py --config benchmarks/configs/digits_cnn.json --calibrate none --steps 30
    python benchmarks/diag_cnn_init.py --config benchmarks/configs/digits_cnn.json --calibrate 0.1 --steps 90

Per spiking layer it prints: mean rate (spikes per neuron and step), the synaptic input a (mean +- std),
the mean surrogate derivative over (sample, step, neuron) and the fraction of neurons silent on every
sample ("silent") or spiking on > 90 % of steps ("saturated"); with ``--probe``, the validation accuracy of
a logistic regression on each layer's spike counts (how much of the input reaches that layer).
Digits task; seed 0; batches of 32 drawn with replacement; Adam at the config's lr; count cross-entropy.
"""
from __future__ import annotations

import argparse
import json

import torch

from snn2hw.models.tasks import build_model, get_task
from snn2hw.nn.calibrate import calibrate_thresholds
from snn2hw.nn.conv import Flatten
from snn2hw.nn.functional import cuba_lif_reference
from snn2hw.nn.layers import hop_delay


def layer_stats(model, x) -> list[dict]:
    """Statistics of every spiking layer on input ``x`` (the float neuron via ``cuba_lif_reference``)."""
    rows, s = [], x
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, Flatten) or not hasattr(layer, "threshold"):
                s = layer(s)
                continue
            w = layer.weight if not hasattr(layer, "_hop_weight") else layer._hop_weight()
            a = hop_delay(s @ w.t() if not hasattr(layer, "_current") else layer._current(s, w))
            alpha, beta, th = 1 - float(layer.du), 1 - float(layer.dv), layer.v_th
            out, u, v = cuba_lif_reference(a, alpha, beta, th, None, layer.surrogate, return_state=True)
            # the membrane before the reset, where the surrogate derivative is taken
            v_pre = beta * torch.nn.functional.pad(v, (0, 0, 1, 0))[:, :-1] + u
            per_neuron = out.mean((0, 1))
            rows.append({"layer": type(layer).__name__, "n": a.shape[-1], "v_th": th, "rate": float(out.mean()),
                         "a_mean": float(a.mean()), "a_std": float(a.std()),
                         "surrogate": float(layer.surrogate.derivative(v_pre - th).mean()),
                         "silent": float((per_neuron == 0).float().mean()),
                         "saturated": float((per_neuron > 0.9).float().mean())})
            s = out
    return rows


def probe(model, xtr, ytr, xva, yva) -> list[float]:
    """Validation accuracy of a logistic regression on each spiking layer's spike counts."""
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        otr, ova = model(xtr, return_all=True), model(xva, return_all=True)
    accs = []
    for a, b, layer in zip(otr, ova, model.layers):
        if hasattr(layer, "threshold"):
            clf = LogisticRegression(max_iter=1000).fit(a.sum(1).numpy(), ytr.numpy())
            accs.append(round(float(clf.score(b.sum(1).numpy(), yva.numpy())), 3))
    return accs


def show(rows):
    for r in rows:
        print("  {layer:11s} n={n:5d} v_th={v_th:7.3f} rate={rate:.3f} a={a_mean:+.3f}+-{a_std:.3f} "
              "surrogate={surrogate:.3f} silent={silent:.2f} saturated={saturated:.2f}".format(**r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="benchmarks/configs/digits_cnn.json")
    ap.add_argument("--calibrate", default="none", help="'none' or a target rate (thresholds, as the trainer)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--probe", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = json.load(open(a.config))
    task = get_task("digits")
    data = task.load(cfg.get("data"))
    (xtr, ytr), (xva, yva) = data["train"], data["val"]
    model = build_model(task, cfg["model"], 0)
    if a.calibrate != "none":
        calibrate_thresholds(model, xtr[:32], float(a.calibrate))
    if a.probe:
        print("probe (validation accuracy of each layer's counts):", probe(model, xtr, ytr, xva, yva))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["trainer"]["lr"])
    g = torch.Generator().manual_seed(0)
    for it in range(a.steps + 1):
        if it % a.every == 0:
            with torch.no_grad():
                acc = float((model(xva).sum(1).argmax(1) == yva).float().mean())
            print(f"step {it}: validation accuracy {acc:.3f}")
            show(layer_stats(model, xva[:64]))
        idx = torch.randint(0, len(ytr), (32,), generator=g)
        out = model(xtr[idx])
        loss = task.loss_fn(out, ytr[idx])
        opt.zero_grad()
        loss.backward()
        if it % a.every == 0:
            print(f"  loss {float(loss.detach()):.3f}; output counts (batch mean) {out.sum(1).mean(0).detach().numpy().round(1)}; "
                  f"weight-gradient norms {[f'{float(p.grad.norm()):.1e}' for p in model.parameters()]}")
        opt.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
