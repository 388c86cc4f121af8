"""HM2-BP and ST-RSBP: S-PSPs against per-synapse re-simulation, the recurrent solve against explicit
inversion, whole weight updates against per-sample references of the equations, and learning."""
from __future__ import annotations

import pytest
import torch

from snn2hw.learning import LearningRuleError, available_rules, make_rule
from snn2hw.learning.spiketrain import PostStats
from snn2hw.learning.spsp import (NeuronSpec, dense_spsp, evenly_spaced_spikes, lif_sequence, mc_spsp_per_pre_spike,
                                  reset_mask, spsp_adjoint, spsp_per_pre_spike)
from snn2hw.learning.strsbp import make_fit, spsp_fit
from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential, hop_delay
from snn2hw.train.trainer import Trainer, TrainerConfig

D = torch.float64


def _spec(alpha=0.8, beta=0.9, v_th=1.0, t_ref=0):
    return NeuronSpec(torch.tensor(alpha, dtype=D), torch.tensor(beta, dtype=D), torch.tensor(v_th, dtype=D), None,
                      t_ref)


def _slow_spsp(s_in, s_out, alpha, beta, t_ref):
    """Per synapse: a synaptic trace p and membrane trace q driven by the pre train alone (one-step hop),
    q restarts at every reset of the post neuron; e adds q at each post spike."""
    batch, steps, n_in = s_in.shape
    n_out = s_out.shape[2]
    cut = reset_mask(s_out, t_ref)
    e = torch.zeros(batch, n_out, n_in, dtype=D)
    for b in range(batch):
        for i in range(n_out):
            for j in range(n_in):
                p = q = 0.0
                for t in range(steps):
                    p = alpha * p + (float(s_in[b, t - 1, j]) if t >= 1 else 0.0)
                    q = beta * q + p
                    if s_out[b, t, i]:
                        e[b, i, j] += q
                    if cut[b, t, i]:
                        q = 0.0
    return e


@pytest.mark.parametrize("t_ref", [0, 2])
def test_spsp_equals_per_synapse_resimulation_and_tpsp(t_ref):
    g = torch.Generator().manual_seed(t_ref)
    s_in = (torch.rand(3, 40, 5, generator=g) < 0.3).to(D)
    w = torch.randn(4, 5, generator=g, dtype=D)
    spec = _spec(t_ref=t_ref)
    a = hop_delay(s_in @ w.t())
    s_out = lif_sequence(a, spec)
    assert s_out.sum() > 10
    lam_u, _ = spsp_adjoint(s_out, spec.alpha, spec.beta, t_ref)
    e = dense_spsp(lam_u, s_in)
    torch.testing.assert_close(e, _slow_spsp(s_in, s_out, 0.8, 0.9, t_ref), rtol=1e-12, atol=1e-12)
    # T-PSP: sum_j w_ij e_ij is exactly the sum of the membrane values at the post spikes
    v_at_spikes = torch.zeros(3, 4, dtype=D)
    u = v = torch.zeros(3, 4, dtype=D)
    cut = reset_mask(s_out, t_ref)
    for t in range(40):
        u = 0.8 * u + a[:, t]
        v = 0.9 * v + u
        v_at_spikes += v * s_out[:, t]
        v = v * (1 - cut[:, t])
    torch.testing.assert_close((w * e).sum(2), v_at_spikes, rtol=1e-12, atol=1e-12)
    if t_ref:  # no spike within t_ref steps of another
        s = s_out.transpose(1, 2).reshape(-1, 40)
        for k in range(1, t_ref + 1):
            assert not (s[:, k:] * s[:, :-k]).any()


def _dense_net(rec=False, seed=0, n_in=6, hidden=5, n_out=3, lateral=False):
    torch.manual_seed(seed)
    first = (RecurrentLIFDense(n_in, hidden, du=0.3, dv=0.2, rec_gain=0.3) if rec else
             LIFDense(n_in, hidden, du=0.3, dv=0.2))
    out = RecurrentLIFDense(hidden, n_out, du=0.3, dv=0.2) if lateral else LIFDense(hidden, n_out, du=0.3, dv=0.2)
    net = SpikingSequential([first, out]).double()
    if lateral:  # HM2-BP's lateral inhibition among the outputs (w0 (1 - I), scaled down to keep them firing)
        with torch.no_grad():
            out.rec_weight.copy_(-0.2 * (1 - torch.eye(n_out, dtype=D)))
    with torch.no_grad():  # every neuron fires, so the reference needs no silent-neuron rules
        for layer in net.layers:  # exact float64 decays (the float32 0.3 is not 0.3)
            layer.du.fill_(0.3)
            layer.dv.fill_(0.2)
        net.layers[0].weight.uniform_(0.3, 1.2)
        net.layers[1].weight.uniform_(-0.2, 0.9)
    return net


def _inputs(seed=0, batch=3, steps=40, n_in=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, n_in, generator=g) < 0.35).to(D), torch.tensor([0, 2, 1])


