"""HM2-BP's gradient against BPTT's (surrogate) gradient of the same loss on the same batch, per layer: cosine
similarity and norm ratio, for a network after the trainer's calibration (issue 8: why HM2-BP trails BPTT on
conv/pool networks). Optionally on a trained checkpoint.

    python benchmarks/diag_cnn_gradcos.py --config benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json
"""
from __future__ import annotations

import argparse
import torch

from snn2hw.learning import make_rule
from diag_cnn_hm2bp import load_setup
from snn2hw.models.tasks import build_model
from snn2hw.nn.calibrate import calibrate_thresholds, has_conv_layers


def grads(model, rule, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t, data, cfg, opts = load_setup(a.config, a.task, "hm2bp", a.set)
    x_tr, y_tr = data["train"]
    if a.ckpt:
        from snn2hw.train.checkpoint import load_checkpoint
        model = load_checkpoint(a.ckpt)
    else:
        model = build_model(t, cfg.get("model"), 0)
        if has_conv_layers(model):
            calibrate_thresholds(model, x_tr[:32])
    hm, bp = make_rule("hm2bp", **opts), make_rule("bptt")
    names = [n for n, _ in model.named_parameters()]
    acc = {n: [0.0, 0.0, 0.0, 0.0, 0.0] for n in names}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    for b in range(a.batches):
        x, y = x_tr[32 * b:32 * (b + 1)], y_tr[32 * b:32 * (b + 1)]
        g1, g2 = grads(model, hm, x, y, t.loss_fn), grads(model, bp, x, y, t.loss_fn)
        for n, u, v in zip(names, g1, g2):
            if u is None or v is None:
                continue
            acc[n][0] += float((u * v).sum())
            acc[n][1] += float((u * u).sum())
            acc[n][2] += float((v * v).sum())
            acc[n][3] += float(u.sum()) / u.numel()  # mean gradient entry: < 0 means descent raises the
            acc[n][4] += float(v.sum()) / v.numel()  # weights on average, i.e. the layer's rates
    for n, (uv, uu, vv, mu, mv) in acc.items():
        if uu > 0 and vv > 0:
            print(f"{n:22s} cos {uv / (uu * vv) ** 0.5:+.3f}  |hm2bp|/|bptt| {(uu / vv) ** 0.5:.3g}  "
                  f"mean/rms hm2bp {mu / a.batches / (uu / a.batches / sizes[n]) ** 0.5:+.3f} "
                  f"bptt {mv / a.batches / (vv / a.batches / sizes[n]) ** 0.5:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
