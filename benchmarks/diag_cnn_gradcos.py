"""HM2-BP's gradient against BPTT's (surrogate) gradient of the same loss on the same batch, per layer: cosine
similarity and norm ratio, for a network after the trainer's calibration (issue 8: why HM2-BP trails BPTT on
conv/pool networks). Optionally on a trained checkpoint. Works for any spike-train network of the zoo (MLPs too:
calibrated only when the trainer would, i.e. conv/pool networks).

    python benchmarks/diag_cnn_gradcos.py --config benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json

``--errors`` adds, per spiking layer (pool layers included), the count error each rule sends to that layer's
neurons: HM2-BP's ``dE/do_j`` (after ``count_bounds``, as the backward uses it) against BPTT's ``sum_t dL/ds_j[t]``
(the loss's gradient with respect to the layer's spike train through the surrogate, summed over the window):
their cosine over (sample, neuron), on the entries of neurons that fired and that did not, and the mean/rms of
each (one-signedness). It also gives the **per-hop** alignment: BPTT's error of layer k+1 fed into HM2-BP's own
backward of that layer (in place of HM2-BP's error), and the input error it returns compared with BPTT's error of
layer k. That isolates what one hop of the rule does to an error that was right on entry, from what the hops
above did to it.
"""
from __future__ import annotations

import argparse
import json

import torch

from snn2hw.learning import make_rule
from snn2hw.learning.spiketrain import chunked
from diag_cnn_hm2bp import load_setup
from snn2hw.models.tasks import build_model
from snn2hw.nn.calibrate import calibrate_thresholds, calibration_rate


