"""The spike-train rules' hidden-activity term (``rate_penalty``, ``rate_target``): the error it adds to each hidden
layer's ``dE/do`` is the gradient of ``rate_penalty * sum_j max(0, o_j / T - rate_target)`` (batch mean), it
changes nothing when off, and it lowers hidden rates when training."""
from __future__ import annotations

import math

import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential
from snn2hw.train.trainer import Trainer, TrainerConfig
from test_learning_spiketrain import _task  # tests/ is on sys.path, as for test_differential

D = torch.float64


def _conv_net():
    """2x8x8 input -> conv 3c3 -> sum-pool 2 -> conv 4c2 -> dense 3: hidden conv, pool and conv layers."""
    torch.manual_seed(0)
    return SpikingSequential([ConvLIF((2, 8, 8), 3, 3, du=0.3, dv=0.2, weight_gain=3.0),
                              SumPoolLIF((3, 6, 6), 2, du=0.3, dv=0.2),
                              ConvLIF((3, 3, 3), 4, 2, du=0.3, dv=0.2, weight_gain=3.0), Flatten(),
                              LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=3.0)]).double()


def _dense_net(rec: bool):
    torch.manual_seed(0)
    first = (RecurrentLIFDense(6, 8, du=0.3, dv=0.2, weight_gain=2.0, rec_gain=0.3) if rec else
             LIFDense(6, 8, du=0.3, dv=0.2, weight_gain=2.0))
    return SpikingSequential([first, LIFDense(8, 8, du=0.3, dv=0.2, weight_gain=2.0),
                              LIFDense(8, 3, du=0.3, dv=0.2)]).double()


def _inputs(shape, seed=0, batch=4, steps=40):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, *shape, generator=g) < 0.35).to(D), torch.tensor([0, 2, 1, 0])


def _record_errors(monkeypatch):
    """Wrap the rules' layer backwards: every call's (layer, count error handed in, input error handed out, output
    spikes)."""
    from snn2hw.learning.spiketrain import chunked, hop, whole

    calls, depth = [], [0]
    for module, name in ((whole, "layer_backward"), (chunked, "layer_backward_chunked"), (hop, "hop_backward_chunked")):
        inner = getattr(module, name)

        def wrapped(tr, g, targets, need_input, opts, inner=inner):
            depth[0] += 1  # one backward may hand its layer to another: record the outer call only
            try:
                result = inner(tr, g, targets, need_input, opts)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                calls.append((tr.layer, g.clone(), None if result is None else result.clone(), tr.s_out))
            return result
        monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("rule_name,net,opts,target", [
    ("hm2bp", "conv", {}, 0.0),
    ("hm2bp", "conv", {"count_bounds": True}, 0.1),
    ("hm2bp", "dense", {}, 0.05),
    ("strsbp", "rec", {"windows": 2}, 0.1),  # the whole sample's term, shared by its sub-windows
])
def test_added_error_is_the_gradient_of_the_rate_term(monkeypatch, rule_name, net, opts, target):
    lam = 0.7
    make = (lambda: _conv_net()) if net == "conv" else (lambda: _dense_net(net == "rec"))  # noqa: E731
    x, y = _inputs((2, 8, 8) if net == "conv" else (6,))
    rule = make_rule(rule_name, margin=0, target_true=10, target_false=3, rate_penalty=lam, rate_target=target,
                     **opts)
    model = make()
    records, _ = rule.forward(model, x)
    hidden = {k: r for k, r in enumerate(records) if r is not None}
    hidden.pop(max(hidden))  # the output
    # the reference: autograd of the stated term (batch mean) with respect to each hidden layer's counts
    ref, e_ref = {}, 0.0
    for k, r in hidden.items():
        steps = r.s_out.shape[1]
        o = r.s_out.to(D).sum(1).reshape(x.shape[0], -1).requires_grad_(True)
        e = lam * torch.relu(o / steps - target).sum(1).mean()
        (ref[k],) = torch.autograd.grad(e, o)
        e_ref += float(e.detach())
    assert sum(float((g > 0).sum()) for g in ref.values()) > 0, "the term must reach some neuron"
    if opts.get("count_bounds"):  # whatever the bounds drop, the term never asks a silent neuron to fire less
        for k, r in hidden.items():
            silent = r.s_out.sum(1).reshape(x.shape[0], -1) == 0
            assert float(ref[k][silent].abs().sum()) == 0
    losses = []
    for penalty in (0.0, lam):
        rule = make_rule(rule_name, margin=0, target_true=10, target_false=3, rate_penalty=penalty,
                         rate_target=target, **opts)
        with monkeypatch.context() as patch:
            calls = _record_errors(patch)
            model = make()
            losses.append(float(rule.compute_gradients(model, x, y, None, {}).loss))
        index = {id(layer): k for k, layer in enumerate(model.layers)}
        checked = set()
        # every hidden layer in every segment (ST-RSBP's sub-windows: each gets the whole sample's dE/do, as each
        # gets the output's) receives what the layer above handed down plus the term's gradient; with
        # count_bounds the bounds act on that sum
        for (layer, g, _, s_out), (_, _, from_above, _) in zip(calls[1:], calls[:-1]):
            if layer is calls[0][0]:  # a new segment starts at the output layer
                continue
            k = index[id(layer)]
            want = from_above + ref[k] * (penalty / lam)
            if opts.get("count_bounds"):
                want = rule.bound_error(want, s_out)
            torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-15)
            if penalty and not opts.get("count_bounds"):  # the added error alone, against the reference
                torch.testing.assert_close(g - from_above, ref[k], rtol=1e-9, atol=1e-12)  # (a + r) - a: rounding
            checked.add(k)
        assert checked == set(ref)
    assert losses[1] - losses[0] == pytest.approx(e_ref, rel=1e-12)


