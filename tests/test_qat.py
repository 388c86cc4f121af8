"""Quantization-aware training: the forward pass equals the deployed network bit for bit."""
import numpy as np
import torch

from snn2hw.backends import sim
from snn2hw.compiler import compile_graph
from snn2hw.nn.layers import SpikingSequential
from snn2hw.quantize import QuantConfig


def _model(seed=0, bias=True):
    torch.manual_seed(seed)
    m = SpikingSequential.build([12, 20, 7], du=0.3, dv=0.15, v_th=1.0, weight_gain=4.0, bias=bias)
    if bias:
        for layer in m.layers:
            torch.nn.init.uniform_(layer.bias, -0.05, 0.1)
    return m


def test_qat_forward_equals_simulator_spikes_and_state():
    m = _model().set_qat(QuantConfig())
    for layer in m.layers:
        layer.record_int_state = True
    x = (torch.rand(5, 40, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    outs = m(x, return_all=True)
    res = sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64), record=["lif1"], record_state=["lif1", "lif2"])
    total = 0
    for i, layer in enumerate(m.layers, start=1):
        np.testing.assert_array_equal(outs[i - 1].detach().numpy().astype(np.uint8), res.spikes[f"lif{i}"])
        u, v = layer.last_int_state
        np.testing.assert_array_equal(u.numpy(), res.u[f"lif{i}"])
        np.testing.assert_array_equal(v.numpy(), res.v[f"lif{i}"])
        total += int(res.spikes[f"lif{i}"].sum())
    assert total > 20


def test_qat_gradients_reach_every_parameter_and_training_keeps_equality():
    m = _model(1).set_qat(QuantConfig())
    x = (torch.rand(8, 30, 12, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    y = torch.arange(8) % 7
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(x).sum(dim=1) * 0.5, y)
        opt.zero_grad()
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    out = m(x).detach().numpy().astype(np.uint8)
    np.testing.assert_array_equal(out, sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64)).spikes["lif2"])


def test_qat_off_restores_float_forward():
    m = _model(2, bias=False)
    x = (torch.rand(2, 20, 12, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    ref = m(x)
    m.set_qat(QuantConfig()).set_qat(None)
    assert torch.equal(m(x), ref)


def test_trainable_threshold_learns_and_stays_deployable():
    torch.manual_seed(4)
    m = SpikingSequential.build([12, 20, 7], du=0.3, dv=0.15, v_th=1.0, weight_gain=4.0, train_threshold=True)
    x = (torch.rand(6, 30, 12, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    y = torch.arange(6) % 7
    opt = torch.optim.Adam(m.parameters(), lr=5e-2)
    for qat in (None, QuantConfig()):
        m.set_qat(qat)
        before = [layer.v_th for layer in m.layers]
        loss = torch.nn.functional.cross_entropy(m(x).sum(dim=1) * 0.5, y)
        opt.zero_grad()
        loss.backward()
        assert all(layer.threshold.grad is not None and layer.threshold.grad.abs() > 0 for layer in m.layers)
        opt.step()
        assert [layer.v_th for layer in m.layers] != before
    assert [p.neuron.v_th for p in m.to_ir().populations] == [layer.v_th for layer in m.layers]
    out = m(x).detach().numpy().astype(np.uint8)
    np.testing.assert_array_equal(out, sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64)).spikes["lif2"])
