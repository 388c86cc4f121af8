"""HM2-BP, ST-RSBP and BPTT on networks and workloads beyond the benchmark ones (the cases
``benchmarks/sweep_spiketrain_models.py`` found broken): the tensor-loop path (CUDA, no numba) against the numba
kernels, blocks of one step, pool and frozen first layers, strided/padded/dilated/grouped convolutions and padded
pools against their dense equivalents, and tensors made without ``device=`` (caught on the CPU by making ``meta``
the default device while the model and data are explicit CPU tensors)."""
from __future__ import annotations

import copy

import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule, spiketrain
from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential
from snn2hw.train.losses import count_cross_entropy


D = torch.float64


def _loss(out, y):
    return count_cross_entropy(out[-1] if isinstance(out, (list, tuple)) else out, y, scale=0.3)


def _grads(net, rule_name, x, y, **opts):
    rule = make_rule(rule_name, **opts)
    rule.setup(net)
    res = rule.compute_gradients(net, x, y, _loss, {})
    return [res.output.double()] + [p.grad.clone() for p in net.parameters() if p.grad is not None]


def _assert_same(a, b, rtol=1e-10, atol=1e-12):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


def _dense(bias=True, rec=False):
    torch.manual_seed(0)
    hidden = RecurrentLIFDense(24, 9, du=0.3, dv=0.5, bias=bias, weight_gain=3.0, rec_gain=0.3) if rec else \
        LIFDense(24, 9, du=0.3, dv=0.5, bias=bias, weight_gain=3.0)
    net = SpikingSequential([hidden, LIFDense(9, 3, du=0.3, dv=0.1, weight_gain=3.0)]).double()
    if bias:
        with torch.no_grad():
            net.layers[0].bias.uniform_(-0.05, 0.1)
    return net


def _conv(stride=1, padding=0, dilation=1, groups=1, pool_stride=None, pool_padding=0, bias=True, in_shape=(2, 9, 8)):
    torch.manual_seed(0)
    conv = ConvLIF(in_shape, 4, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=groups, du=0.3,
                   dv=0.2, weight_gain=3.0, bias=bias)
    pool = SumPoolLIF(conv.out_shape, 2, stride=pool_stride, padding=pool_padding, du=0.3, dv=0.2, v_th=0.8,
                      bias=bias)
    net = SpikingSequential([conv, pool, Flatten(), LIFDense(pool.out_features, 3, du=0.3, dv=0.2,
                                                              weight_gain=3.0)]).double()
    if bias:
        with torch.no_grad():
            for layer in net.layers[:2]:
                layer.bias.uniform_(-0.05, 0.1)
    return net


def _spikes(batch, steps, n, density=0.3, seed=1):
    return (torch.rand(batch, steps, n, generator=torch.Generator().manual_seed(seed)) < density).to(D)


OPTS = {"margin": 0, "target_true": 6, "target_false": 1}


@pytest.mark.parametrize("chunk_bytes", [0, 4 << 20])
@pytest.mark.parametrize("rule_name,rec", [("hm2bp", False), ("strsbp", False), ("strsbp", True), ("bptt", False)])
def test_tensor_loop_equals_numba_kernels(monkeypatch, rule_name, rec, chunk_bytes):
    """The path CUDA takes (tensor loops, no numba: ``SNN2HW_NO_NUMBA=1``) gives the kernels' spikes and gradients.
    It used to run a dense layer's whole-window forward (``CHUNK_BYTES`` large enough, the default) without the hop
    delay: a closure in ``lif_sequence_chunked`` read ``lag`` after it was set to 0."""
    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    x, y = _spikes(4, 30, 24), torch.tensor([0, 1, 2, 1])
    opts = {} if rule_name == "bptt" else OPTS
    fast = _grads(_dense(rec=rec), rule_name, x, y, **opts)
    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    loop = _grads(_dense(rec=rec), rule_name, x, y, **opts)
    _assert_same(fast, loop)
    assert torch.equal(loop[0], _dense(rec=rec)(x))  # the layers' own forward