@pytest.mark.parametrize("rule_name,rec", [("hm2bp", False), ("strsbp", True)])
def test_off_changes_nothing(rule_name, rec):
    """Off (the default), and on with a target no neuron can exceed (1 spike per step), the updates are bit for
    bit those of a rule without the option."""
    x, y = _inputs((6,))
    grads = []
    for opts in ({}, {"rate_penalty": 0.0}, {"rate_penalty": 5.0, "rate_target": 1.0}):
        net = _dense_net(rec)
        loss = make_rule(rule_name, margin=0, count_bounds=True, **opts).compute_gradients(net, x, y, None, {}).loss
        grads.append([loss] + [p.grad.clone() for p in net.parameters() if p.grad is not None])
    for other in grads[1:]:
        assert len(other) == len(grads[0])
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("opts,match", [
    ({"rate_penalty": -0.1}, "rate_penalty must be a finite number >= 0"),
    ({"rate_penalty": math.nan}, "rate_penalty must be a finite number >= 0"),
    ({"rate_penalty": math.inf}, "rate_penalty must be a finite number >= 0"),
    ({"rate_penalty": "1"}, "rate_penalty must be a finite number >= 0"),
    ({"rate_target": 1.5}, r"rate_target must be a rate in \[0, 1\]"),
    ({"rate_target": -0.1}, r"rate_target must be a rate in \[0, 1\]"),
    ({"rate_target": math.nan}, r"rate_target must be a rate in \[0, 1\]"),
])
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_bad_options(rule_name, opts, match):
    with pytest.raises(LearningRuleError, match=match):
        make_rule(rule_name, **opts)


def test_penalty_lowers_hidden_rates():
    torch.set_num_threads(1)
    x, y = _task()
    xv, yv = _task(seed=1)
    result = {}
    for penalty in (0.0, PENALTY):
        torch.manual_seed(0)
        net = SpikingSequential([LIFDense(16, 32, du=0.3, dv=0.2, weight_gain=3.0),
                                 LIFDense(32, 4, du=0.3, dv=0.2, weight_gain=1.0)])
        cfg = TrainerConfig(epochs=4, batch_size=32, lr=1e-2, progress=False, tensorboard=False, rule="hm2bp",
                            rule_options={"target_true": 12, "target_false": 2, "margin": 2, "count_bounds": True,
                                          "rate_penalty": penalty})
        trainer = Trainer(net, cfg)
        trainer.fit((x, y), (xv, yv))
        records, out = trainer.rule.forward(net, xv)
        rate = float(records[0].s_out.float().mean())
        off = float((records[0].s_out.sum(1) == 0).float().mean())
        acc = float((out.sum(1).argmax(1) == yv).float().mean())
        result[penalty] = (rate, off, acc)
    (rate0, off0, acc0), (rate1, off1, acc1) = result[0.0], result[PENALTY]
    assert rate1 < 0.7 * rate0, result
    assert off1 > off0, result
    assert acc1 > 0.85, result  # chance: 0.25; the term must not stop the task from being learnt


PENALTY = 30.0  # per count: 30 / 40 steps, against output errors of a few counts
