"""Convolution, sum pooling and sparse projections without Lava: the simulator against hand-computed
numbers and PyTorch, the integer helpers, quantizer, design rules, artefacts and resource counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from snn2hw.artefact import load, save
from snn2hw.backends import sim
from snn2hw.compiler import DesignRuleError, compile_graph, design_rule_violations
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import (LIF, Conv2d, Dense, Graph, GraphError, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population,
                       sum_pool2d, synapse_count)
from snn2hw.quantize import QuantizationError, quantize_graph


def _pop(name, size, du=-1, dv=0, vth=hw.VTH_MAX):
    return Population(name, size, LoihiLIF(du, dv, vth, np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)))


def _arrived(g: Graph, x: np.ndarray, pop: str) -> np.ndarray:
    """What reached ``pop`` at step 1 (u = a_in << 6 from zero state with du = -1)."""
    res = sim.run(g, {"in": x}, record_state=[pop])
    return res.u[pop][:, 1] >> hw.ACTIVATION_SHIFT


def test_conv_hand_computed_3x3_cross_correlation():
    # 1 channel, 3x3 image, 2x2 kernel [[1, 2], [3, 4]], no flip (PyTorch cross-correlation):
    # out[0,0] = 1*1 + 2*2 + 3*4 + 4*5 = 37 for image [[1,2,3],[4,5,6],[7,8,9]]
    img = np.arange(1, 10)
    k = np.array([[[[1, 2], [3, 4]]]])
    g = Graph((Input("in", 9, 8),), (_pop("o", 4),), (LoihiConv2d("c", "in", "o", k, (1, 3, 3), num_message_bits=8),),
              ("o",)).validate()
    x = np.zeros((1, 3, 9), dtype=np.int64)
    x[0, 0] = img
    assert _arrived(g, x, "o")[0].tolist() == [37, 47, 67, 77]
    # binary input: a single spike at the centre pixel lands on the kernel taps mirrored (correlation)
    gb = Graph((Input("in", 9),), (_pop("o", 4),), (LoihiConv2d("c", "in", "o", k, (1, 3, 3)),), ("o",)).validate()
    xb = np.zeros((1, 3, 9), dtype=np.int64)
    xb[0, 0, 4] = 1
    assert _arrived(gb, xb, "o")[0].tolist() == [4, 3, 2, 1]


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 2), ((1, 2), (2, 0), (2, 1), 4),
                                                             (2, 2, 2, 1)])
def test_conv_matches_pytorch_orientation_and_layout(stride, padding, dilation, groups):
    rng = np.random.default_rng(3)
    c, h, w = 4, 6, 5
    k = rng.integers(-9, 10, (4, c // groups, 3, 2))
    conv = LoihiConv2d("c", "in", "o", k, (c, h, w), None, stride, padding, dilation, groups, num_message_bits=8)
    g = Graph((Input("in", c * h * w, 8),), (_pop("o", int(np.prod(conv.out_shape))),), (conv,), ("o",)).validate()
    x = np.zeros((2, 3, c * h * w), dtype=np.int64)
    x[:, 0] = rng.integers(-100, 100, (2, c * h * w))
    ref = torch.nn.functional.conv2d(torch.tensor(x[:, 0], dtype=torch.float64).reshape(2, c, h, w),
                                     torch.tensor(k, dtype=torch.float64), stride=conv.stride, padding=conv.padding,
                                     dilation=conv.dilation, groups=groups)
    assert np.array_equal(_arrived(g, x, "o"), ref.reshape(2, -1).numpy().astype(np.int64))


def test_conv_integer_path_equals_float_path_and_output_wraps():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(-2**23, 2**23, (3, 4, 6, 5), generator=g)
    w = torch.randint(-256, 256, (6, 2, 3, 2), generator=g)
    a = hw.conv_accumulate_exact(s, w, (1, 2), (2, 1), (2, 1), 2, 2**23)
    b = hw.conv_accumulate_exact(s, w * 2**30, (1, 2), (2, 1), (2, 1), 2, 2**23)  # forces the int64 path
    assert torch.equal(a * 2**30, b)
    v = torch.tensor([2**23 - 1, 2**23, -2**23, -2**23 - 1, 2**31 - 1, -2**31, 2**31, 5 * 2**24 + 3])
    assert hw.conv_output(v).tolist() == [2**23 - 1, -2**23, -2**23, 2**23 - 1, -1, 0, 0, 3]


def test_sparse_equals_dense_in_the_simulator():
    rng = np.random.default_rng(1)
    w = np.where(rng.random((5, 7)) < 0.4, rng.integers(-300, 300, (5, 7)), 0)
    mk = lambda sparse: Graph((Input("in", 7),), (_pop("o", 5, du=100, dv=10, vth=20),),  # noqa: E731
                              (LoihiDense("d", "in", "o", w, weight_exp=-1, sparse=sparse),), ("o",)).validate()
    x = {"in": (rng.random((2, 9, 7)) < 0.5).astype(np.int64)}
    a, b = sim.run(mk(False), x, record_state=["o"]), sim.run(mk(True), x, record_state=["o"])
    assert np.array_equal(a.u["o"], b.u["o"]) and np.array_equal(a.spikes["o"], b.spikes["o"])


def test_sum_pool_and_synapse_counts():
    pool = sum_pool2d("p", "a", "b", (2, 4, 4), 2, weight=3)
    assert isinstance(pool, LoihiConv2d) and pool.out_shape == (2, 2, 2) and pool.groups == 2
    assert synapse_count(pool) == 2 * 2 * 2 * 4  # each output neuron sums 4 inputs
    conv = LoihiConv2d("c", "a", "b", np.ones((1, 1, 3, 3), int), (1, 3, 3), padding=1)
    assert synapse_count(conv) == 9 + 6 * 4 + 4 * 4  # centre 9, edges 6, corners 4 valid taps
    assert isinstance(sum_pool2d("p", "a", "b", (1, 4, 4), 2, weight=0.5), Conv2d)


def test_graph_validate_conv_shapes():
    conv = LoihiConv2d("c", "in", "o", np.ones((2, 1, 3, 3), int), (1, 5, 5))
    with pytest.raises(GraphError, match="prod"):
        Graph((Input("in", 25),), (_pop("o", 10),), (conv,), ("o",)).validate()
    bad = LoihiConv2d("c", "in", "o", np.ones((3, 1, 3, 3), int), (2, 5, 5), groups=2)
    with pytest.raises(GraphError, match="groups"):
        Graph((Input("in", 50),), (_pop("o", 27),), (bad,), ("o",)).validate()


def _float_conv_graph(scale=1.0):
    rng = np.random.default_rng(0)
    conv = Conv2d("c", "in", "h", rng.normal(0, 0.4, (2, 1, 3, 3)) * scale, (1, 5, 5), padding=1)
    sp = Dense("s", "h", "o", np.where(rng.random((3, 50)) < 0.3, rng.normal(0, 0.5, (3, 50)), 0), sparse=True)
    return Graph((Input("in", 25),), (Population("h", 50, LIF(0.2, 0.1, 1.0, np.zeros(50))),
                                      Population("o", 3, LIF(0.3, 0.1, 1.0, np.zeros(3)))), (conv, sp), ("o",)).validate()


def test_quantize_compile_and_artefact_round_trip(tmp_path):
    art = compile_graph(_float_conv_graph())
    conv, sp = art.graph.projections
    assert isinstance(conv, LoihiConv2d) and conv.weight_exp == 0 and conv.padding == (1, 1)
    assert isinstance(sp, LoihiDense) and sp.sparse
    save(art, tmp_path / "a.npz")
    back = load(tmp_path / "a.npz")
    c2, s2 = back.graph.projections
    assert isinstance(c2, LoihiConv2d) and c2.in_shape == (1, 5, 5) and c2.out_shape == conv.out_shape
    assert np.array_equal(c2.weight, conv.weight) and s2.sparse
    x = {"in": (np.random.default_rng(2).random((2, 8, 25)) < 0.5).astype(np.int64)}
    a, b = sim.run(art, x, record_state=["h", "o"]), sim.run(back, x, record_state=["h", "o"])
    assert np.array_equal(a.u["h"], b.u["h"]) and np.array_equal(a.v["o"], b.v["o"])


def test_quantizer_folds_the_conv_exponent_into_the_population_scale():
    q, report = quantize_graph(_float_conv_graph(scale=4.0))
    assert q.projections[0].weight_exp == 0 and np.abs(q.projections[0].weight).max() <= 256
    assert report[0].vth < 1024 and report[0].max_weight_error["c"] < 0.01
    with pytest.raises(QuantizationError, match="'c'.*weight_exp"):
        quantize_graph(_float_conv_graph(scale=1e9))


def test_design_rules_reject_what_lava_conv_cannot_express():
    conv = LoihiConv2d("c", "in", "o", np.array([[[[3, 255], [1, -256]]]]), (1, 3, 3), weight_exp=2, delay=1,
                       num_message_bits=24)
    g = Graph((Input("in", 9, 24),), (_pop("o", 4),), (conv,), ("o",)).validate()
    msgs = " | ".join(design_rule_violations(g))
    assert "'c' (conv): weight_exp 2" in msgs and "delay 1" in msgs
    assert "not representable" in msgs and "2**31" in msgs
    sp = LoihiDense("s", "in", "o", np.ones((4, 9), int), delay=2, sparse=True)
    g2 = Graph((Input("in", 9),), (_pop("o", 4),), (sp,), ("o",)).validate()
    with pytest.raises(DesignRuleError, match="'s'.*sparse"):
        compile_graph(g2)


def test_nir_export_writes_conv_as_conv2d_not_a_linear():
    import nir

    from snn2hw.nir import from_nir, to_nir

    ng = to_nir(_float_conv_graph())
    assert isinstance(ng.nodes["c"], nir.Conv2d) and ng.nodes["h"].v_threshold.shape == (2, 5, 5)
    back = from_nir(ng)
    assert isinstance(back.projections[0], Conv2d) and back.projections[0].padding == (1, 1)
    assert back.projections[1].sparse  # recorded in the metadata: NIR has no sparse matrix