@pytest.mark.parametrize("steps", [4, 7])
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_conv_blocks_of_one_step(monkeypatch, rule_name, steps):
    """Blocks of one step (``chunk`` 1, small ``CHUNK_BYTES``): the block holding step 0 has no input step (the hop
    delay), and a convolution over 0 (sample, step) images used to fail to reshape."""
    chunk = 1
    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", 0)
    x, y = _spikes(2, steps, 144), torch.tensor([0, 2])
    chunked = _grads(_conv(), rule_name, x, y, chunk=chunk, **OPTS)
    rule = make_rule(rule_name, chunk=chunk, **OPTS)
    rule.full_trace = True
    net = _conv()
    res = rule.compute_gradients(net, x, y, None, {})
    _assert_same(chunked, [res.output.double()] + [p.grad for p in net.parameters() if p.grad is not None])


@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_refusals_name_the_parameter_and_limit(rule_name):
    """What the rules cannot do is refused with a ``LearningRuleError`` naming it: a window too short for the input
    to reach the output (one step of delay per layer), and trainable decays or thresholds (the rules' gradients are
    for weights and biases; such parameters used to stay silently untrained)."""
    net = _conv()  # three populations: the output's first input arrives at step 3
    with pytest.raises(LearningRuleError, match=r"T = 3 steps.*use T > 3"):
        make_rule(rule_name).compute_gradients(net, _spikes(2, 3, 144), torch.tensor([0, 1]), None, {})
    make_rule(rule_name).compute_gradients(net, _spikes(2, 4, 144), torch.tensor([0, 1]), None, {})
    for option in ("train_decays", "train_threshold"):
        net = SpikingSequential([LIFDense(6, 4, **{option: True}), LIFDense(4, 2)])
        with pytest.raises(LearningRuleError, match=r"layer 0 \(LIFDense\) has a trainable '(du|threshold)'"):
            make_rule(rule_name).setup(net)


@pytest.mark.parametrize("first", ["pool", "frozen_dense"])
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_first_layer_with_a_bias_alone(rule_name, first):
    """A first layer whose only trainable parameter is its bias (a sum pool, or a dense layer with a frozen weight)
    hands no error down and has no weight gradient: its backward used to call the hop's products with neither
    output gradient (an AttributeError). Its bias gradient equals the full-window path's."""
    torch.manual_seed(0)
    if first == "pool":
        head = SumPoolLIF((2, 6, 6), 2, du=0.3, dv=0.2, v_th=0.8, bias=True)
        n = head.out_features
    else:
        head = LIFDense(72, 10, du=0.3, dv=0.2, bias=True, weight_gain=3.0)
        head.weight.requires_grad_(False)
        n = 10
    x, y = _spikes(3, 20, 72), torch.tensor([0, 1, 2])
    base = SpikingSequential([head, Flatten(), LIFDense(n, 3, du=0.3, dv=0.2, weight_gain=3.0)]).double()
    results = []
    for full in (False, True):
        net = copy.deepcopy(base)
        rule = make_rule(rule_name, **OPTS)
        rule.full_trace = full
        rule.compute_gradients(net, x, y, None, {})
        results.append([net.layers[0].bias.grad, net.layers[-1].weight.grad])
        assert net.layers[0].weight.grad is None and float(results[-1][0].abs().sum()) > 0
    _assert_same(*results)


def _as_dense(net):
    """The network with every conv/pool hop written as its dense matrix; [(layer, kernel leaf, matrix, dense)]."""
    layers, twins = [], []
    for layer in net.layers:
        if isinstance(layer, (ConvLIF, SumPoolLIF)):
            dense, kernel, matrix = layer.dense_equivalent(D)
            layers.append(dense)
            twins.append((layer, kernel, matrix, dense))
        elif isinstance(layer, LIFDense):
            dense = LIFDense(layer.in_features, layer.out_features).double()
            dense.load_state_dict(layer.state_dict())
            layers.append(dense)
    return SpikingSequential(layers), twins


