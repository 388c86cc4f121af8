"""Conv / pool / flatten / dropout / read-out layers: IR description, QAT == simulator, gradients, checkpoints."""
import numpy as np
import pytest
import torch

from snn2hw.backends import sim
from snn2hw.compiler import compile_graph
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Conv2d, Dense
from snn2hw.nn.conv import ConvLIF, Dropout, Flatten, LeakyReadout, SumPoolLIF
from snn2hw.nn.functional import cuba_lif_reference
from snn2hw.nn.layers import LIFDense, SpikingSequential
from snn2hw.quantize import QuantConfig, quantize_graph
from snn2hw.train.checkpoint import load_checkpoint, save_checkpoint


def _conv_net(seed=0, readout=False):
    torch.manual_seed(seed)
    layers = [
        ConvLIF((1, 8, 8), 4, 3, stride=1, padding=1, du=0.3, dv=0.15, v_th=1.0, bias=True, weight_gain=3.0),
        SumPoolLIF((4, 8, 8), 2, du=0.5, dv=0.2, v_th=1.5, bias=True),
        Flatten(),
        Dropout(0.2),
        LIFDense(64, 10, du=0.3, dv=0.15, v_th=1.0, bias=True, weight_gain=4.0),
    ]
    if readout:
        layers.append(LeakyReadout(10, 3, du=0.2, dv=0.1, v_scale=2.0, bias=True, weight_gain=3.0))
    m = SpikingSequential(layers)
    for layer in m.layers:
        if getattr(layer, "bias", None) is not None:
            torch.nn.init.uniform_(layer.bias, -0.05, 0.1)
    return m


def _spikes(shape, seed, p=0.3):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def test_to_ir_describes_the_stack():
    g = _conv_net(readout=True).to_ir()
    assert [p.name for p in g.populations] == ["lif1", "lif2", "lif3", "lif4"]
    assert [p.size for p in g.populations] == [4 * 64, 4 * 16, 10, 3]
    kinds = {p.name: type(p) for p in g.projections}
    assert kinds == {"conv1": Conv2d, "pool2": Conv2d, "fc3": Dense, "fc4": Dense}
    pool = next(p for p in g.projections if p.name == "pool2")
    assert pool.groups == 4 and pool.stride == (2, 2) and np.all(pool.weight == 1)
    assert g.population("lif4").neuron.spiking is False and g.population("lif3").neuron.spiking
    # per-channel bias spread over the channel's H*W neurons in C order
    conv = g.population("lif1").neuron.bias
    np.testing.assert_array_equal(conv.reshape(4, 64), np.repeat(_conv_net(readout=True).layers[0].bias
                                                                  .detach().double().numpy()[:, None], 64, axis=1))
    qg, report = quantize_graph(g)
    assert qg.population("lif4").neuron.vth == hw.VTH_MAX
    assert report[3].scale == pytest.approx(QuantConfig().threshold_target * 64 / 2.0)


def test_qat_equals_simulator_spikes_and_state():
    m = _conv_net(readout=True).eval().set_qat(QuantConfig())
    for layer in m.layers:
        layer.record_int_state = True
    x = _spikes((4, 30, 64), 1)
    outs = m(x, return_all=True)
    names = ["lif1", "lif2", "lif3", "lif4"]
    res = sim.run(compile_graph(m.to_ir()), x.numpy().astype(np.int64), record=names[:3], record_state=names)
    pop_layers = [(i, l) for i, l in enumerate(m.layers) if not isinstance(l, (Flatten, Dropout))]
    for name, (i, layer) in zip(names, pop_layers):
        u, v = layer.last_int_state
        np.testing.assert_array_equal(u.numpy(), res.u[name])
        np.testing.assert_array_equal(v.numpy(), res.v[name])
        if name != "lif4":
            np.testing.assert_array_equal(outs[i].detach().numpy().astype(np.uint8), res.spikes[name])
            assert res.spikes[name].sum() > 20, name
    # the read-out: QAT returns the simulator's v in float units, and it never spikes
    k = m.layers[-1].quantize(QuantConfig())[2].scale
    np.testing.assert_allclose(outs[-1].detach().double().numpy(), res.v["lif4"] / k, rtol=1e-6, atol=1e-6)
    assert np.abs(res.v["lif4"]).max() > 0


def test_gradients_reach_every_parameter_float_and_qat():
    for qat in (None, QuantConfig()):
        m = _conv_net(1, readout=True).set_qat(qat)
        m.layers[1].du = torch.nn.Parameter(torch.tensor(0.5))  # a trained decay too
        x = _spikes((3, 20, 64), 2)
        v = m(x)
        loss = torch.nn.functional.cross_entropy(v.sum(dim=1), torch.arange(3) % 3)
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (qat, name)


def test_convlif_float_forward_equals_unrolled_reference():
    torch.manual_seed(3)
    layer = ConvLIF((2, 7, 6), 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                    du=0.25, dv=0.1, v_th=0.8, bias=True, weight_gain=3.0).double()
    torch.nn.init.uniform_(layer.bias, -0.05, 0.1)
    x = _spikes((2, 12, 2 * 7 * 6), 4).double()
    out = layer(x)
    # reference: per step convolution, one-step hop delay, unrolled LIF (per-neuron bias in C order)
    c_out, h, w = layer.out_shape
    a = torch.zeros(2, 12, c_out * h * w, dtype=torch.float64)
    for t in range(1, 12):
        img = x[:, t - 1].reshape(2, 2, 7, 6)
        a[:, t] = torch.nn.functional.conv2d(img, layer.weight, stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                             groups=2).reshape(2, -1)
    bias = layer.bias[:, None].expand(c_out, h * w).reshape(-1)
    ref = cuba_lif_reference(a, 0.75, 0.9, 0.8, bias)
    assert out.shape == (2, 12, c_out * h * w) and (h, w) == (4, 4)
    np.testing.assert_array_equal(out.detach().numpy(), ref.detach().numpy())
    assert out.sum() > 10
    # the 5-D input convention gives the same result
    np.testing.assert_array_equal(layer(x.reshape(2, 12, 2, 7, 6)).detach().numpy(), out.detach().numpy())


def test_checkpoint_round_trip(tmp_path):
    m = _conv_net(2, readout=True)
    m.layers[0].du = torch.nn.Parameter(torch.tensor(0.35))
    path = tmp_path / "conv.pt"
    save_checkpoint(m, path)
    m2 = load_checkpoint(path)
    assert [type(l) for l in m2.layers] == [type(l) for l in m.layers]
    assert m2.config() == m.config()
    m.eval(), m2.eval()
    x = _spikes((2, 15, 64), 5)
    assert torch.equal(m(x), m2(x))
    for p1, p2 in zip(m.to_ir().projections, m2.to_ir().projections):
        np.testing.assert_array_equal(p1.weight, p2.weight)


def test_dropout_training_only_and_binary_under_qat():
    d = Dropout(0.5)
    x = torch.ones(2, 10, 40)
    assert torch.equal(d.eval()(x), x)
    y = d.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0 < (y == 0).sum() < x.numel()
    d.qat = QuantConfig()
    assert set(d(x).unique().tolist()) <= {0.0, 1.0}


def test_readout_must_be_last():
    m = SpikingSequential([LeakyReadout(4, 4), LIFDense(4, 2)])
    with pytest.raises(ValueError, match="last"):
        m.to_ir()
