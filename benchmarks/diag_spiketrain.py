"""Diagnostics behind the HM2-BP / ST-RSBP accuracy notes in docs/learning-rules.md (not a benchmark).

* ``align TASK RULE [CKPT] [OPTIONS_JSON]``: cosine between the rule's update and BPTT's gradient of (a) the
  rule's own count loss and (b) the task's count cross-entropy, per parameter, on 128 training samples of
  a fresh (or the given; "" for fresh) network; also the output counts. OPTIONS_JSON may be a list of
  option sets, each compared with the same BPTT gradients.
* ``activity TASK CKPT``: per layer, the mean spike count and the fractions of silent and saturated
  (> T/2 spikes) (sample, neuron) pairs, on 256 training samples.
* ``solve TASK [CKPT] [OPTIONS_JSON]``: ST-RSBP's recurrent system M on 128 training samples: condition number,
  pivots at ``min_pivot``, off-diagonal row sums, error amplification ``|z| / |g|`` of the solve.
* ``hybrid TASK PARAMS EPOCHS [OPTIONS_JSON] [SEED]``: BPTT's gradient for every parameter but PARAMS
  (comma-separated names), which get ST-RSBP's update: where the accuracy is lost.
* ``outrows [CKPT] [OPTIONS_JSON]``: ST-RSBP's output-layer update (count cross-entropy, so both get the same
  ``dE/do``) against BPTT's gradient, per sample and output neuron (row of the weight matrix): cosine of the
  rows, ratio of their norms by the neuron's count and role (label or not, silent or firing), and the cosine
  of the batch sums, on 48 training samples.
* ``timing [CKPT] [OPTIONS_JSON]``: how much of BPTT's error on the hidden spikes (``dL/ds_h[t]`` through the output layer,
  at the hidden neuron's spike steps) one error per (sample, neuron) -- what ST-RSBP hands down -- or per
  sub-window can carry (the share of its energy in the per-window means), and the cosine of ST-RSBP's count
  error ``dE/do_h`` (per window with ``windows``) with BPTT's mean error per hidden spike (in the window), on
  128 training samples.
* ``descent [CKPT] [OPTIONS_JSON]``: the true (spiking) count cross-entropy and accuracy on 256 training samples
  after one step along ST-RSBP's update and along BPTT's gradient (and along their signs, roughly what Adam's
  steps follow), of the same length relative to the weights, for the output, hidden and all weights: is the
  rule's update a worse descent direction of the loss that both minimise?
* ``swap CKPT RULE EPOCHS [OPTIONS_JSON]``: continue training a checkpoint with RULE (fresh Adam, the task's
  recipe over EPOCHS; validation accuracy per epoch): does BPTT leave the point where ST-RSBP stalled, does
  ST-RSBP keep the point BPTT reached?
* ``probe BINS``: a linear classifier (logistic regression, standardised features, C = 0.1) on the Braille
  input events summed over ``BINS`` equal time bins: how much of the task the counts alone carry.

    python benchmarks/diag_spiketrain.py align digits hm2bp
    python benchmarks/diag_spiketrain.py activity digits out/bench_accuracy/<run>/model.ckpt
    python benchmarks/diag_spiketrain.py probe 1
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

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


def solve(task_name: str, ckpt: str | None = None, options: str | None = None) -> None:
    """ST-RSBP's recurrent system on 128 training samples: condition number of M, how many pivots
    ``1 - S_i`` sit at ``min_pivot``, the spread of the off-diagonal (recurrent) part, and how much the solve
    amplifies the error (``|z| / |g|``)."""
    from snn2hw.learning import make_rule
    from snn2hw.models.tasks import build_model, default_rule_options, get_task
    from snn2hw.train.checkpoint import load_checkpoint

    task = get_task(task_name)
    x, y = _train_slice(task, 128)
    model = load_checkpoint(ckpt) if ckpt else build_model(task, None, 0)
    rule = make_rule("strsbp", **{**default_rule_options("strsbp", task.steps(None)), **json.loads(options or "{}")})
    rule.setup(model)
    seen = []
    system, coefficients = rule.system, rule.coefficients

    def coeffs(tr, g, stats):
        c = coefficients(tr, g, stats)
        if tr.rec_weight is not None:
            m = system(tr, stats)
            seen.append((m, g, c[0] * tr.spec.v_th, stats.counts))
        return c

    rule.coefficients = coeffs
    rule.compute_gradients(model, x, y, task.loss_fn, {})
    for m, g, z, counts in seen:
        diag = torch.diagonal(m, dim1=1, dim2=2)
        off = m - torch.diag_embed(diag)
        cond = torch.linalg.cond(m)
        amp = z.norm(dim=1) / g.norm(dim=1).clamp(min=1e-30)
        q = lambda t: " / ".join(f"{float(v):.3g}" for v in torch.quantile(t.flatten().float(),  # noqa: E731
                                                                             torch.tensor([0.5, 0.9, 1.0])))
        print(f"window of {m.shape[0]} samples: cond(M) median/p90/max {q(cond)};  |1 - S| at min_pivot "
              f"{float((diag.abs() <= rule.min_pivot + 1e-9).float().mean()):.3f};  diag median/p90/max {q(diag.abs())};  "
              f"row sum |off-diag| {q(off.abs().sum(2))};  |z|/|g| {q(amp)};  silent hidden "
              f"{float((counts == 0).float().mean()):.2f}")


def _tag(opts: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in sorted(opts.items())) or "default"


def hybrid(task_name: str, rule_params: str, epochs: str, options: str | None = None, seed: str = "0") -> None:
    """Train with BPTT's gradient for every parameter except those named in ``rule_params`` (comma-separated,
    e.g. ``layers.1.weight``), which take ST-RSBP's update (``options``: its rule options); prints the
    validation accuracy per epoch. Which layer's credit assignment costs the accuracy: the gap of a hybrid
    to plain BPTT is what ST-RSBP's update of those parameters loses. Config: the task's defaults."""
    from snn2hw.learning import make_rule
    from snn2hw.learning.base import BatchResult, LearningRule, register_rule
    from snn2hw.learning.experiment import train_task

    names = [n for n in rule_params.split(",") if n]
    opts = json.loads(options or "{}")

    @register_rule
    class Hybrid(LearningRule):
        name = "diag-hybrid"

        def __init__(self, **_):
            self.bptt, self.rule = make_rule("bptt"), make_rule("strsbp", **opts)

        def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0):
            params = dict(model.named_parameters())
            self.rule.compute_gradients(model, x, y, loss_fn, forward_kwargs, scale)
            keep = {n: params[n].grad.clone() for n in names}
            for p in params.values():
                p.grad = None
            res = self.bptt.compute_gradients(model, x, y, loss_fn, forward_kwargs, scale)
            for n, g in keep.items():
                params[n].grad = g
            return BatchResult(res.loss, res.output)

    r = train_task(task_name, "diag-hybrid", {"rule_options": {}}, int(epochs), int(seed),
                   out=f"out/diag_hybrid/{task_name}-{rule_params or 'none'}-{_tag(opts)}-{seed}", deploy=False)
    print(f"ST-RSBP for [{rule_params}] {json.dumps(opts)}: val per epoch "
          f"{[h.get('val_accuracy') for h in r['history']]}, best val {r['float_val_accuracy']:.4f}")


def _model(task, ckpt: str | None):
    from snn2hw.models.tasks import build_model
    from snn2hw.train.checkpoint import load_checkpoint

    return load_checkpoint(ckpt) if ckpt else build_model(task, None, 0)


def _strsbp(task, options: str | None):
    from snn2hw.learning import make_rule
    from snn2hw.models.tasks import default_rule_options

    return make_rule("strsbp", **{**default_rule_options("strsbp", task.steps(None)), "loss": "task",
                                  **json.loads(options or "{}")})


def _braille_rule(ckpt: str | None, options: str | None, n: int):
    """(task, n training samples x, y, the model (fresh or ``ckpt``), ST-RSBP with ``options``) of Braille."""
    from snn2hw.models.tasks import get_task

    task = get_task("braille")
    x, y = _train_slice(task, n)
    model = _model(task, ckpt)
    rule = _strsbp(task, options)
    rule.setup(model)
    return task, x, y, model, rule


def _grads(model, fn) -> dict:
    """The gradients ``fn`` leaves on the model's parameters (cleared first)."""
    for p in model.parameters():
        p.grad = None
    fn()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def outrows(ckpt: str | None = None, options: str | None = None, n: int = 48) -> None:
    """ST-RSBP's output-layer update against BPTT's gradient of the same loss, row by row (see the docstring)."""
    task, x, y, model, rule = _braille_rule(ckpt, options, n)
    name = [k for k, _ in model.named_parameters() if k.endswith("weight")][-1]
    rows_rule, rows_bptt, counts = [], [], []
    for b in range(n):  # per sample: its own rows
        xb, yb = x[b:b + 1], y[b:b + 1]
        rows_rule.append(_grads(model, lambda: rule.compute_gradients(model, xb, yb, task.loss_fn, {}))[name])
        rows_bptt.append(_grads(model, lambda: task.loss_fn(model(xb), yb).backward())[name])
        with torch.no_grad():
            counts.append(model(xb).sum(1)[0])
    r, g, c = torch.stack(rows_rule), torch.stack(rows_bptt), torch.stack(counts)
    cos = torch.nn.functional.cosine_similarity
    row_cos, ratio = cos(r, g, dim=2), r.norm(dim=2) / g.norm(dim=2).clamp(min=1e-30)
    label = torch.zeros_like(c, dtype=torch.bool)
    label[torch.arange(n), y.long()] = True
    energy = g.norm(dim=2).square()
    for name, mask in (("label, firing", label & (c > 0)), ("label, silent", label & (c == 0)),
                       ("other, firing", ~label & (c > 0)), ("other, silent", ~label & (c == 0))):
        if bool(mask.any()):
            print(f"{name:14s} rows {int(mask.sum()):5d}  row cosine median {float(row_cos[mask].nanmedian()):+.3f}  "
                  f"|rule| / |bptt| median {float(ratio[mask].median()):.3g}  share of BPTT's energy "
                  f"{float(energy[mask].sum() / energy.sum()):.3f}")
    for lo, hi in ((1, 8), (8, 32), (32, 96), (96, 10 ** 9)):
        mask = (c >= lo) & (c < hi)
        if bool(mask.any()):
            print(f"count in [{lo}, {hi}): rows {int(mask.sum()):5d}  |rule| / |bptt| median "
                  f"{float(ratio[mask].median()):.3g}  row cosine median {float(row_cos[mask].median()):+.3f}")
    even = r * (g.norm(dim=2, keepdim=True) / r.norm(dim=2, keepdim=True).clamp(min=1e-30))
    print(f"cosine of the batch sums {float(cos(r.sum(0).flatten(), g.sum(0).flatten(), 0)):+.3f}; with every row "
          f"rescaled to BPTT's norm {float(cos(even.sum(0).flatten(), g.sum(0).flatten(), 0)):+.3f}")


