"""FA, DFA, DECOLLE, e-prop and SuperSpike: gradients against hand-built references and closed forms,
rule state through resume, clear errors, and learning on small tasks."""
from __future__ import annotations


import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.learning.online import run_online
from snn2hw.learning.superspike import label_raster
from snn2hw.nn import functional as F
from snn2hw.nn.conv import ConvLIF, LeakyReadout
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential, hop_delay
from snn2hw.train.losses import count_cross_entropy, membrane_cross_entropy, van_rossum_distance
from snn2hw.train.trainer import Trainer, TrainerConfig, final_output
from test_learning_base import _data  # noqa: E402  (tests/ is on sys.path, as for test_differential)


def _net(kind="ff", readout=False, seed=0, hidden=(16, 12)):
    torch.manual_seed(seed)
    kw = dict(du=0.3, dv=0.2, v_th=1.0, weight_gain=3.0)
    first = RecurrentLIFDense(10, hidden[0], bias=True, rec_gain=0.5, **kw) if kind == "rec" else LIFDense(10, hidden[0], bias=True, **kw)
    layers = [first, LIFDense(hidden[0], hidden[1], **kw)]
    layers.append(LeakyReadout(hidden[1], 3, du=0.3, dv=0.2, weight_gain=2.0) if readout else LIFDense(hidden[1], 3, **kw))
    return SpikingSequential(layers)


def _grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _rule_grads(rule, model, x, y, loss_fn=lambda o, y: count_cross_entropy(final_output(o), y)):
    model.zero_grad(set_to_none=True)
    rule.setup(model)
    res = rule.compute_gradients(model, x, y, loss_fn, {})
    return _grads(model), res


def _bptt_grads(model, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return _grads(model)


def _close(a, b, **kw):
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, **kw)


# --- feedback alignment -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,readout", [("ff", False), ("rec", True)])
def test_fa_with_feedback_equal_to_the_weights_is_bptt(kind, readout):
    x, y = _data(n=8)
    model = _net(kind, readout)
    loss_fn = (lambda o, y: membrane_cross_entropy(o, y)) if readout else (lambda o, y: count_cross_entropy(o, y))
    ref = _bptt_grads(model, x, y, loss_fn)
    rule = make_rule("fa")
    rule.setup(model)
    rule.feedback = [None] + [layer.weight.detach().clone() for layer in model.layers[1:]]
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    _close(_grads(model), ref, rtol=1e-5, atol=1e-7)


def test_fa_random_feedback_against_a_hand_built_backward():
    x, y = _data(n=8)
    model = _net()
    l1, l2, l3 = model.layers
    rule = make_rule("fa", seed=3)
    got, _ = _rule_grads(rule, model, x, y)
    b2, b3 = rule.feedback[1], rule.feedback[2]
    assert b2.shape == l2.weight.shape and not torch.allclose(b2, l2.weight)
    # By hand: each layer's BPTT gives dL/da (its input current); FA sends dL/da[t+1] @ B down the hop.
    model.zero_grad(set_to_none=True)

    def neuron(layer, a):
        return F.cuba_lif_sequence(a, 1 - layer.du, 1 - layer.dv, layer.threshold,
                                   layer.bias if layer.bias is not None else 0.0, layer.surrogate)

    h1 = l1(x)
    h2 = l2(h1.detach())
    a3 = hop_delay(h2.detach() @ l3.weight.t())
    a3_leaf = a3.detach().requires_grad_(True)
    loss = count_cross_entropy(neuron(l3, a3_leaf), y)
    (g_a3,) = torch.autograd.grad(loss, a3_leaf)
    a3.backward(g_a3)  # W3's gradient: exact
    g_h2 = torch.nn.functional.pad(g_a3[:, 1:], (0, 0, 0, 1)) @ b3
    a2 = hop_delay(h1.detach() @ l2.weight.t())
    a2_leaf = a2.detach().requires_grad_(True)
    (g_a2,) = torch.autograd.grad(neuron(l2, a2_leaf), a2_leaf, g_h2)
    a2.backward(g_a2)
    h1.backward(torch.nn.functional.pad(g_a2[:, 1:], (0, 0, 0, 1)) @ b2)
    _close(got, _grads(model), rtol=1e-5, atol=1e-7)