@pytest.mark.parametrize("geometry", [
    {"stride": 2, "padding": 1}, {"dilation": 2, "padding": (2, 1), "groups": 2},
    {"stride": (1, 2), "pool_stride": 1, "pool_padding": 1}])
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_strided_padded_conv_and_pool_equal_dense_equivalent(monkeypatch, rule_name, geometry):
    """``test_conv_pool_stack_equals_equivalent_dense_stack`` for the geometry a layer config can ask for: strides,
    padding, dilation and groups of a conv, a pool's own stride and padding. The kernel's gradient is the dense
    twin's through the chain rule; the per-channel bias the sum over the channel's positions."""
    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", 3000)
    net = _conv(**geometry, in_shape=(2, 7, 6))
    ref, twins = _as_dense(net)
    x, y = _spikes(3, 12, 84), torch.tensor([0, 1, 2])
    a = _grads(net, rule_name, x, y, chunk=7, **OPTS)
    b = _grads(ref, rule_name, x, y, chunk=7, **OPTS)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(net.layers[-1].weight.grad, ref.layers[-1].weight.grad, rtol=1e-9, atol=1e-12)
    for layer, kernel, matrix, dense in twins:
        if isinstance(layer, ConvLIF):
            (expected,) = torch.autograd.grad(matrix, kernel, dense.weight.grad)
            assert float(expected.abs().sum()) > 0
            torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-9, atol=1e-12)
        per_channel = dense.bias.grad.reshape(layer.bias.numel(), -1).sum(1)
        torch.testing.assert_close(layer.bias.grad, per_channel, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("net_kind", ["dense", "rec", "conv"])
@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp", "bptt"])
def test_no_tensor_made_on_the_default_device(monkeypatch, rule_name, net_kind):
    """A tensor made without ``device=`` lands on the default device, which on a GPU run is the CPU while the model
    is on CUDA. With ``meta`` the default and the model and data explicit CPU tensors, such a tensor meets a CPU one
    and raises (or leaves a gradient on ``meta``). The tensor-loop path (CUDA's) is forced; the gradients must be the
    normal run's. ST-RSBP's Monte-Carlo fit of ``h`` (host-side, on the CPU by design) used to follow the default."""
    from snn2hw.learning import strsbp

    strsbp.spsp_fit.cache_clear()  # the fit is made under meta, not taken from an earlier test
    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    make = {"dense": _dense, "rec": lambda: _dense(rec=True), "conv": _conv}[net_kind]
    if rule_name == "hm2bp" and net_kind == "rec":
        pytest.skip("HM2-BP refuses recurrent hidden layers")
    x, y = _spikes(3, 17, 144 if net_kind == "conv" else 24), torch.tensor([0, 1, 2])
    opts = {} if rule_name == "bptt" else {**OPTS, "windows": 2} if rule_name == "strsbp" else OPTS
    ref = _grads(make(), rule_name, x, y, **opts)
    strsbp.spsp_fit.cache_clear()
    net = make()
    torch.set_default_device("meta")
    try:
        got = _grads(net, rule_name, x, y, **opts)
    finally:
        torch.set_default_device("cpu")
    assert all(g.device.type == "cpu" for g in got)
    _assert_same(ref, got)


def test_trainer_fit_makes_no_tensor_on_the_default_device(monkeypatch):
    """The trainer's batch order and evaluation indices are host tensors: explicit CPU, whatever the default."""
    from snn2hw.train.trainer import Trainer, TrainerConfig

    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    x, y = _spikes(5, 12, 144).float(), torch.tensor([0, 1, 2, 0, 1])
    net = _conv().float()
    trainer = Trainer(net, TrainerConfig(epochs=1, batch_size=2, progress=False, rule="hm2bp", tensorboard=False,
                                         rule_options=OPTS, save_best=None), loss_fn=_loss)
    torch.set_default_device("meta")
    try:
        history = trainer.fit((x, y), (x, y))
    finally:
        torch.set_default_device("cpu")
    assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all()) for p in net.parameters())
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0