def timing(ckpt: str | None = None, options: str | None = None, n: int = 128) -> None:
    """How much of BPTT's hidden error a count-level (or per-window) error can carry (see the docstring)."""
    task, x, y, model, rule = _braille_rule(ckpt, options, n)
    hidden, top = model.layers[0], model.layers[1:]
    with torch.no_grad():
        s_h = hidden(x)
    s_h.requires_grad_(True)
    out = s_h
    for layer in top:
        out = layer(out)
    (d,) = torch.autograd.grad(task.loss_fn(out, y) * n, s_h)  # per sample: dL/ds_h[t] through the layers above
    spikes = s_h.detach() > 0
    steps = s_h.shape[1]
    energy = float((d.square() * spikes).sum())
    print(f"hidden mean count {float(spikes.sum(1).float().mean()):.2f}")
    for k in (1, 2, 4, 8, 16, 32):
        cuts = [round(i * steps / k) for i in range(k + 1)]
        carried = 0.0
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            count = spikes[:, t0:t1].sum(1)
            mean = (d[:, t0:t1] * spikes[:, t0:t1]).sum(1) / count.clamp(min=1)
            carried += float((count * mean.square()).sum())
        print(f"one error per (sample, neuron) and window, {k:2d} windows: {carried / energy:.3f} of BPTT's error "
              f"energy at the hidden spikes")
    seen = []
    coefficients = rule.coefficients

    def keep(tr, g, stats):
        if tr.layer is hidden:
            seen.append(g.clone())
        return coefficients(tr, g, stats)

    rule.coefficients = keep
    rule.compute_gradients(model, x, y, task.loss_fn, {})
    cuts = [round(i * steps / rule.windows) for i in range(rule.windows + 1)]
    g = torch.cat(seen).reshape(rule.windows, n, -1) * n  # per window (groups in order) and sample
    rule_g, bptt_g = [], []
    for k, (t0, t1) in enumerate(zip(cuts[:-1], cuts[1:])):
        count = spikes[:, t0:t1].sum(1)
        fire = count > 0
        rule_g.append(g[k][fire])
        bptt_g.append(((d[:, t0:t1] * spikes[:, t0:t1]).sum(1) / count.clamp(min=1))[fire].to(g.dtype))
    rule_g, bptt_g = torch.cat(rule_g), torch.cat(bptt_g)
    cos = torch.nn.functional.cosine_similarity(rule_g, bptt_g, 0)
    print(f"ST-RSBP's dE/do_h ({rule.windows} window(s)) against BPTT's mean error per hidden spike in the window, "
          f"firing (sample, neuron, window): cosine {float(cos):+.3f}, same sign "
          f"{float(((rule_g > 0) == (bptt_g > 0)).float().mean()):.3f}")