def _recurrent_reference(a_ff, v, b_v, alpha, beta, v_th, bias, surrogate):
    """A recurrent CUBA-LIF as an unrolled autograd loop whose recurrent product ``s[t-1] V^T`` sends its
    error back through ``b_v`` (feedback alignment through time): the hand-built reference."""
    from snn2hw.learning.feedback import feedback_projection
    from snn2hw.nn.surrogate import get_surrogate

    sur, project = get_surrogate(surrogate), feedback_projection(b_v)
    u = v_m = s = a_ff.new_zeros(a_ff.shape[0], a_ff.shape[2])
    out = []
    for t in range(a_ff.shape[1]):
        a = a_ff[:, t] if t == 0 else a_ff[:, t] + project(s, v)
        u = alpha * u + a
        v_m = beta * v_m + u + bias
        s = sur(v_m - v_th)
        v_m = v_m * (1.0 - s.detach())
        out.append(s)
    return torch.stack(out, 1)


@pytest.mark.parametrize("numba", [True, False])
def test_recurrent_feedback_through_time_against_an_unrolled_loop(monkeypatch, numba):
    from snn2hw.nn.recurrent import recurrent_cuba_lif_sequence

    if not numba:
        monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    g = torch.Generator().manual_seed(4)
    n = 12
    a_ff = (torch.randn(3, 25, n, generator=g, dtype=torch.float64) * 0.7 + 0.2).requires_grad_(True)
    v = (torch.randn(n, n, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    b_v = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.3
    w_out = torch.randn(25, n, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda: recurrent_cuba_lif_sequence(a_ff, v, 0.7, 0.8, 1.0, 0.05, feedback=b_v),
               lambda: _recurrent_reference(a_ff, v, b_v, 0.7, 0.8, 1.0, 0.05, "fast_sigmoid"),
               lambda: recurrent_cuba_lif_sequence(a_ff, v, 0.7, 0.8, 1.0, 0.05)):
        s = fn()
        grads.append(torch.autograd.grad((s * w_out).sum(), (a_ff, v)))
    _close(list(grads[0]), list(grads[1]), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(grads[0][0], grads[2][0])  # the feedback changed the error through time


def test_fa_recurrent_feedback_random_is_fa_through_time():
    x, y = _data(n=8)
    model = _net("rec", readout=True)
    loss_fn = lambda o, y: membrane_cross_entropy(o, y)  # noqa: E731
    exact, _ = _rule_grads(make_rule("fa", seed=3), model, x, y, loss_fn)
    rule = make_rule("fa", seed=3, recurrent_feedback="random")
    rule.setup(model)
    b_v, v = rule.rec_feedback[0], model.layers[0].effective_rec_weight().detach()
    assert b_v.shape == v.shape and rule.rec_feedback[1:] == [None, None]
    assert float(b_v.std()) == pytest.approx(float(v.std()), rel=0.2) and not torch.allclose(b_v, v)
    # the between-layer matrices are those of the default rule (same seed)
    default = make_rule("fa", seed=3)
    default.setup(model)
    assert all(torch.equal(a, b) for a, b in zip(rule.feedback[1:], default.feedback[1:]))
    random_grads, _ = _rule_grads(rule, model, x, y, loss_fn)
    # only the recurrent layer's update changes (the layers above learn from the same errors)
    n0 = len(list(model.layers[0].parameters()))
    _close(random_grads[n0:], exact[n0:])
    assert not torch.allclose(random_grads[0], exact[0])
    # with B_V = V it is the default rule again
    rule.rec_feedback[0] = v.clone()
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    _close(_grads(model), exact, rtol=1e-6, atol=1e-9)
    # state: saved and restored, and a checkpoint of the other mode is refused
    state = rule.state_dict()
    fresh = make_rule("fa", seed=3, recurrent_feedback="random")
    fresh.setup(model)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.rec_feedback[0], v)
    other = make_rule("fa", seed=3)
    other.setup(model)
    with pytest.raises(LearningRuleError, match="recurrent_feedback='random'"):
        other.load_state_dict(state)
    with pytest.raises(LearningRuleError, match="recurrent_feedback must be one of"):
        make_rule("fa", recurrent_feedback="mirror")


# --- direct feedback alignment ----------------------------------------------------------------------------
def test_dfa_equals_bptt_with_feedback_equal_to_the_weights_and_a_memoryless_readout():
    # One hidden layer, a read-out with no memory (du = dv = 1: v[t] = W s[t-1]): BPTT sends the error
    # e[t+1] @ W to the hidden spikes at t, exactly what DFA does with B = W and delay alignment.
    x, y = _data(n=8)
    torch.manual_seed(1)
    model = SpikingSequential([LIFDense(10, 16, du=0.3, dv=0.2, weight_gain=3.0),
                               LeakyReadout(16, 3, du=1.0, dv=1.0)])
    loss_fn = lambda o, y: membrane_cross_entropy(o, y, over_time="mean")  # noqa: E731
    ref = _bptt_grads(model, x, y, loss_fn)
    rule = make_rule("dfa")
    rule.setup(model)
    rule.feedback = [model.layers[1].weight.detach().clone(), None]
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    _close(_grads(model), ref, rtol=1e-5, atol=1e-7)
    # without delay alignment the error lands one step early: a different update
    rule.align_delays = False
    model.zero_grad(set_to_none=True)
    rule.compute_gradients(model, x, y, loss_fn, {})
    assert not torch.allclose(model.layers[0].weight.grad, ref[0])


# --- the eligibility engine -------------------------------------------------------------------------------
def _closed_form_trace(x, alpha, beta, t):
    """ev_j[t] = sum_{k<t} h[t-1-k] x_j[k], h[d] = (alpha^(d+1) - beta^(d+1)) / (alpha - beta)."""
    out = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64)
    for k in range(t):
        d = t - 1 - k
        h = (alpha ** (d + 1) - beta ** (d + 1)) / (alpha - beta)
        out += h * x[:, k].double()
    return out


def test_presynaptic_traces_match_their_closed_form():
    x, _ = _data(n=4, steps=12)
    model = _net("rec")
    layers = list(model.layers)
    seen = []
    run_online(layers, x, lambda t, outs: [None] * 3, inspect=lambda t, st: seen.append(
        (st[0].ff.ev.clone(), st[0].rec.ev.clone(), st[0].eb.clone(), st[0].s.clone())))
    alpha, beta = 1 - float(layers[0].du), 1 - float(layers[0].dv)
    spikes = torch.stack([s for *_, s in seen], 1)
    for t in (0, 1, 5, 11):
        ev_ff, ev_rec, eb, _ = seen[t]
        torch.testing.assert_close(ev_ff.double(), _closed_form_trace(x, alpha, beta, t), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ev_rec.double(), _closed_form_trace(spikes, alpha, beta, t), rtol=1e-5, atol=1e-6)
        # the bias enters v directly: sum_{m<=t} beta^m
        torch.testing.assert_close(eb.double(), torch.full_like(eb, (1 - beta ** (t + 1)) / (1 - beta)).double())


def test_per_synapse_traces_are_the_derivatives_of_the_membrane_with_spikes_held():
    """reset_in_trace=True: ev_ij[t] = d v_pre_i[t] / dW_ij (and / dV_ij) with the spikes (reset and
    recurrent input) held fixed: forward-mode against reverse-mode autograd on an unrolled loop."""
    x, _ = _data(n=2, steps=10)
    model = _net("rec")
    layer = model.layers[0]
    seen = []
    run_online([layer], x, lambda t, outs: [None], reset_in_trace=True,
               inspect=lambda t, st: seen.append((st[0].ff.ev.clone(), st[0].rec.ev.clone())))
    w = layer.weight.detach().double().requires_grad_(True)
    v_rec = layer.effective_rec_weight().detach().double().requires_grad_(True)
    alpha, beta, th = 1 - float(layer.du), 1 - float(layer.dv), layer.v_th
    bias = layer.bias.detach().double()
    xd = x.double()
    u = torch.zeros(2, layer.out_features, dtype=torch.float64)
    v, s = torch.zeros_like(u), torch.zeros_like(u)
    for t in range(x.shape[1]):
        a = (xd[:, t - 1] @ w.t() if t > 0 else torch.zeros_like(u)) + s @ v_rec.t()
        u = alpha * u + a
        v_pre = beta * v + u + bias
        s = (v_pre > th).double().detach()
        v = v_pre * (1 - s)
        for b in range(2):
            for i in (0, 5):
                gw, gv = torch.autograd.grad(v_pre[b, i], (w, v_rec), retain_graph=True, allow_unused=True)
                gw = torch.zeros_like(w) if gw is None else gw
                gv = torch.zeros_like(v_rec) if gv is None else gv
                torch.testing.assert_close(seen[t][0][b, i].double(), gw[i], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(seen[t][1][b, i].double(), gv[i], rtol=1e-5, atol=1e-6)


# --- a reference loop with the state detached every step ----------------------------------------------------
def _detached_reference(model, x):
    """Per layer, outputs whose only gradient path is psi[t] * (trace[t] . W): the spikes' dependence on W
    through their own step, with every state and every input detached (DECOLLE's P-trace model), written
    with autograd and explicit presynaptic traces instead of the engine's bookkeeping."""
    outs, h = [], x
    for layer in model.layers:
        alpha, beta, th = 1 - float(layer.du), 1 - float(layer.dv), layer.v_th
        rec = isinstance(layer, RecurrentLIFDense)
        n, batch = layer.out_features, x.shape[0]
        u, v, s = (torch.zeros(batch, n) for _ in range(3))
        p_in = [torch.zeros(batch, layer.in_features) for _ in range(2)]
        p_rec = [torch.zeros(batch, n) for _ in range(2)]
        p_b = torch.zeros(batch, n)
        seq = []
        for t in range(x.shape[1]):
            x_prev = h[:, t - 1] if t > 0 else torch.zeros_like(h[:, 0])
            p_in[0] = alpha * p_in[0] + x_prev
            p_in[1] = beta * p_in[1] + p_in[0]
            p_rec[0] = alpha * p_rec[0] + s
            p_rec[1] = beta * p_rec[1] + p_rec[0]
            p_b = beta * p_b + 1
            with torch.no_grad():
                a = x_prev @ layer.weight.t()
                if rec:
                    a = a + s @ layer.effective_rec_weight().t()
                u = alpha * u + a
                v_pre = beta * v + u + (layer.bias if layer.bias is not None else 0)
            lin = p_in[1] @ layer.weight.t()
            if rec:
                lin = lin + p_rec[1] @ layer.effective_rec_weight().t()
            if layer.bias is not None:
                lin = lin + p_b * layer.bias
            if isinstance(layer, LeakyReadout):
                out = v_pre + (lin - lin.detach())
                v = v_pre
            else:
                psi = layer.surrogate.derivative(v_pre - th)
                s = (v_pre > th).float()
                out = s + psi * (lin - lin.detach())
                v = v_pre * (1 - s)
            seq.append(out)
        h_seq = torch.stack(seq, 1)
        outs.append(h_seq)
        h = h_seq.detach()
    return outs


def test_decolle_updates_equal_a_reference_loop_with_state_detached_every_step():
    x, y = _data(n=6)
    model = _net("rec")
    rule = make_rule("decolle", seed=5)
    got, res = _rule_grads(rule, model, x, y)
    model.zero_grad(set_to_none=True)
    outs = _detached_reference(model, x)
    loss = count_cross_entropy(outs[-1], y)
    for i in range(2):  # each hidden layer: its own loss on its fixed random read-out
        loss = loss + count_cross_entropy(outs[i] @ rule.matrices[i].t(), y)
    loss.backward()
    _close(got, _grads(model), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.output, outs[-1].detach())


@pytest.mark.parametrize("feedback", ["random", "symmetric"])
def test_eprop_updates_are_traces_times_the_broadcast_learning_signal(feedback):
    x, y = _data(n=6)
    model = _net("rec", readout=True)
    loss_fn = lambda o, y: membrane_cross_entropy(o, y, over_time="mean")  # noqa: E731
    rule = make_rule("eprop", feedback=feedback, seed=2)
    got, _ = _rule_grads(rule, model, x, y, loss_fn)
    model.zero_grad(set_to_none=True)
    outs = _detached_reference(model, x)
    out = outs[-1].detach().requires_grad_(True)
    (err,) = torch.autograd.grad(loss_fn(out, y), out)  # dL/dy[t]
    l1, l2, l3 = model.layers
    if feedback == "symmetric":
        fb = [(l3.weight @ l2.weight).detach(), l3.weight.detach()]
    else:
        fb = rule.matrices[:2]
    total = (err * outs[-1]).sum()
    for i, d in ((0, 2), (1, 1)):  # the error reaches layer i d hops later
        signal = torch.nn.functional.pad(err[:, d:] @ fb[i], (0, 0, 0, d))
        total = total + (signal * outs[i]).sum()
    total.backward()
    _close(got, _grads(model), rtol=1e-4, atol=1e-6)
    # the read-out's trace is exact (no threshold, no reset): its gradient is BPTT's
    ref = _bptt_grads(model, x, y, loss_fn)
    torch.testing.assert_close(got[-1], ref[-1], rtol=1e-4, atol=1e-6)


def test_eprop_spiking_output_trace_with_its_reset_is_bptts_output_gradient():
    """Braille's collapse: with the reset dropped from the trace, a spiking output layer's e-prop update
    over-counts inputs from before its own spikes (on Braille 1.7x BPTT's largest entry) and drove the
    outputs silent. ``reset_in_trace="output"`` keeps the reset for the output layer only: its update
    is then exactly BPTT's output-layer gradient (the hidden layers keep the cheap presynaptic trace)."""
    x, y = _data(n=8, steps=16)
    model = _net("rec")
    loss_fn = lambda o, y: count_cross_entropy(o, y)  # noqa: E731
    with torch.no_grad():
        assert float(model(x).sum()) > 0  # the output spikes, so the reset matters
    ref = _bptt_grads(model, x, y, loss_fn)
    exact, _ = _rule_grads(make_rule("eprop", reset_in_trace="output"), model, x, y, loss_fn)
    torch.testing.assert_close(exact[-1], ref[-1], rtol=1e-4, atol=1e-6)
    dropped, _ = _rule_grads(make_rule("eprop"), model, x, y, loss_fn)
    assert not torch.allclose(dropped[-1], ref[-1], rtol=1e-2, atol=1e-4)
    # the hidden layers' updates do not depend on the output layer's trace
    for a, b in zip(exact[:-1], dropped[:-1]):
        assert (a is None and b is None) or torch.allclose(a, b)


@pytest.mark.parametrize("name", ["eprop", "decolle"])
def test_online_rate_regulariser_is_the_gradient_of_the_rate_cost(name):
    """One LIF layer (exact trace): the update of the regulariser alone (zero task loss) equals BPTT's gradient
    of (rate_cost * T / 2) * sum_j (f_j - f_target)^2, f_j the mean spikes per step over batch and time."""
    x, y = _data(n=8, steps=16)
    torch.manual_seed(0)
    model = SpikingSequential([LIFDense(10, 5, du=0.3, dv=0.2, weight_gain=3.0, bias=True)])
    target, cost, steps = 0.3, 2.0, x.shape[1]
    rule = make_rule(name, reset_in_trace=True, rate_target=target, rate_cost=cost)
    got, _ = _rule_grads(rule, model, x, y, lambda o, y: 0.0 * o.sum())
    ref = _bptt_grads(model, x, y, lambda o, y: cost * steps / 2 * (o.mean((0, 1)) - target).square().sum())
    _close(got, ref, rtol=1e-4, atol=1e-6)


def test_dfa_rate_regulariser_is_the_gradient_of_each_layers_rate_cost():
    """DFA cuts the layers apart, so with a zero task loss its update is, per layer, BPTT's gradient of that
    layer's (rate_cost * T / 2) sum_j (f_j - f_target)^2 with the layer's input detached."""
    x, y = _data(n=8, steps=16)
    model = _net("rec")
    target, cost, steps = 0.2, 1.5, x.shape[1]
    got, _ = _rule_grads(make_rule("dfa", rate_target=target, rate_cost=cost), model, x, y, lambda o, y: 0.0 * o.sum())
    model.zero_grad(set_to_none=True)
    h, total = x, 0.0
    for layer in model.layers:
        h = layer(h.detach())
        total = total + cost * steps / 2 * (h.mean((0, 1)) - target).square().sum()
    total.backward()
    _close(got, _grads(model), rtol=1e-4, atol=1e-6)


def test_superspike_update_is_the_van_rossum_gradient_through_the_eligibility():
    """The online filtered traces lam = kappa * (psi ev) reorder the van Rossum gradient so that it is
    available at every step: one LIF layer, against autograd of van_rossum_distance on the reference."""
    x, _ = _data(n=4, steps=24)
    torch.manual_seed(2)
    model = SpikingSequential([LIFDense(10, 5, du=0.3, dv=0.2, weight_gain=3.0, bias=True)])
    target = (torch.rand(4, 24, 5) < 0.1).float()
    rule = make_rule("superspike", tau=6.0)
    got, res = _rule_grads(rule, model, x, target)
    model.zero_grad(set_to_none=True)
    (out,) = _detached_reference(model, x)
    loss = van_rossum_distance(out, target, tau=6.0)
    loss.backward()
    _close(got, _grads(model), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.loss, loss.detach(), rtol=1e-5, atol=1e-6)


def test_superspike_rate_regulariser_is_the_gradient_of_the_rate_cost():
    """With the target raster equal to the layer's own spikes the van Rossum error is zero, so the update is the
    regulariser's alone; with kappa -> 0 (tau tiny) the filtered trace is the eligibility itself, and the
    update must equal BPTT's gradient of (rate_cost * T / 2) sum_j (f_j - f_target)^2 (exact trace)."""
    x, _ = _data(n=8, steps=16)
    torch.manual_seed(0)
    model = SpikingSequential([LIFDense(10, 5, du=0.3, dv=0.2, weight_gain=3.0, bias=True)])
    with torch.no_grad():
        own = model(x)
    target, cost, steps = 0.3, 2.0, x.shape[1]
    rule = make_rule("superspike", tau=1e-3, reset_in_trace=True, rate_target=target, rate_cost=cost)
    got, res = _rule_grads(rule, model, x, own)
    assert float(res.loss) == 0.0
    ref = _bptt_grads(model, x, own, lambda o, y: cost * steps / 2 * (o.mean((0, 1)) - target).square().sum())
    _close(got, ref, rtol=1e-4, atol=1e-6)
    off, _ = _rule_grads(make_rule("superspike", tau=1e-3, reset_in_trace=True), model, x, own)
    assert all(float(g.abs().max()) == 0.0 for g in off)
    with pytest.raises(LearningRuleError, match="rate_target"):
        make_rule("superspike", rate_target=1.5)


def test_superspike_hidden_feedback_kinds():
    x, y = _data(n=6)
    model = _net()
    seen = {}
    for fb in ("symmetric", "random", "uniform"):
        got, _ = _rule_grads(make_rule("superspike", feedback=fb), model, x, y)
        seen[fb] = got[0]
        assert got[-1] is not None and float(got[-1].abs().sum()) > 0
    assert not torch.allclose(seen["symmetric"], seen["random"])
    assert not torch.allclose(seen["random"], seen["uniform"])
    r = label_raster(torch.tensor([1, 0]), 10, 3, 4, 2)
    assert r[0, :, 1].nonzero().flatten().tolist() == [2, 6] and r[0, :, [0, 2]].sum() == 0


# --- state, resume, errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule,options", [("dfa", {}), ("superspike", {"rmsprop": True}), ("eprop", {})])
def test_resume_is_exact_with_the_rule_state(tmp_path, rule, options):
    x, y = _data(n=32)
    base = dict(batch_size=16, lr=1e-2, progress=False, tensorboard=False, rule=rule, rule_options=options,
                optimizer="sgd" if options.get("rmsprop") else "adam")
    straight = _net("rec")
    Trainer(straight, TrainerConfig(epochs=2, **base)).fit((x, y))
    resumed = _net("rec")
    Trainer(resumed, TrainerConfig(epochs=1, checkpoint_dir=str(tmp_path), **base)).fit((x, y))
    t2 = Trainer(_net("rec", seed=9), TrainerConfig(epochs=2, checkpoint_dir=str(tmp_path), **base))
    t2.fit((x, y), resume=True)
    for a, b in zip(straight.parameters(), t2.model.parameters()):
        assert torch.equal(a, b)
    state = t2.rule.state_dict()
    assert any(isinstance(m, torch.Tensor) for m in state.get("feedback", state.get("matrices", [])))
    if options.get("rmsprop"):
        assert state["rms"]


def test_clear_errors():
    x, y = _data(n=4)
    conv = SpikingSequential([ConvLIF((1, 2, 5), 2, 3, padding=1), LIFDense(20, 3)])
    with pytest.raises(LearningRuleError, match="layer 0 \\(ConvLIF\\) is not supported"):
        make_rule("eprop").setup(conv)
    trainable = SpikingSequential([LIFDense(10, 3, train_decays=True)])
    with pytest.raises(LearningRuleError, match="layer 0 \\(LIFDense\\) has a trainable 'du'"):
        make_rule("decolle").setup(trainable)
    with pytest.raises(LearningRuleError, match="feedback must be one of"):
        make_rule("superspike", feedback="mirror")
    with pytest.raises(LearningRuleError, match="target raster shape"):
        r = make_rule("superspike")
        m = _net()
        r.setup(m)
        r.compute_gradients(m, x, torch.zeros(4, 3, 3), None, {})
    rule = make_rule("dfa")
    rule.setup(_net())
    with pytest.raises(LearningRuleError, match="feedback matrices 0 has shape"):
        rule.load_state_dict({"feedback": [torch.zeros(2, 2), None, None]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("rule", ["fa", "dfa", "decolle", "eprop", "superspike"])
def test_cuda_matches_cpu(rule):
    x, y = _data(n=8)
    cpu, _ = _rule_grads(make_rule(rule), _net("rec"), x, y)
    gpu, _ = _rule_grads(make_rule(rule), _net("rec").cuda(), x.cuda(), y.cuda())
    _close([None if g is None else g.cpu() for g in gpu], cpu, rtol=1e-3, atol=1e-5)


# --- each rule learns -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["fa", "dfa", "decolle", "eprop", "superspike"])
def test_rule_learns_a_small_classification_task(rule):
    x, y = _data(n=64, steps=12)
    xv, yv = _data(n=64, steps=12, seed=1)
    torch.manual_seed(0)
    kw = dict(du=0.3, dv=0.2, weight_gain=3.0)
    hidden = RecurrentLIFDense(10, 24, rec_gain=0.5, **kw) if rule == "eprop" else LIFDense(10, 24, **kw)
    model = SpikingSequential([hidden, LIFDense(24, 3, du=0.3, dv=0.2, weight_gain=0.5)])
    cfg = TrainerConfig(epochs=5, batch_size=16, lr=2e-2, progress=False, tensorboard=False, rule=rule)
    trainer = Trainer(model, cfg)
    before = trainer.evaluate((xv, yv))
    hist = trainer.fit((x, y), (xv, yv))
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert hist[-1]["val_accuracy"] >= 0.9 and hist[-1]["val_accuracy"] > before["accuracy"] + 0.2  # chance: 1/3


def test_superspike_learns_a_target_spike_raster():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 30, 10, generator=g) < 0.2).float()
    target = torch.zeros(4, 30, 3)
    target[:, 8:30:8, :] = 1.0  # every output spikes at steps 8, 16, 24
    torch.manual_seed(0)
    model = SpikingSequential([LIFDense(10, 16, du=0.3, dv=0.2, weight_gain=2.0),
                               LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=0.5)])
    cfg = TrainerConfig(epochs=40, batch_size=4, lr=2e-2, progress=False, tensorboard=False, rule="superspike",
                        rule_options={"tau": 5.0})
    hist = Trainer(model, cfg, predict_fn=False).fit((x, target))
    with torch.no_grad():
        final = float(van_rossum_distance(model(x), target, tau=5.0))
    assert final < 0.5 * hist[0]["loss"]


def _bench_online_rules():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_online_rules.py"
    spec = importlib.util.spec_from_file_location("bench_online_rules", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_alignment_probe_compares_each_rule_with_bptt_on_the_rules_own_loss():
    """The benchmark's gap measurement: BPTT against itself is cosine 1; FA's output layer is BPTT's and its
    hidden layer is not; SuperSpike's reference loss is exactly the D^2 the rule descends."""
    bench = _bench_online_rules()
    x, y = _data(n=16, steps=12)
    model = SpikingSequential([LIFDense(10, 16, du=0.3, dv=0.2, weight_gain=3.0),
                               LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=1.0)])
    loss = lambda o, t: count_cross_entropy(o, t, scale=0.5)  # noqa: E731
    same = bench.alignment_probe(model, "bptt", {}, loss, x, y)
    assert same["cosine_vs_bptt"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert same["norm_vs_bptt"] == pytest.approx([1.0, 1.0], abs=1e-5)
    fa = bench.alignment_probe(model, "fa", {"seed": 3}, loss, x, y)
    assert fa["cosine_vs_bptt"][1] == pytest.approx(1.0, abs=1e-5) and fa["cosine_vs_bptt"][0] < 0.99
    assert 0.0 <= fa["silent_fraction"][0] <= 1.0
    opts = {"target_interval": 2, "target_offset": 1, "tau": 4.0}
    vr = bench.reference_loss("superspike", {"loss": loss}, opts)
    _, res = _rule_grads(make_rule("superspike", **opts), model, x, y)
    with torch.no_grad():
        torch.testing.assert_close(res.loss, vr(model(x), y), rtol=1e-5, atol=1e-6)
    assert make_rule("superspike").target_interval == 1  # the default chosen on digits' validation split
