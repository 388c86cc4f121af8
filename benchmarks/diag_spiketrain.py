"""Diagnostics behind the HM2-BP / ST-RSBP accuracy notes in docs/learning-rules.md (not a benchmark).

* ``align TASK RULE [CKPT] [OPTIONS_JSON]``: cosine between the rule's update and BPTT's gradient of (a) the
  rule's own count loss and (b) the task's count cross-entropy, per parameter, on 128 training samples of
  a fresh (or the given; "" for fresh) network; also the output counts. OPTIONS_JSON may be a list of
  option sets, each compared with the same BPTT gradients.
* ``activity TASK CKPT``: per layer, the mean spike count and the fractions of silent and saturated
  (> T/2 spikes) (sample, neuron) pairs, on 256 training samples.
* ``probe BINS``: a linear classifier (logistic regression, standardised features, C = 0.1) on the Braille
  input events summed over ``BINS`` equal time bins: how much of the task the counts alone carry.

    python benchmarks/diag_spiketrain.py align digits hm2bp
    python benchmarks/diag_spiketrain.py activity digits out/bench_accuracy/<run>/model.ckpt
    python benchmarks/diag_spiketrain.py probe 1
"""
from __future__ import annotations

import json
import sys

import torch


def _train_slice(task, n):
    x, y = task.load(None)["train"]
    return x[:n], y[:n]


def align(task_name: str, rule_name: str, ckpt: str | None = None, options: str | None = None) -> None:
    from snn2hw.learning import make_rule
    from snn2hw.models.tasks import build_model, default_rule_options, get_task
    from snn2hw.train.checkpoint import load_checkpoint

    task = get_task(task_name)
    x, y = _train_slice(task, 128)
    model = load_checkpoint(ckpt) if ckpt else build_model(task, None, 0)
    sets = json.loads(options or "{}")
    sets = sets if isinstance(sets, list) else [sets]
    rules = [make_rule(rule_name, **{**default_rule_options(rule_name, task.steps(None)), **o}) for o in sets]
    rule = rules[0]
    rule.setup(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def grads(fn):
        for _, p in params:
            p.grad = None
        fn()
        return [p.grad.clone() for _, p in params]

    def mse_loss(out, yy):
        err, per_sample = rule.count_error(out.sum(1), yy)
        return per_sample.mean()

    g_mse = grads(lambda: mse_loss(model(x), y).backward())
    g_ce = grads(lambda: task.loss_fn(model(x), y).backward())
    cos = torch.nn.functional.cosine_similarity
    for o, r in zip(sets, rules):
        print(f"options {json.dumps(o)}")
        g_rule = grads(lambda: r.compute_gradients(model, x, y, task.loss_fn, {}))
        for (name, _), a, b, c in zip(params, g_rule, g_mse, g_ce):
            print(f"  {name:24s} cos(rule, bptt count-MSE) {float(cos(a.flatten(), b.flatten(), 0)):+.3f}   "
                  f"cos(rule, bptt count-CE) {float(cos(a.flatten(), c.flatten(), 0)):+.3f}   "
                  f"|rule| / |bptt CE| {float(a.norm() / c.norm().clamp(min=1e-30)):.3g}")
    with torch.no_grad():
        counts = model(x).sum(1)
    print(f"output counts: label {float(counts.gather(1, y.view(-1, 1)).mean()):.2f}, all {float(counts.mean()):.2f}")


def activity(task_name: str, ckpt: str) -> None:
    from snn2hw.models.tasks import get_task
    from snn2hw.train.checkpoint import load_checkpoint

    x, _ = _train_slice(get_task(task_name), 256)
    model = load_checkpoint(ckpt).eval()
    s = x
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            s = layer(s)
            c = s.sum(1)
            print(f"layer {i} {type(layer).__name__:18s} mean count {float(c.mean()):6.2f}  silent "
                  f"{float((c == 0).float().mean()):.2f}  never firing {int((c.sum(0) == 0).sum())}/{c.shape[1]}  "
                  f"> T/2 {float((c > s.shape[1] / 2).float().mean()):.2f}")


def probe(bins: int) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from snn2hw.models.tasks import get_task

    d = get_task("braille").load(None)
    (xt, yt), (xv, yv) = d["train"], d["val"]

    def feats(x):
        return x.reshape(x.shape[0], bins, -1, x.shape[2]).sum(2).reshape(x.shape[0], -1).numpy()

    scaler = StandardScaler().fit(feats(xt))
    clf = LogisticRegression(max_iter=300, C=0.1).fit(scaler.transform(feats(xt)), yt.numpy())
    print(f"{bins} time bin(s): train {clf.score(scaler.transform(feats(xt)), yt.numpy()):.3f}  "
          f"val {clf.score(scaler.transform(feats(xv)), yv.numpy()):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "align":
        align(*args)
    elif cmd == "activity":
        activity(*args)
    elif cmd == "probe":
        probe(int(args[0]))
    else:
        raise SystemExit(__doc__)