def test_rule_forward_is_the_layers_forward():
    x, _ = _inputs()
    for net in (_dense_net(False), _dense_net(True)):
        recs, out = make_rule("strsbp").forward(net, x)
        ref = net(x, return_all=True)
        for r, s in zip(recs, ref):
            assert torch.equal(r.s_out, s)
    torch.manual_seed(0)
    conv = SpikingSequential([ConvLIF((1, 6, 6), 2, 3, du=0.3, dv=0.2, weight_gain=3.0), Flatten(),
                              LIFDense(32, 3, du=0.3, dv=0.2, weight_gain=3.0)]).double()
    xc = (torch.rand(2, 30, 36, generator=torch.Generator().manual_seed(1)) < 0.4).to(D)
    assert torch.equal(make_rule("hm2bp").forward(conv, xc)[1], conv(xc))


def _per_sample_reference(net, x, y, rule_name, opts, steps=None, pre_derivative="spikes"):
    """The rules' equations per sample, per synapse, with S-PSPs from the slow re-simulation and the
    recurrent system inverted explicitly. ``steps = (t0, t1)``: the same equations on that sub-window of the
    recorded trains alone, with the output error of the whole sample's counts (ST-RSBP's ``windows``).
    ``pre_derivative="uniform"`` (HM2-BP): ``d e_ij / d o_j`` is the S-PSP of one pre spike at a uniformly random
    step, re-simulated for a spike at each step in turn and averaged, in place of ``e_ij / o_j``."""
    l1, l2 = net.layers
    alpha, beta = 0.7, 0.8
    rec = isinstance(l1, RecurrentLIFDense)
    s1 = net.layers[0](x)
    s2 = net.layers[1](s1)
    c_out_whole = s2.sum(1)
    if steps is not None:
        x, s1, s2 = (t[:, steps[0]:steps[1]] for t in (x, s1, s2))
    gw1, gw2 = torch.zeros_like(l1.weight), torch.zeros_like(l2.weight)
    gv = torch.zeros_like(l1.rec_weight) if rec else None
    fit = spsp_fit(alpha, beta, x.shape[1], 0)
    top = fit["top"]
    dh = lambda o: sum(c * (len(fit["coeffs"]) - 1 - k) * (o / top) ** (len(fit["coeffs"]) - 2 - k)  # noqa: E731
                       for k, c in enumerate(fit["coeffs"][:-1])) / top
    for b in range(x.shape[0]):
        xin, h, o = x[b:b + 1], s1[b:b + 1], s2[b:b + 1]
        e2 = _slow_spsp(h, o, alpha, beta, 0)[0]  # (n_out, hidden)
        e1 = _slow_spsp(xin, h, alpha, beta, 0)[0]  # (hidden, n_in)
        c_out, c_hid, c_in = o[0].sum(0), h[0].sum(0), xin[0].sum(0)
        assert (c_out > 0).all() and (c_hid > 0).all() and (c_in > 0).all()
        target = torch.full_like(c_out, opts["target_false"])
        target[y[b]] = opts["target_true"]
        err = c_out_whole[b] - target
        err = err * (err.abs() > opts["margin"])
        w2, w1 = l2.weight.detach(), l1.weight.detach()
        if rule_name == "hm2bp":
            delta2 = err / 1.0
            tpsp = (w2 * e2).sum(1)
            lateral = 1.0
            if isinstance(l2, RecurrentLIFDense):
                v2 = l2.effective_rec_weight().detach()
                e_lat = _slow_spsp(o, o, alpha, beta, 0)[0]
                tpsp = tpsp + (v2 * e_lat).sum(1)
                k = v2 * e_lat / c_out[None, :]
                lateral = 1 / (1 - (k * k.t()).sum(1)).clamp(min=0.1)
            s_self = tpsp / c_out
            gw2 += (delta2 * (1 + s_self.clamp(0, 1)) * lateral)[:, None] * e2
            if pre_derivative == "uniform":
                one = torch.eye(x.shape[1], dtype=D).unsqueeze(0)  # pre neuron t fires once, at step t
                r = _slow_spsp(one, o, alpha, beta, 0)[0].mean(1)  # (n_out,): one spike at a random step
                de_dh = (delta2[:, None] * w2 * r[:, None]).sum(0)
            else:
                de_dh = (delta2[:, None] * w2 * e2 / c_hid[None, :]).sum(0)
            delta1 = de_dh / 1.0
            s_self1 = (w1 * e1).sum(1) / c_hid
            gw1 += (delta1 * (1 + s_self1.clamp(0, 1)))[:, None] * e1
        else:
            piv2 = 1 - dh(c_out) * (w2 @ c_hid)
            z2 = err / piv2
            gw2 += z2[:, None] * e2
            r = w2 * e2 / c_hid[None, :]
            de_dh = z2 @ r  # = (err / nu)^T M^-1 R with M diagonal
            if rec:
                v = l1.effective_rec_weight().detach()
                e_rec = _slow_spsp(h, h, alpha, beta, 0)[0]
                m = torch.diag(1 - dh(c_hid) * (w1 @ c_in + v @ c_hid)) - v * e_rec / c_hid[None, :]
                x_mat = torch.linalg.inv(m) @ (w1 * e1 / c_in[None, :])  # X = nu d o_rec / d o_in
                z1 = torch.linalg.inv(m).t() @ de_dh
                gw1 += z1[:, None] * e1
                gv += z1[:, None] * e_rec * l1.rec_weight_scale
                ref_in = de_dh @ x_mat
                assert torch.allclose(z1 @ (w1 * e1 / c_in[None, :]), ref_in, rtol=1e-10, atol=1e-12)
            else:
                piv1 = 1 - dh(c_hid) * (w1 @ c_in)
                gw1 += (de_dh / piv1)[:, None] * e1
    n = x.shape[0]
    return gw1 / n, gw2 / n, None if gv is None else gv / n


