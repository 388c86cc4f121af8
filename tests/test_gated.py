"""Huh & Sejnowski's gated-synapse QIF network: exact gradients (finite differences), the constant-memory
adjoint, the delayed-XOR task and rule, and the CUBA-LIF deployment mapping."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.models import delayed_xor as X
from snn2hw.nn.gated import GatedQIF, gate_staircase, revolve_sweeps
from snn2hw.nn.layers import SpikingSequential
from snn2hw.train.trainer import Trainer, TrainerConfig


def _net(mode="discrete", checkpoints=16, seed=0):
    torch.manual_seed(seed)
    return GatedQIF(3, 10, 2, i0=0.05, input_gain=2.0, rec_gain=2.0, mode=mode, checkpoints=checkpoints).double()


def _inputs(steps=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, steps, 3, generator=g) < 0.2).double()


def _loss(o):
    return (o ** 2).sum() + o[..., 0].sum()


def test_gate_injects_unit_charge_per_crossing_and_graded_otherwise():
    theta = torch.linspace(-2.0, 3 * math.pi + 1.0, 2000, dtype=torch.float64)
    g = gate_staircase(theta, 1.0)
    assert float(g[-1] - g[0]) == pytest.approx(2.0, abs=1e-12)  # two crossings of pi (mod 2 pi)
    assert float(gate_staircase(torch.tensor(math.pi, dtype=torch.float64), 1.0)) == pytest.approx(0.5)  # graded
    theta.requires_grad_(True)
    gate_staircase(theta, 1.0).sum().backward()
    assert (theta.grad >= 0).all() and theta.grad.max() > 0  # the gate g = G' is non-negative


@pytest.mark.parametrize("mode", ["discrete", "adjoint"])
def test_gradients_match_finite_differences(mode):
    net, x = _net(mode, checkpoints=3), _inputs()
    net.zero_grad()
    _loss(net(x)).backward()
    assert net.spikes(x).sum() > 0  # the network spikes, so gradients flow through the active zone
    gen = torch.Generator().manual_seed(2)
    for name, p in net.named_parameters():
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        eps = 1e-6
        with torch.no_grad():
            p += eps * d
            up = float(_loss(net(x)))
            p -= 2 * eps * d
            down = float(_loss(net(x)))
            p += eps * d
        fd, exact = (up - down) / (2 * eps), float((p.grad * d).sum())
        assert fd == pytest.approx(exact, rel=1e-5, abs=1e-7), name


def test_adjoint_equals_discrete_with_bounded_snapshots():
    x = _inputs(steps=70).requires_grad_(True)
    grads = {}
    for mode in ("discrete", "adjoint"):
        net = _net(mode, checkpoints=2)
        x.grad = None
        _loss(net(x)).backward()
        grads[mode] = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
        if mode == "adjoint":
            stats = net.last_adjoint_stats
            assert stats.peak_snapshots <= 2
            # binomial checkpointing: at most r extra sweeps, C(2 + r, r) >= 70 -> r = 10
            assert stats.recomputed_steps <= revolve_sweeps(70, 2) * 70
    for a, b in zip(grads["discrete"], grads["adjoint"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_revolve_sweeps():
    assert revolve_sweeps(1, 4) == 0
    assert revolve_sweeps(153, 16) == 2 and revolve_sweeps(154, 16) == 3
    assert math.comb(16 + 4, 4) >= 4845 > math.comb(16 + 3, 3)


def test_delayed_xor_task():
    x, y = X.make(64, seed=0)
    assert x.shape == (64, X.steps_needed(), 3) and y.shape == (64, x.shape[1])
    assert set(torch.unique(y).tolist()) <= {-1.0, 0.0, 1.0}
    ups = x[:, :, 0].sum(1) / 10
    # XOR target: +1 when exactly one of the two pulses is "up"
    assert torch.equal(torch.where(ups == 1, 1.0, -1.0), torch.where(y.sum(1) > 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="pulse shorter"):
        X.make(4, pulse=30, delay=(25, 40))


def test_rule_options_and_model_checks():
    rule = make_rule("gated", mode="adjoint", checkpoints=4)
    assert rule.describe() == {"name": "gated", "mode": "adjoint", "checkpoints": 4}
    with pytest.raises(LearningRuleError, match="mode"):
        make_rule("gated", mode="exact")
    with pytest.raises(LearningRuleError, match="GatedQIF"):
        rule.setup(SpikingSequential.build([3, 4, 2]))


def test_rule_learns_short_delayed_xor():
    kw = dict(pulse=5, onset=(2, 5), delay=(8, 12), response=6, go=3)
    xtr, ytr = X.make(96, seed=1, **kw)
    xte, yte = X.make(96, seed=2, **kw)
    torch.manual_seed(0)
    net = GatedQIF(3, 16, 1, tau_v=5.0, tau_s=5.0, i0=-0.05, input_gain=2.0, out_gain=5.0)
    with torch.no_grad():
        before = float(X.masked_mse(net(xte), yte))
    cfg = TrainerConfig(epochs=5, batch_size=32, lr=3e-2, grad_clip=1.0, progress=False, tensorboard=False,
                        rule="gated")
    Trainer(net, cfg, loss_fn=X.masked_mse, predict_fn=False).fit((xtr, ytr))
    with torch.no_grad():
        o = net(xte)
    assert float(X.masked_mse(o, yte)) < 0.8 * before
    assert X.accuracy(o, yte) >= 0.75  # chance is 0.5


def test_lif_mapping_compiles_and_matches_its_float_network():
    from snn2hw.nn.gated_deploy import deployed_readout, fit_lif_rate, lif_rate, qif_rate

    dv, gain, err = fit_lif_rate(10.0)
    current = np.linspace(0.05, 1.0, 20)
    assert err < 0.1 * qif_rate(np.array([1.0]), 10.0)[0]
    assert np.all(lif_rate(gain * -current + dv, dv) == 0)  # below rheobase: silent, like the QIF
    torch.manual_seed(0)
    net = GatedQIF(3, 12, 1, input_gain=3.0).to_lif_network()
    x, _ = X.make(6, seed=3)
    with torch.no_grad():
        hidden_float, o_float = (t.numpy() for t in net(x, return_all=True))
    o_sim = deployed_readout(net, x)
    assert o_sim.shape == o_float.shape
    from snn2hw.backends import get_backend
    from snn2hw.compiler import compile_graph

    hidden_sim = get_backend("sim")(compile_graph(net.to_ir()), x.numpy().astype(np.int64), record=["lif1"]).spikes["lif1"]
    assert hidden_float.sum() > 20
    # quantization moves a few spikes by a step; spikes and read-out traces must still mostly agree
    assert abs(hidden_sim.sum() - hidden_float.sum()) <= 0.2 * hidden_float.sum()
    assert np.corrcoef(o_sim.ravel(), o_float.ravel())[0, 1] > 0.5
