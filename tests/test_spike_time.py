"""Spike-time gradients: exact derivatives of first-spike times (finite differences), agreement of the TTFS
relaxation with the discrete (deployed) network, the Yin-Yang generator, and the rule learning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.learning.spike_time import (first_spike_cross_entropy, first_spike_steps, layer_first_spike_times,
                                        network_first_spike_times, predict_first_spike, single_spike)
from snn2hw.models import yinyang as Y
from snn2hw.nn.layers import RecurrentLIFDense, SpikingSequential
from snn2hw.train.trainer import Trainer, TrainerConfig


def _model(hidden=16, seed=0, dtype=torch.float64, du=0.1, dv=0.05):
    torch.manual_seed(seed)
    m = SpikingSequential.build([5, hidden, 3], du=du, dv=dv, v_th=1.0)
    with torch.no_grad():
        m.layers[0].weight.normal_(0.06, 0.1)
        m.layers[1].weight.normal_(0.03, 0.05)
    return m.to(dtype)


def _finite(t):
    return torch.nan_to_num(t, posinf=0.0)


@pytest.mark.parametrize("beta", [0.95, 0.9, 0.9 + 1e-9, 1.0])  # equal and nearly equal decays, no membrane leak
def test_layer_spike_times_match_finite_differences_in_weights_and_input_times(beta):
    g = torch.Generator().manual_seed(0)
    t_in = (torch.rand(4, 6, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    w = (torch.rand(5, 6, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    args = dict(alpha=0.9, beta=beta, v_th=1.0, window=64.0)
    t, _ = layer_first_spike_times(t_in, w, **args)
    assert torch.isfinite(t).sum() >= 10
    _finite(t).sum().backward()
    eps = 1e-6
    for tensor, idx in ((w, (1, 2)), (w, (3, 0)), (t_in, (2, 4)), (t_in, (0, 1))):
        with torch.no_grad():
            tensor[idx] += eps
            up = _finite(layer_first_spike_times(t_in, w, **args)[0]).sum()
            tensor[idx] -= 2 * eps
            down = _finite(layer_first_spike_times(t_in, w, **args)[0]).sum()
            tensor[idx] += eps
        assert float((up - down) / (2 * eps)) == pytest.approx(float(tensor.grad[idx]), rel=1e-5, abs=1e-8)


def test_network_spike_times_match_finite_differences_through_hidden_times():
    m = _model()
    x, _ = Y.load("val", size=8)
    x = x.double()
    out = lambda: _finite(network_first_spike_times(m, x, snap=False)[-1][0]).sum()  # noqa: E731
    out().backward()
    w = m.layers[0].weight  # hidden weights reach the loss only through hidden spike times
    checked = 0
    for idx in [(i, j) for i in range(16) for j in range(5)]:
        if w.grad[idx] == 0:
            continue
        eps = 1e-6
        with torch.no_grad():
            w[idx] += eps
            up = out()
            w[idx] -= 2 * eps
            down = out()
            w[idx] += eps
        assert float((up - down) / (2 * eps)) == pytest.approx(float(w.grad[idx]), rel=1e-4, abs=1e-7)
        checked += 1
        if checked == 6:
            break
    assert checked == 6


def test_psp_kernel_is_the_discrete_neurons_response():
    """kappa(n) at integer n is the membrane of the discrete CUBA-LIF after one unit input spike, also for
    du == dv (the limit form) and for decays a rounding apart (where the plain difference of powers cancels)."""
    from snn2hw.learning.spike_time import _kappa, _kappa_dt

    n = torch.arange(0, 60, dtype=torch.float64)
    for du, dv in ((0.1, 0.05), (0.1, 0.1), (0.25, 0.25), (0.1, 0.1 + 1e-12), (0.2, 0.0)):
        alpha, beta = 1.0 - du, 1.0 - dv
        u = v = 0.0
        ref = []
        for t in range(60):  # the spike left at step 0 arrives at step 1 (one-step hop)
            u = alpha * u + (1.0 if t == 1 else 0.0)
            v = beta * v + u
            ref.append(v)
        got = _kappa(n, alpha, beta)
        # the membrane at step t is kappa(t) (the one-step hop delays the spike by one step)
        assert torch.allclose(got[1:], torch.tensor(ref[1:], dtype=torch.float64), rtol=1e-9, atol=1e-12), (du, dv)
        h = 1e-5
        slope = (_kappa(n + h, alpha, beta) - _kappa(n - h, alpha, beta)) / (2 * h)
        assert torch.allclose(_kappa_dt(n[1:], alpha, beta), slope[1:], rtol=1e-6, atol=1e-9), (du, dv)


@pytest.mark.parametrize("du,dv", [(0.1, 0.05), (0.1, 0.1)])
def test_relaxation_spikes_are_the_single_spike_networks_spikes(du, dv):
    m = single_spike(_model(hidden=24, dtype=torch.float32, du=du, dv=dv))
    assert isinstance(m.layers[0], RecurrentLIFDense)
    x, _ = Y.load("val", size=64)
    times = network_first_spike_times(m, x)
    with torch.no_grad():
        spikes = m(x, return_all=True)
    assert spikes[0].sum(dim=1).max() <= 1  # hidden neurons fire at most once
    for (t, _), s in zip(times, spikes):
        steps, relax = first_spike_steps(s), torch.ceil(t)
        fired = torch.isfinite(steps) | torch.isfinite(relax)
        assert fired.sum() > 50
        assert (steps[fired] == relax[fired]).float().mean() >= 0.99


def test_yinyang_generator():
    pts, labels = Y.make(300, seed=3)
    assert np.bincount(labels).tolist() == [100, 100, 100]
    assert np.all(np.hypot(pts[:, 0] - 0.5, pts[:, 1] - 0.5) <= 0.5)
    assert Y.which_class(np.array([0.25]), np.array([0.5]))[0] == 2  # centre of the left dot
    assert Y.which_class(np.array([0.5]), np.array([0.9]))[0] == 0  # top: yin
    assert Y.which_class(np.array([0.5]), np.array([0.1]))[0] == 1  # bottom: yang
    x = Y.encode(pts[:4])
    assert x.shape == (4, 64, 5) and torch.equal(x.sum(dim=1), torch.ones(4, 5))
    with pytest.raises(ValueError, match="split"):
        Y.load("dev")


def test_rule_checks_and_decoding():
    with pytest.raises(LearningRuleError, match="tau0"):
        make_rule("spike-time", tau0=0.0)
    rec = SpikingSequential([RecurrentLIFDense(5, 4), RecurrentLIFDense(4, 3)])
    with pytest.raises(LearningRuleError, match="RecurrentLIFDense"):
        make_rule("spike-time").setup(rec)
    spikes = torch.zeros(2, 5, 3)
    spikes[0, 2, 1] = spikes[0, 3, 0] = 1
    spikes[1, 1, 0] = spikes[1, 1, 2] = spikes[1, 2, 2] = 1  # tie at step 1 -> more spikes wins
    assert predict_first_spike(spikes).tolist() == [1, 2]
    m = _model(hidden=8, dtype=torch.float32)
    x, y = Y.load("val", size=16)
    res = make_rule("spike-time", early=0.5).compute_gradients(m, x, y, first_spike_cross_entropy, {})
    assert res.output.shape == (16, 3) and m.layers[0].weight.grad.abs().sum() > 0
    assert float(first_spike_cross_entropy(spikes, torch.tensor([1, 2]))) < float(
        first_spike_cross_entropy(spikes, torch.tensor([0, 0])))


def test_rule_learns_yinyang_subset():
    x, y = Y.load("train", size=240)
    xv, yv = Y.load("val", size=300)
    m = single_spike(_model(hidden=20, dtype=torch.float32))
    cfg = TrainerConfig(epochs=6, batch_size=32, lr=1e-2, progress=False, tensorboard=False, rule="spike-time")
    tr = Trainer(m, cfg, loss_fn=first_spike_cross_entropy, predict_fn=predict_first_spike)
    tr.fit((x, y), val=(xv, yv))
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    assert tr.history[-1]["val_accuracy"] >= 0.6  # chance is 1/3; the deployed network's own spikes