@pytest.mark.parametrize("rule_name,rec,lateral", [("hm2bp", False, False), ("hm2bp", False, True),
                                                   ("strsbp", False, False), ("strsbp", True, False)])
def test_weight_update_equals_per_sample_reference(rule_name, rec, lateral):
    net = _dense_net(rec, lateral=lateral)
    x, y = _inputs()
    opts = {"target_true": 12.0, "target_false": 4.0, "margin": 0.0}
    extra = {"min_pivot": 1e-6} if rule_name == "strsbp" else {}
    rule = make_rule(rule_name, **opts, **extra)
    rule.compute_gradients(net, x, y, None, {}, 1.0)
    with torch.no_grad():
        gw1, gw2, gv = _per_sample_reference(net, x, y, rule_name, opts)
    torch.testing.assert_close(net.layers[1].weight.grad, gw2, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(net.layers[0].weight.grad, gw1, rtol=1e-9, atol=1e-10)
    if rec:
        torch.testing.assert_close(net.layers[0].rec_weight.grad, gv, rtol=1e-9, atol=1e-10)
    if lateral:  # HM2-BP keeps the lateral weights fixed
        assert net.layers[1].rec_weight.grad is None


@pytest.mark.parametrize("full_trace", [False, True])
def test_hm2bp_uniform_pre_derivative_equals_per_sample_reference(full_trace):
    """``pre_derivative="uniform"``: the hidden layer's error is ``sum_i delta_i w_ij r_i`` with ``r_i`` the S-PSP a
    single pre spike at a uniformly random step adds at post neuron i's spikes (the papers' silent-input value, for
    every input); the output layer's update is unchanged and the hidden one differs from the papers' rule. Sparse
    firing (3-17 spikes in 40 steps), where the two differ: at the reference net's near-saturated rates they agree
    to 0.1 %."""
    net = _dense_net(False)
    with torch.no_grad():
        net.layers[0].weight.mul_(0.06)
        net.layers[1].weight.mul_(0.3)
    x, y = _inputs()
    opts = {"target_true": 12.0, "target_false": 4.0, "margin": 0.0}
    rule = make_rule("hm2bp", **opts, pre_derivative="uniform")
    rule.full_trace = full_trace
    rule.compute_gradients(net, x, y, None, {}, 1.0)
    with torch.no_grad():
        gw1, gw2, _ = _per_sample_reference(net, x, y, "hm2bp", opts, pre_derivative="uniform")
        gw1_spikes = _per_sample_reference(net, x, y, "hm2bp", opts)[0]
    torch.testing.assert_close(net.layers[1].weight.grad, gw2, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(net.layers[0].weight.grad, gw1, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(gw1, gw1_spikes, rtol=2e-2)
    assert make_rule("hm2bp", pre_derivative="uniform").describe()["pre_derivative"] == "uniform"
    with pytest.raises(LearningRuleError, match="pre_derivative"):
        make_rule("hm2bp", pre_derivative="random")


def test_strsbp_windows_equal_the_rule_on_each_window():
    """``windows=K`` (snn2hw extension) is the paper's rule run on each sub-window of the recorded trains, with
    the whole sample's output error, summed over the windows."""
    net = _dense_net(True)
    x, y = _inputs(steps=60)
    opts = {"target_true": 30.0, "target_false": 10.0, "margin": 0.0}
    rule = make_rule("strsbp", **opts, min_pivot=1e-6, windows=3)
    rule.compute_gradients(net, x, y, None, {}, 1.0)
    with torch.no_grad():
        parts = [_per_sample_reference(net, x, y, "strsbp", opts, steps=w) for w in ((0, 20), (20, 40), (40, 60))]
        whole = _per_sample_reference(net, x, y, "strsbp", opts)
    for k, param in enumerate((net.layers[0].weight, net.layers[1].weight, net.layers[0].rec_weight)):
        ref = sum(p[k] for p in parts)
        torch.testing.assert_close(param.grad, ref, rtol=1e-9, atol=1e-10)
        assert not torch.allclose(ref, whole[k], rtol=1e-3)  # the windows change the update
    with pytest.raises(LearningRuleError, match="windows"):
        make_rule("strsbp", windows=0)
    with pytest.raises(LearningRuleError, match="at least 122 steps"):
        make_rule("strsbp", windows=61).compute_gradients(net, x, y, None, {}, 1.0)


def test_strsbp_window_shifts_average_the_shifted_tilings():
    """``window_shifts=m`` (snn2hw extension) is the mean over m tilings of ``windows``, each shifted by 1/m of a
    window, of the paper's rule run on each window of the tiling (the per-sample reference on each)."""
    from snn2hw.learning.strsbp import window_tilings

    assert window_tilings(60, 3, 2) == [[0, 20, 40, 60], [0, 10, 30, 50, 60]]
    assert window_tilings(60, 2, 3) == [[0, 30, 60], [0, 10, 40, 60], [0, 20, 50, 60]]
    net = _dense_net(True)
    x, y = _inputs(steps=60)
    opts = {"target_true": 30.0, "target_false": 10.0, "margin": 0.0}
    rule = make_rule("strsbp", **opts, min_pivot=1e-6, windows=2, window_shifts=2)
    rule.compute_gradients(net, x, y, None, {}, 1.0)
    with torch.no_grad():
        tilings = [[_per_sample_reference(net, x, y, "strsbp", opts, steps=w) for w in windows]
                   for windows in (((0, 30), (30, 60)), ((0, 15), (15, 45), (45, 60)))]
    for k, param in enumerate((net.layers[0].weight, net.layers[1].weight, net.layers[0].rec_weight)):
        per_tiling = [sum(p[k] for p in parts) for parts in tilings]
        torch.testing.assert_close(param.grad, (per_tiling[0] + per_tiling[1]) / 2, rtol=1e-9, atol=1e-10)
        assert not torch.allclose(per_tiling[0], per_tiling[1], rtol=1e-3)  # the shift changes the update
    with pytest.raises(LearningRuleError, match="nothing to shift"):
        make_rule("strsbp", window_shifts=2)
    with pytest.raises(LearningRuleError, match="window_shifts must be"):
        make_rule("strsbp", windows=2, window_shifts=0)
    with pytest.raises(LearningRuleError, match="at least 64 steps"):
        make_rule("strsbp", windows=4, window_shifts=8).compute_gradients(net, x, y, None, {}, 1.0)


def test_recurrent_solve_equals_explicit_inverse():
    net = _dense_net(True, seed=3, hidden=8)
    x, y = _inputs(seed=3)
    rule = make_rule("strsbp")
    recs, _ = rule.forward(net, x)
    tr = recs[0]
    s_out = tr.s_out.to(D)  # the rule keeps trains as bool
    lam_u, _ = spsp_adjoint(s_out, tr.spec.alpha, tr.spec.beta, 0)
    counts = s_out.sum(1)
    stats = PostStats(counts, tr.s_in.sum(1), counts, spsp_per_pre_spike(lam_u), dense_spsp(lam_u, s_out), None)
    g = torch.randn(counts.shape, dtype=D, generator=torch.Generator().manual_seed(0))
    c_w, c_back = rule.coefficients(tr, g, stats)
    m = rule.system(tr, stats)
    e_ff = dense_spsp(lam_u, tr.s_in)
    r = tr.layer.weight.detach() * rule.per_spike_ratio(e_ff, tr.s_in.sum(1), stats.random_spike)
    x_mat = torch.linalg.inv(m) @ r  # (B, N, N_in)
    torch.testing.assert_close((c_back.unsqueeze(1) @ r).squeeze(1), (g.unsqueeze(1) @ x_mat).squeeze(1),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(c_w, (torch.linalg.inv(m).transpose(1, 2) @ g.unsqueeze(2)).squeeze(2),
                               rtol=1e-9, atol=1e-12)


def test_conv_gradient_equals_equivalent_dense_layer():
    torch.manual_seed(0)
    conv = ConvLIF((1, 5, 5), 2, 3, du=0.3, dv=0.2, weight_gain=3.0).double()
    kernel = conv.weight.detach().clone().requires_grad_(True)
    eye = torch.eye(25, dtype=D).reshape(25, 1, 5, 5)
    dense_w = torch.nn.functional.conv2d(eye, kernel).reshape(25, -1).t()  # (18, 25): the conv as a matrix
    dense = LIFDense(25, 18, du=0.3, dv=0.2).double()
    with torch.no_grad():
        dense.weight.copy_(dense_w)
    out_c, out_d = LIFDense(18, 3, du=0.3, dv=0.2).double(), LIFDense(18, 3, du=0.3, dv=0.2).double()
    with torch.no_grad():
        out_d.weight.copy_(out_c.weight.uniform_(0.0, 1.0))
    x = (torch.rand(4, 30, 25, generator=torch.Generator().manual_seed(2)) < 0.5).to(D)
    y = torch.tensor([0, 1, 2, 0])
    rule = make_rule("hm2bp", target_true=10, target_false=2, margin=0)
    rule.compute_gradients(SpikingSequential([conv, out_c]), x, y, None, {})
    rule.compute_gradients(SpikingSequential([dense, out_d]), x, y, None, {})
    torch.testing.assert_close(out_c.weight.grad, out_d.weight.grad)
    (expected,) = torch.autograd.grad(dense_w, kernel, dense.weight.grad)
    torch.testing.assert_close(conv.weight.grad, expected)


def test_silent_target_neuron_is_pushed_up():
    net = _dense_net()
    with torch.no_grad():
        net.layers[1].weight[1].fill_(-1.0)  # output 1 never fires
    x, _ = _inputs()
    y = torch.tensor([1, 1, 1])
    make_rule("hm2bp", margin=0).compute_gradients(net, x, y, None, {})
    assert (net.layers[1].weight.grad[1] < 0).all()  # gradient descent raises its weights


@pytest.mark.parametrize("rule_name,rec", [("hm2bp", False), ("strsbp", True)])
def test_task_loss_error_is_the_count_cross_entropy_gradient(rule_name, rec):
    """``loss="task"``: the output error is the trainer loss's gradient per output count (here the zoo's count
    cross-entropy, ``scale (softmax(scale o) - onehot)`` per sample), and everything below it is the rule's."""
    from snn2hw.train.losses import count_cross_entropy

    x, y = _inputs()
    scale = 0.1
    net = _dense_net(rec)
    rule = make_rule(rule_name, loss="task")
    res = rule.compute_gradients(net, x, y, lambda out, yy: count_cross_entropy(out, yy, scale=scale), {})
    got = [p.grad.clone() for p in net.parameters()]
    counts = res.output.sum(1)
    assert float(res.loss) == pytest.approx(float(count_cross_entropy(res.output, y, scale=scale)))
    expected_err = scale * (torch.softmax(scale * counts, 1) - torch.nn.functional.one_hot(y, 3).to(D))
    ref = make_rule(rule_name, margin=0)  # the same rule with the error swapped for the analytic one
    ref.count_error = lambda c, yy: (expected_err, 0.5 * expected_err.square().sum(1))
    net_ref = _dense_net(rec)
    ref.compute_gradients(net_ref, x, y, None, {})
    for a, b in zip(got, [p.grad for p in net_ref.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().sum()) > 0 for g in got)
    with pytest.raises(LearningRuleError, match="unknown loss"):
        make_rule(rule_name, loss="nope")
    with pytest.raises(LearningRuleError, match="needs the trainer's loss_fn"):
        make_rule(rule_name, loss="task").compute_gradients(_dense_net(rec), x, y, None, {})


def test_count_bounds_drop_errors_past_the_count_range():
    rule = make_rule("hm2bp", count_bounds=True)
    s = torch.zeros(2, 10, 3)
    s[0, 2:, 0] = 1  # fires at every step from the layer's first reachable step (2): cannot fire more
    s[1, 5, 1] = 1  # one spike: free both ways
    g = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])  # gradient descent raises counts where g < 0
    assert rule.bound_error(g, s).tolist() == [[0.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]
    s2 = torch.zeros(1, 10, 2)
    s2[0, [2, 5, 8], 0] = 1  # every third step from step 2: the most a neuron with t_ref = 2 can fire
    s2[0, [2, 3], 1] = 1
    up = -torch.ones(1, 2)
    assert make_rule("strsbp", t_ref=2, count_bounds=True).bound_error(up, s2).tolist() == [[0.0, -1.0]]
    assert make_rule("strsbp", count_bounds=True).bound_error(up, s2).tolist() == [[-1.0, -1.0]]
    # the forward's counts give the same result as counting the train (bool or float)
    for train in (s, s.bool()):
        assert rule.bound_error(g, train, train.sum(1, dtype=torch.float64)).tolist() == rule.bound_error(g, s).tolist()
    # in a network, under the count cross-entropy (every output gets an error): a silent output's weights
    # are pushed further down without the bounds and left alone with them
    from snn2hw.train.losses import count_cross_entropy

    x, y = _inputs()
    grads = []
    for bounds in (False, True):
        net = _dense_net()
        with torch.no_grad():
            net.layers[1].weight[2].fill_(-1.0)  # output 2 never fires; no label is 2 below
        make_rule("hm2bp", loss="task", count_bounds=bounds).compute_gradients(
            net, x, torch.tensor([0, 1, 0]), count_cross_entropy, {})
        grads.append(net.layers[1].weight.grad)
    assert float(grads[0][2].abs().sum()) > 0 and float(grads[1][2].abs().sum()) == 0


def test_fit_file_and_monte_carlo():
    fit = spsp_fit(0.8, 0.9, 100, 2)
    assert fit == make_fit(0.8, 0.9, 100, 2)  # the fit is deterministic; stored or made, the same
    h = torch.tensor(fit["h"])
    assert h[0] == 0 and (h[1:] > 0).all()
    # mean S-PSP per pre spike for one post spike at a random step: the closed form average
    one = float(mc_spsp_per_pre_spike(0.5, 0.5, 4, 0, [4], samples=8)[0])
    lam_u, _ = spsp_adjoint(torch.ones(1, 4, 1, dtype=D), torch.tensor(0.5, dtype=D), torch.tensor(0.5, dtype=D))
    assert one == pytest.approx(float(lam_u[0, 1:, 0].sum() / 4))
    spikes = evenly_spaced_spikes(10, torch.tensor([[0.0, 3.0, 10.0]]))
    assert spikes.sum(1).tolist() == [[0, 3, 10]] and spikes[0, -1, 1] == 1


def test_registry_and_errors():
    assert {"hm2bp", "strsbp"} <= set(available_rules())
    with pytest.raises(LearningRuleError, match="bad options"):
        make_rule("hm2bp", nope=1)
    with pytest.raises(LearningRuleError, match="t_ref"):
        make_rule("strsbp", t_ref=-1)
    with pytest.raises(LearningRuleError, match="recurrent"):
        make_rule("hm2bp").setup(SpikingSequential([RecurrentLIFDense(4, 4), LIFDense(4, 2)]))


def _task(n=192, steps=40, n_in=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    rates = torch.full((n, n_in), 0.05)
    for c in range(classes):
        rates[y == c, c * 4:(c + 1) * 4] = 0.4
    return (torch.rand(n, steps, n_in, generator=g) < rates[:, None, :]).float(), y


@pytest.mark.parametrize("rule_name,rec,opts", [
    ("hm2bp", False, {}),
    ("hm2bp", False, {"t_ref": 2}),
    ("strsbp", True, {}),
    ("strsbp", True, {"loss": "task"}),
])
def test_rule_learns(rule_name, rec, opts):
    torch.set_num_threads(1)
    x, y = _task()
    xv, yv = _task(seed=1)
    torch.manual_seed(0)
    hidden = (RecurrentLIFDense(16, 24, du=0.3, dv=0.2, weight_gain=3.0, rec_gain=0.2) if rec else
              LIFDense(16, 24, du=0.3, dv=0.2, weight_gain=3.0))
    net = SpikingSequential([hidden, LIFDense(24, 4, du=0.3, dv=0.2, weight_gain=1.0)])
    cfg = TrainerConfig(epochs=6, batch_size=32, lr=1e-2, progress=False, tensorboard=False, rule=rule_name,
                        rule_options={"target_true": 12, "target_false": 2, "margin": 2, **opts})
    trainer = Trainer(net, cfg)
    hist = trainer.fit((x, y), (xv, yv))
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    acc = float((trainer.rule.predict(net, xv) == yv).float().mean())
    assert acc > 0.85, (acc, hist)  # chance: 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_cuda_gradients_equal_cpu(rule_name):
    x, y = _inputs()
    grads = []
    for device in ("cpu", "cuda"):
        net = _dense_net(rule_name == "strsbp").to(device)
        make_rule(rule_name, margin=0).compute_gradients(net, x.to(device), y.to(device), None, {})
        grads.append([p.grad.cpu() for p in net.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("rule_name,rec,lateral,t_ref", [("hm2bp", False, True, 0), ("hm2bp", False, False, 2),
                                                         ("strsbp", True, False, 0)])
@pytest.mark.parametrize("chunk_bytes", [0, 250, 2000])
def test_chunked_equals_full_trace(monkeypatch, rule_name, rec, lateral, t_ref, chunk_bytes):
    """Bool spike trains and the one-pass grouped backward, the default for dense layers, against the
    full-window float path: the same gradients, to rounding. ``CHUNK_BYTES`` 0: groups of one sample and
    blocks of exactly ``chunk`` steps; 250: backward groups of 2 of the 3 samples, in blocks; 2000: forward
    groups of 2 whole windows (one GEMM over their rows), one backward group in two equal blocks."""
    from snn2hw.learning import spiketrain

    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    x, y = _inputs(steps=45)
    grads = []
    for full in (True, False):
        net = _dense_net(rec, lateral=lateral)
        with torch.no_grad():
            net.layers[1].weight[1].fill_(-1.0)  # a silent output: virtual spikes on both paths
        rule = make_rule(rule_name, margin=0, target_true=10, target_false=3, t_ref=t_ref, chunk=7)
        rule.full_trace = full
        records, out = rule.forward(net, x)
        grads.append([out.double()] + [r.s_out.double() for r in records])
        rule.compute_gradients(net, x, y, None, {})
        grads[-1] += [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _conv_net(bias: bool, conv_out: bool, dtype=D, strided: bool = False):
    """2x8x8 input -> conv 3c3 -> sum-pool 2 -> conv 4c2 -> dense 3 (or a conv 3c2 output); ``strided``: conv 3c3
    with stride 2 in place of the conv and the pool (the same 3x3x3 maps reach the second conv)."""
    torch.manual_seed(0)
    first = ([ConvLIF((2, 8, 8), 3, 3, stride=2, du=0.3, dv=0.2, weight_gain=3.0, bias=bias)] if strided else
             [ConvLIF((2, 8, 8), 3, 3, du=0.3, dv=0.2, weight_gain=3.0, bias=bias),
              SumPoolLIF((3, 6, 6), 2, du=0.3, dv=0.2, bias=bias)])
    layers = first + [ConvLIF((3, 3, 3), 4, 2, du=0.3, dv=0.2, weight_gain=3.0, bias=bias)]
    layers += ([ConvLIF((4, 2, 2), 3, 2, du=0.3, dv=0.2, weight_gain=3.0)] if conv_out
               else [Flatten(), LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=3.0)])
    net = SpikingSequential(layers).to(dtype)
    if bias:
        with torch.no_grad():
            for layer in net.layers:
                if getattr(layer, "bias", None) is not None:
                    layer.bias.uniform_(-0.05, 0.1)
    return net


@pytest.mark.parametrize("rule_name,bias,conv_out,t_ref,chunk_bytes", [
    ("hm2bp", True, False, 0, 0), ("hm2bp", True, False, 0, 3000), ("hm2bp", False, True, 2, 0),
    ("hm2bp", True, True, 0, 4 << 20), ("strsbp", True, False, 0, 0), ("strsbp", False, True, 0, 4 << 20)])
def test_chunked_conv_and_pool_equal_full_trace(monkeypatch, rule_name, bias, conv_out, t_ref, chunk_bytes):
    """Conv and pool layers on the chunked path (bool trains, per-block ``convolution_backward`` products from
    the reverse scan, the T-PSP of virtual spikes recorded by the forward for hidden layers and remade for a
    conv output) against the full-window float path: the same spikes and gradients, to rounding. Many conv
    and pool neurons are silent, so virtual spikes are exercised. ``CHUNK_BYTES`` 0: one sample in blocks of
    ``chunk`` = 7 steps; 3000: one sample, larger blocks; 4 MiB: all samples' whole windows at once."""
    from snn2hw.learning import spiketrain

    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    x = (torch.rand(3, 45, 128, generator=torch.Generator().manual_seed(1)) < 0.3).to(D)
    y = torch.tensor([0, 1, 2])
    results = []
    for full in (True, False):
        net = _conv_net(bias, conv_out)
        rule = make_rule(rule_name, margin=0, target_true=10, target_false=3, t_ref=t_ref, chunk=7)
        rule.full_trace = full
        records, out = rule.forward(net, x)
        hidden = [r for r in records if r is not None]
        assert all(bool((r.s_out.sum(1) == 0).any()) for r in hidden[:-1])  # silent hidden neurons
        if not full and rule.needs_tpsp:
            assert all(r.tpsp_virtual is not None for r in hidden[:3]) and hidden[-1].tpsp_virtual is None
        results.append([out.double()] + [r.s_out.double() for r in hidden])
        rule.compute_gradients(net, x, y, None, {})
        results[-1] += [p.grad for p in net.parameters() if p.grad is not None]
    assert len(results[0]) == len(results[1]) == 5 + (6 if bias else 3)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_conv_spikes_are_the_layers_forward_float32(monkeypatch):
    """float32: the chunked conv and pool path (currents per block of (sample, step) images) spikes exactly as
    the layers' own forward over the whole window, at every block size."""
    from snn2hw.learning import spiketrain

    net = _conv_net(True, False, torch.float32)
    x = (torch.rand(4, 60, 128, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    ref = net(x, return_all=True)
    for chunk_bytes in (0, 5000, 4 << 20):
        monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
        records, _ = make_rule("hm2bp", chunk=7).forward(net, x)
        pairs = [(r.s_out, s) for r, s in zip(records, ref) if r is not None]  # Flatten has no record
        assert len(pairs) == 4 and all(torch.equal(mine, theirs.bool()) for mine, theirs in pairs)


def test_dropout_after_chunked_layers_in_training():
    """Spike dropout scales survivors: the chunked path hands it the bool trains as float (it used to fail on
    bool) and the next layer takes the scaled float train."""
    from snn2hw.nn.conv import Dropout

    torch.manual_seed(0)
    net = SpikingSequential([ConvLIF((2, 8, 8), 3, 3, weight_gain=3.0), Dropout(0.2), SumPoolLIF((3, 6, 6), 2),
                             Flatten(), LIFDense(27, 3, weight_gain=3.0)]).train()
    x = (torch.rand(3, 30, 128) < 0.3).float()
    make_rule("hm2bp").compute_gradients(net, x, torch.tensor([0, 1, 2]), None, {})
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) == 2 and all(bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)


def _deep_dense_net(seed=0):
    """12 -> 9 -> 7 -> 3 with silent neurons in both hidden layers (virtual spikes) and a silent output."""
    torch.manual_seed(seed)
    layers = [LIFDense(12, 9, du=0.3, dv=0.2, weight_gain=3.0), LIFDense(9, 7, du=0.3, dv=0.2, weight_gain=3.0),
              LIFDense(7, 3, du=0.3, dv=0.2, weight_gain=3.0)]
    net = SpikingSequential(layers).double()
    with torch.no_grad():
        for layer in layers:
            layer.weight.uniform_(0.2, 1.0)
        layers[0].weight[:2].fill_(-1.0)  # silent hidden neurons
        layers[1].weight[:2].fill_(-1.0)
        layers[2].weight[1].fill_(-1.0)  # a silent output
    return net


@pytest.mark.parametrize("density,forced,compiled,chunk_bytes", [
    (0.3, False, True, 4 << 20), (0.3, False, True, 0), (0.02, False, True, 4 << 20), (0.3, True, True, 0),
    (0.3, True, True, 4 << 20), (0.02, True, True, 0), (0.3, True, False, 250)])
def test_dense_coefficients_first_equals_full_trace(monkeypatch, density, forced, compiled, chunk_bytes):
    """Dense layers on ``hop.hop_backward_chunked`` (coefficients first, then one weight-gradient product over
    (sample, step) rows: whole windows shifted by a row, one sample in blocks, or a reshaped block; GEMMs
    for any density) and the hidden layers' virtual T-PSP recorded by the forward, against the full-window
    float path. By default only the first layer takes that path (``chunked.coefficients_first``); ``forced`` sends
    every layer there (input errors through the dense hop, the output's virtual T-PSP remade), and
    ``compiled`` False runs the reverse scan's tensor loop (the CUDA path) in blocks of several samples."""
    from snn2hw.learning import spiketrain

    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    if forced:
        monkeypatch.setattr(spiketrain.chunked, "coefficients_first",
                            lambda tr, g, targets, need_input, needs_tpsp: tr.rec_weight is None)
    if not compiled:
        monkeypatch.setattr(spiketrain.plan, "compiled_scan", lambda *a: False)
    x = (torch.rand(4, 40, 12, generator=torch.Generator().manual_seed(3)) < density).to(D)
    y = torch.tensor([0, 1, 2, 1])
    taken = []
    real = spiketrain.hop.hop_backward_chunked
    monkeypatch.setattr(spiketrain.hop, "hop_backward_chunked", lambda tr, *a: taken.append(tr.layer) or real(tr, *a))
    results = []
    for full in (True, False):
        net = _deep_dense_net()
        rule = make_rule("hm2bp", margin=0, target_true=10, target_false=3, chunk=7)
        rule.full_trace = full
        records, out = rule.forward(net, x)
        hidden = [r for r in records if r is not None]
        assert all(bool((r.s_out.sum(1) == 0).any()) for r in hidden)  # silent neurons in every layer
        if not full:
            assert [r.tpsp_virtual is not None for r in hidden] == [True, True, False]
        rule.compute_gradients(net, x, y, None, {})
        results.append([out.double()] + [p.grad for p in net.parameters()])
    assert taken == (list(net.layers)[::-1] if forced else [net.layers[0]])  # the backward runs top down
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 300, 120)])
def test_coefficient_sum_both_forms(shape):
    """``sum_b c[b, i] e[b, i, j]``: the batched product (small e) and the per-sample pass (large e)."""
    from snn2hw.learning.spiketrain.sums import add_coefficient_sum

    g = torch.Generator().manual_seed(5)
    c, e = torch.randn(shape[:2], generator=g, dtype=D), torch.randn(shape, generator=g, dtype=D)
    out = torch.ones(shape[1:], dtype=D)
    add_coefficient_sum(out, c, e)
    torch.testing.assert_close(out, 1 + torch.einsum("bi,bij->ij", c, e), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule_name,bias,chunk_bytes,strided", [
    ("hm2bp", False, 0, False), ("hm2bp", True, 4 << 20, False), ("strsbp", False, 4 << 20, False),
    ("hm2bp", True, 4 << 20, True), ("hm2bp", False, 0, True), ("hm2bp-uniform", True, 4 << 20, False),
    ("hm2bp-uniform", False, 0, False)])
def test_conv_pool_stack_equals_equivalent_dense_stack(monkeypatch, rule_name, bias, chunk_bytes, strided):
    """conv -> sum pool -> conv -> dense against the same network with every conv and pool hop written as a dense
    matrix (the dense path is checked against the per-sample reference of the equations above): the errors
    through the sum pool and the convs (per position: S-PSPs, per-spike ratios, virtual spikes of silent conv
    and pool neurons, HM2-BP's (1 + S) self term per conv neuron) and so every gradient agree; a conv kernel's
    gradient is the sum over the positions that share it (the chain rule through the matrix). ``strided``: a
    stride-2 conv in place of the first conv and the pool (the model spec's ``[channels, kernel, stride]``)."""
    from snn2hw.learning import spiketrain

    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    extra = {}
    if rule_name == "hm2bp-uniform":  # HM2-BP's pre_derivative="uniform" through the conv and pool hops
        rule_name, extra = "hm2bp", {"pre_derivative": "uniform"}
    net = _conv_net(bias, False, strided=strided)
    dense_layers, kernels = [], []
    for layer in net.layers:
        if isinstance(layer, (ConvLIF, SumPoolLIF)):
            dense, kernel, matrix = layer.dense_equivalent(D)
            dense_layers.append(dense)
            kernels.append((layer, kernel, matrix))
        elif isinstance(layer, LIFDense):
            dense = LIFDense(layer.in_features, layer.out_features, du=0.3, dv=0.2).double()
            with torch.no_grad():
                dense.load_state_dict(layer.state_dict())
            dense_layers.append(dense)
    ref = SpikingSequential(dense_layers)
    x = (torch.rand(3, 45, 128, generator=torch.Generator().manual_seed(1)) < 0.3).to(D)
    y = torch.tensor([0, 1, 2])
    opts = {"margin": 0, "target_true": 10, "target_false": 3, "chunk": 7, **extra}
    records, _ = make_rule(rule_name, **opts).forward(net, x)
    hidden = [r for r in records if r is not None]
    assert all(bool((r.s_out.sum(1) == 0).any()) for r in hidden[:-1])  # silent conv/pool neurons: virtual spikes
    assert all(bool((r.s_out.sum(1) > 0).any()) for r in hidden)
    make_rule(rule_name, **opts).compute_gradients(net, x, y, None, {})
    make_rule(rule_name, **opts).compute_gradients(ref, x, y, None, {})
    torch.testing.assert_close(net.layers[-1].weight.grad, ref.layers[-1].weight.grad, rtol=1e-9, atol=1e-12)
    for (layer, kernel, matrix), dense in zip(kernels, ref.layers):
        if isinstance(layer, ConvLIF):
            (expected,) = torch.autograd.grad(matrix, kernel, dense.weight.grad)
            assert float(expected.abs().sum()) > 0
            torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-9, atol=1e-12)
        if bias:  # a per-channel bias: the sum over the channel's positions
            per_channel = dense.bias.grad.reshape(layer.bias.numel(), -1).sum(1)
            torch.testing.assert_close(layer.bias.grad.reshape(-1), per_channel, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("first", [None, 0, 3, 7, 8, 37, 199])
def test_first_fired_step_reads_blocks_from_the_start(first):
    """``errors.first_fired_step`` (blocks of steps, doubling) against the step found by reading the whole train."""
    from snn2hw.learning.spiketrain.errors import first_fired_step

    g = torch.Generator().manual_seed(0 if first is None else first)
    s = torch.rand(3, 200, 2, 4, generator=g) < 0.05
    s[:, :first if first is not None else 200] = False
    if first is not None:
        s[1, first, 1, 2] = True
    fired = s.flatten(2).any(2).any(0)
    want = int(fired.nonzero()[0]) if bool(fired.any()) else 0
    assert first_fired_step(s) == first_fired_step(s.to(D)) == want == (first or 0)