def descent(ckpt: str | None = None, options: str | None = None, n: int = 256) -> None:
    """One step along the rule's update and along BPTT's gradient, on the true loss (see the docstring)."""
    task, x, y, model, rule = _braille_rule(ckpt, options, n)
    params = dict(model.named_parameters())

    def score():
        with torch.no_grad():
            out = model(x)
            return float(task.loss_fn(out, y)), float((out.sum(1).argmax(1) == y).float().mean())

    directions = {"strsbp": _grads(model, lambda: rule.compute_gradients(model, x, y, task.loss_fn, {})),
                  "bptt": _grads(model, lambda: task.loss_fn(model(x), y).backward())}
    base = {k: p.detach().clone() for k, p in params.items()}
    loss0, acc0 = score()
    print(f"loss {loss0:.4f}, accuracy {acc0:.3f}; change after a step of |dw| / |w| =")
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    for group, keys in (("output", names[-1:]), ("hidden", names[:-1]), ("all", names)):
        w_norm = sum(float(base[k].square().sum()) for k in keys) ** 0.5
        for form in ("update", "sign"):
            for name, g in directions.items():
                d = {k: g[k] if form == "update" else torch.sign(g[k]) for k in keys}
                d_norm = sum(float(v.square().sum()) for v in d.values()) ** 0.5
                row = []
                for rel in (0.003, 0.01, 0.03):
                    with torch.no_grad():
                        for k in keys:
                            params[k].copy_(base[k] - rel * w_norm * d[k] / d_norm)
                    loss, acc = score()
                    row.append(f"{rel:g}: {loss - loss0:+.4f} / {acc - acc0:+.3f}")
                with torch.no_grad():
                    for k in keys:
                        params[k].copy_(base[k])
                print(f"  {group:6s} {form:6s} {name:6s} loss / accuracy  " + "   ".join(row))


def swap(ckpt: str, rule: str, epochs: str, options: str | None = None) -> None:
    """Continue training ``ckpt`` on Braille with ``rule`` (see the docstring)."""
    import snn2hw.models.tasks as tasks
    from snn2hw.learning.experiment import train_task
    from snn2hw.train.checkpoint import load_checkpoint

    opts = json.loads(options or "{}")
    tasks.build_model = lambda *_: load_checkpoint(ckpt)  # train_task builds its model through this
    r = train_task("braille", rule, {"rule_options": opts}, int(epochs), 0,
                   out=f"out/diag_swap/{Path(ckpt).parent.name}-{rule}-{_tag(opts)}", deploy=False)
    print(f"{ckpt} continued with {rule} {json.dumps(opts)}: val per epoch "
          f"{[h.get('val_accuracy') for h in r['history']]}, best val {r['float_val_accuracy']:.4f}")


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


STAGES = {"align": align, "solve": solve, "hybrid": hybrid, "activity": activity, "outrows": outrows,
          "timing": timing, "descent": descent, "swap": swap, "probe": lambda bins: probe(int(bins))}

if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        raise SystemExit(__doc__)
    STAGES[sys.argv[1]](*sys.argv[2:])