def grads(model, rule, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def bptt_errors(model, x, y, loss_fn) -> dict:
    """layer -> (B, N) ``sum_t dL/ds[t]`` of BPTT's surrogate backward, and layer -> (B, N) spike counts."""
    model.zero_grad(set_to_none=True)
    outs = model(x, return_all=True)
    keep = [(layer, o) for layer, o in zip(model.layers, outs) if hasattr(layer, "threshold")]
    for _, o in keep:
        o.retain_grad()
    loss_fn(outs[-1], y).backward()
    model.zero_grad(set_to_none=True)
    return ({layer: o.grad.detach().sum(1).flatten(1) for layer, o in keep},
            {layer: o.detach().sum(1).flatten(1) for layer, o in keep})


def hm2bp_errors(model, rule, x, y, loss_fn, substitute: dict | None = None) -> tuple[dict, dict]:
    """(layer -> the count error HM2-BP's backward of that layer starts from, layer -> the input error it returns).
    ``substitute``: layer -> an error used in place of HM2-BP's own on entry to that layer's backward."""
    seen_in, seen_out = {}, {}
    real = chunked.layer_backward_chunked

    def spy(tr, g, targets, need_input, opts):
        if substitute is not None and tr.layer in substitute:
            g = substitute[tr.layer].to(g.dtype).reshape(g.shape)
            if rule.count_bounds:
                g = rule.bound_error(g, tr.s_out, tr.counts)
        seen_in[tr.layer] = g.detach().clone().flatten(1)
        r = real(tr, g, targets, need_input, opts)
        if r is not None:
            seen_out[tr.layer] = r.detach().clone().flatten(1)
        return r

    chunked.layer_backward_chunked = spy
    try:
        model.zero_grad(set_to_none=True)
        rule.compute_gradients(model, x, y, loss_fn, {})
        model.zero_grad(set_to_none=True)
    finally:
        chunked.layer_backward_chunked = real
    return seen_in, seen_out


def cos(u, v, mask=None):
    if mask is not None:
        u, v = u[mask], v[mask]
    d = float((u.double().norm() * v.double().norm()))
    return float((u.double() * v.double()).sum()) / d if d > 0 else float("nan")


def mean_rms(u):
    r = float(u.double().square().mean().sqrt())
    return float(u.double().mean()) / r if r > 0 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="benchmarks/configs/tune/digits_cnn_hm2bp_lr1e-3.json")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    ap.add_argument("--set", nargs="*", default=[], help="HM2-BP options key=json")
    ap.add_argument("--model", nargs="*", default=[], help="model spec overrides key=json (e.g. pool_v_th=0.5)")
    ap.add_argument("--errors", action="store_true", help="per-layer and per-hop count-error alignment")
    ap.add_argument("--same-loss", action="store_true",
                    help="BPTT minimises HM2-BP's own loss: with loss 'mse', the papers' count MSE with HM2-BP's targets "
                         "and margin (its dE/do is then HM2-BP's output error exactly), in place of the task's loss")
    ap.add_argument("--pool-factor", type=float, default=1.0,
                    help="after calibration, every sum-pool layer's threshold times this (calibration sets the "
                         "pools' thresholds too, so the model's pool_v_th alone changes nothing)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t, data, cfg, opts = load_setup(a.config, a.task, "hm2bp", a.set)
    spec = dict(cfg.get("model") or {})
    spec.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in a.model)})
    x_tr, y_tr = data["train"]
    if a.ckpt:
        from snn2hw.train.checkpoint import load_checkpoint
        model = load_checkpoint(a.ckpt)
    else:
        model = build_model(t, spec, a.seed)
        # the trainer's rate (``calibrate_rate`` "auto": conv/pool networks only), with the default fold
        rate = calibration_rate((cfg.get("trainer") or {}).get("calibrate_rate", "auto"), model)
        if rate is not None:
            calibrate_thresholds(model, x_tr[:32], rate)
    if a.pool_factor != 1.0:
        from snn2hw.nn.calibrate import _set_threshold
        from snn2hw.nn.conv import SumPoolLIF
        for layer in model.layers:
            if isinstance(layer, SumPoolLIF):
                v = float(layer.threshold)
                _set_threshold(layer, v * a.pool_factor, layer.surrogate_scale * v)
                print(f"pool threshold {v:.3f} -> {v * a.pool_factor:.3f}")
    hm, bp = make_rule("hm2bp", **opts), make_rule("bptt")
    loss_fn = t.loss_fn
    if a.same_loss and hm.loss == "mse":
        def loss_fn(out, y):  # HM2-BP's count MSE, differentiable in the counts (the margin mask is constant)
            counts = out.sum(1)
            err, _ = hm.count_error(counts.detach(), y)
            return 0.5 * ((counts - (counts.detach() - err)) * (err != 0)).square().sum(1).mean()
    names = [n for n, _ in model.named_parameters()]
    acc = {n: [0.0, 0.0, 0.0, 0.0, 0.0] for n in names}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    layers = [layer for layer in model.layers if hasattr(layer, "threshold")]
    err = {layer: {"h": [], "b": [], "c": [], "hop_in": [], "hop_b": []} for layer in layers}
    for b in range(a.batches):
        x, y = x_tr[32 * b:32 * (b + 1)], y_tr[32 * b:32 * (b + 1)]
        g1, g2 = grads(model, hm, x, y, loss_fn), grads(model, bp, x, y, loss_fn)
        for n, u, v in zip(names, g1, g2):
            if u is None or v is None:
                continue
            acc[n][0] += float((u * v).sum())
            acc[n][1] += float((u * u).sum())
            acc[n][2] += float((v * v).sum())
            acc[n][3] += float(u.sum()) / u.numel()  # mean gradient entry: < 0 means descent raises the
            acc[n][4] += float(v.sum()) / v.numel()  # weights on average, i.e. the layer's rates
        if a.errors:
            eb, counts = bptt_errors(model, x, y, loss_fn)
            # BPTT's loss is the batch mean; HM2-BP's error is the batch-mean loss's too (g_out = err / B)
            eh, _ = hm2bp_errors(model, hm, x, y, loss_fn)
            # per hop: BPTT's error of each layer fed into HM2-BP's backward of that layer
            _, hop_out = hm2bp_errors(model, hm, x, y, loss_fn, substitute=eb)
            for k, layer in enumerate(layers):
                err[layer]["h"].append(eh[layer])
                err[layer]["b"].append(eb[layer])
                err[layer]["c"].append(counts[layer])
                if k + 1 < len(layers) and layers[k + 1] in hop_out:
                    err[layer]["hop_in"].append(hop_out[layers[k + 1]])
    for n, (uv, uu, vv, mu, mv) in acc.items():
        if uu > 0 and vv > 0:
            print(f"{n:22s} cos {uv / (uu * vv) ** 0.5:+.3f}  |hm2bp|/|bptt| {(uu / vv) ** 0.5:.3g}  "
                  f"mean/rms hm2bp {mu / a.batches / (uu / a.batches / sizes[n]) ** 0.5:+.3f} "
                  f"bptt {mv / a.batches / (vv / a.batches / sizes[n]) ** 0.5:+.3f}")
    if a.errors:
        print("count error per spiking layer (HM2-BP dE/do vs BPTT sum_t dL/ds); 'hop': BPTT's error of the layer "
              "above through HM2-BP's backward of that layer, vs BPTT's error here")
        for k, layer in enumerate(layers):
            h, bb, c = (torch.cat(err[layer][key]) for key in ("h", "b", "c"))
            fired = c > 0
            hop = f"{cos(torch.cat(err[layer]['hop_in']), bb):+.3f}" if err[layer]["hop_in"] else "   -  "
            hop_f = f"{cos(torch.cat(err[layer]['hop_in']), bb, fired):+.3f}" if err[layer]["hop_in"] else "   -  "
            print(f"L{k} {type(layer).__name__:10s} n={h.shape[1]:5d} rate {float(c.mean()) / x_tr.shape[1]:.3f} "
                  f"fired {float(fired.double().mean()):.2f}  cos {cos(h, bb):+.3f} (fired {cos(h, bb, fired):+.3f}, "
                  f"silent {cos(h, bb, ~fired):+.3f})  hop {hop} (fired {hop_f})  mean/rms hm2bp {mean_rms(h):+.3f} "
                  f"bptt {mean_rms(bb):+.3f}  |h|/|b| {float(h.norm() / bb.norm()):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
