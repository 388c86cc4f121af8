"""The simulator's whole-network kernel (``compiled.network_scan``) against the tensor formulas, bit for bit,
on random graphs: feed-forward and with cycles, several inputs (binary and graded), projections with
delays into shared targets, every sign mode and weight width (so every packed weight type and shift),
convolutions (per-source lists), and the inputs' projections accumulated before the scan."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from snn2hw.backends import sim
from snn2hw.backends.sim import simulator
from snn2hw.hw import compiled
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population, sum_pool2d

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed")


def _random_graph(seed: int, cyclic: bool):
    rng = np.random.default_rng(seed)
    graded_bits = int(rng.choice([0, 4, 8]))
    inputs = (Input("x", 36, 0), Input("g", int(rng.integers(3, 12)), graded_bits))
    sizes = [int(rng.integers(1, 60)) for _ in range(int(rng.integers(2, 5)))]
    pops = tuple(
        Population(f"p{i}", n, LoihiLIF(int(rng.integers(-1, 4096)), int(rng.integers(0, 4096)),
                                        int(rng.integers(1, 2000)), rng.integers(-300, 300, n),
                                        rng.integers(-2, 4, n)))
        for i, n in enumerate(sizes))
    projs = []

    def dense(name, src, src_n, dst, bits=0, delay=None):
        mode = int(rng.integers(1, 4))  # mixed, excitatory, inhibitory
        nwb = int(rng.integers(2, 9))
        scale = int(rng.choice([1, 8, 256]))
        w = rng.integers(-256 * scale, 256 * scale, (sizes[dst], src_n))
        d = int(rng.integers(0, 3)) if delay is None else delay
        projs.append(LoihiDense(name, src, f"p{dst}", w, int(rng.integers(-3, 6)), nwb, mode, bits, d))

    dense("in0", "x", 36, 0)
    dense("in1", "g", inputs[1].size, int(rng.integers(0, len(sizes))), graded_bits,
          delay=0 if graded_bits else None)  # a graded DelayDense is the layer schedule's
    # a conv from x read as a 1x6x6 image: per-source lists in the kernel, Lava Conv's output stage
    out = 2 * 4 * 4
    projs.append(LoihiConv2d("conv", "x", "c", rng.integers(-300, 300, (2, 1, 3, 3)), (1, 6, 6)))
    pops = pops + (Population("c", out, LoihiLIF(300, 500, int(rng.integers(1, 400)), np.zeros(out, int),
                                                 np.zeros(out, int))),)
    for i in range(len(sizes) - 1):  # a chain through the dense populations
        dense(f"f{i}", f"p{i}", sizes[i], i + 1)
    sizes.append(out)
    names = [p.name for p in pops]
    for j in range(int(rng.integers(1, 4))):  # extra edges (backward ones close cycles), the conv's too
        a, b = sorted(int(i) for i in rng.choice(len(names), 2, replace=False))
        src, dst = (b, a) if cyclic else (a, b)
        if names[dst] != "c":
            dense(f"e{j}", names[src], sizes[src], dst)
    if cyclic:
        dense("self", names[0], sizes[0], 0)
    g = Graph(inputs, pops, tuple(projs), tuple(names[-2:])).validate()
    steps = 30
    x = (rng.random((3, steps, 36)) < 0.3).astype(np.int64)
    lim = 1 << max(graded_bits - 1, 0)
    xg = rng.integers(-lim, lim, (3, steps, inputs[1].size)) if graded_bits else (
        rng.random((3, steps, inputs[1].size)) < 0.5).astype(np.int64)
    return g, {"x": x, "g": xg}


def _assert_same(a, b):
    for k in b.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k], err_msg=k)
    for k in b.u:
        np.testing.assert_array_equal(a.u[k], b.u[k], err_msg=k)
        np.testing.assert_array_equal(a.v[k], b.v[k], err_msg=k)
    assert a.events == b.events


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cyclic", [False, True])
def test_network_kernel_equals_tensor_path_on_random_graphs(monkeypatch, seed, cyclic):
    g, x = _random_graph(seed, cyclic)
    names = [p.name for p in g.populations]
    if seed % 2:  # the inputs' projections accumulated in the scan (the path before messages were formed first)
        monkeypatch.setattr(compiled.plan, "_PRECOMPUTE_MIN_SYNAPSES", 1 << 62)
    calls = []
    scan = compiled.network_scan
    monkeypatch.setattr(compiled, "network_scan", lambda *a, **k: calls.append(1) or scan(*a, **k))
    fast = sim.run(g, x, record=names, record_state=names)
    assert calls, "the network kernel did not run"
    assert any(fast.spikes[n].any() for n in names)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    _assert_same(fast, sim.run(g, x, record=names, record_state=names))


def test_packed_weights_are_narrow_and_exact():
    rng = np.random.default_rng(0)
    pops = (Population("h", 40, LoihiLIF(100, 100, 10, np.zeros(40, int), np.zeros(40, int))),)
    mixed = LoihiDense("w", "in", "h", rng.integers(-256, 256, (40, 50)), 0, 8, 1)
    g = Graph((Input("in", 50),), pops, (mixed,), ("h",)).validate()
    spec = sim.prepare(g).network()
    assert spec.weights.dtype == np.int8 and spec.w_shift[0] == 1 and spec.acc_dtype == np.int32
    rows = spec.weights.reshape(50, 40).astype(np.int64) << 1
    ref = simulator._prepare_synapses(g, torch.device("cpu"))[0].weight_t.to(torch.int64).numpy()
    np.testing.assert_array_equal(rows, ref)
    excit = dataclasses.replace(mixed, sign_mode=2)
    spec = sim.prepare(dataclasses.replace(g, projections=(excit,))).network()
    assert spec.weights.dtype == np.int16 and spec.w_shift[0] == 0


def test_common_shift():
    assert compiled.common_shift(np.array([0, 4, -12, 8])) == 2
    assert compiled.common_shift(np.array([0, 0])) == 0
    assert compiled.common_shift(np.array([3, -256])) == 0


@pytest.mark.parametrize("geometry", [dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
                                      dict(stride=(1, 3), padding=(0, 1), dilation=(2, 1), groups=1),
                                      dict(stride=(2, 2), padding=(0, 0), dilation=(1, 1), groups=4)])
def test_conv_segments_reproduce_the_convolution(geometry):
    rng = np.random.default_rng(3)
    c = LoihiConv2d("c", "in", "o", rng.integers(-50, 50, (4, 4 // geometry["groups"], 3, 2)), (4, 7, 6),
                    **geometry)
    ptr, seg_acc, seg_w, table, length, perm = simulator._conv_rows(c, np.asarray(c.weight))
    s = (rng.random((5, 4 * 7 * 6)) < 0.4).astype(np.int64)
    acc = np.zeros((5, int(np.prod(c.out_shape))), dtype=np.int64)
    for i in range(s.shape[1]):
        for q in range(ptr[i], ptr[i + 1]):
            acc[:, seg_acc[q]:seg_acc[q] + length] += s[:, i:i + 1] * table[seg_w[q]:seg_w[q] + length]
    ref = torch.nn.functional.conv2d(torch.as_tensor(s, dtype=torch.float64).reshape(5, 4, 7, 6),
                                     torch.as_tensor(np.asarray(c.weight), dtype=torch.float64), stride=c.stride,
                                     padding=c.padding, dilation=c.dilation, groups=c.groups)
    np.testing.assert_array_equal(acc[:, perm], ref.reshape(5, -1).numpy().astype(np.int64))


def test_prepared_graph_runs_the_same_and_keeps_its_own_weights():
    g, x = _random_graph(1, True)
    names = [p.name for p in g.populations]
    direct = sim.run(g, x, record=names, record_state=names)
    prepared = sim.prepare(g)
    _assert_same(sim.run(prepared, x, record=names, record_state=names), direct)
    for p in g.projections:  # changing the graph afterwards does not reach the prepared copy
        np.asarray(p.weight)[...] = 0
    _assert_same(sim.run(prepared, x, record=names, record_state=names), direct)
    with pytest.raises(sim.simulator.BackendError, match="prepared for"):
        sim.run(prepared, x, device="meta")


def test_narrow_state_is_exact_through_every_width_limit(monkeypatch):
    """The kernel keeps u, v and the summed input in int32 and du/dv in int16: drive a population through
    int32 wraps of the shifted input, 24-bit wraps of u (du = -1: u never decays) and saturation of v,
    with the largest bias, and compare states, spikes and event counts with the tensor path."""
    rng = np.random.default_rng(7)
    n = 40
    bias = np.full(n, (1 << 12) - 1)
    bias[::2] = -(1 << 12)
    pops = (Population("a", n, LoihiLIF(-1, 0, (1 << 17) - 1, bias, np.full(n, 7))),
            Population("b", n, LoihiLIF(4095, 4095, 1, rng.integers(-50, 50, n), np.zeros(n, dtype=np.int64))))
    w = rng.integers(-256, 256, (n, 2000))
    w[: n // 2] = 254  # 1200 active inputs x 254 << 7: the shifted input leaves int32
    projs = (LoihiDense("in", "x", "a", w, 7, 8, 1), LoihiDense("ab", "a", "b", rng.integers(-256, 256, (n, n)), 7, 8, 1),
             LoihiDense("ba", "b", "a", rng.integers(-256, 256, (n, n)), 6, 8, 1))
    g = Graph((Input("x", 2000),), pops, projs, ("a", "b")).validate()
    x = (rng.random((3, 80, 2000)) < 0.6).astype(np.int64)
    spec = sim.prepare(g).network()
    assert spec.du.dtype == np.int16 and spec.bias_eff.dtype == np.int32
    fast = sim.run(g, x, record=["a", "b"], record_state=["a", "b"])
    assert all(fast.events["a"][k] > 0 for k in fast.events["a"]), fast.events
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    _assert_same(fast, sim.run(g, x, record=["a", "b"], record_state=["a", "b"]))


def test_narrow_falls_back_to_int64():
    assert compiled.plan._narrow([-1, 4095], np.int16).dtype == np.int16
    assert compiled.plan._narrow([0, 1 << 40], np.int32).dtype == np.int64
    assert compiled.plan._narrow([], np.int16).dtype == np.int16


@pytest.mark.parametrize("seed", range(3))
def test_scanned_convs_and_poolings_binary_and_graded(monkeypatch, seed):
    """Every loop nest of the scan's per-source segments: a convolution (several output channels per
    segment) and a sum pooling (one weight per segment), each from a population (binary spikes) and
    from a graded input (payload times weight), with stride and padding, at batch 1 and 4; against the
    tensor formulas."""
    rng = np.random.default_rng(seed)
    g_in = Input("g", 2 * 6 * 6, 6)  # graded payloads, scanned (only binary inputs' messages are formed first)
    x_in = Input("x", 64, 0)

    def lif(name, n):
        return Population(name, n, LoihiLIF(int(rng.integers(200, 4096)), int(rng.integers(0, 4096)),
                                            int(rng.integers(20, 200)), rng.integers(-20, 40, n),
                                            np.zeros(n, int)))

    first = LoihiConv2d("first", "x", "p", rng.integers(-120, 160, (4, 1, 3, 3)), (1, 8, 8), padding=(1, 1))
    conv_p = LoihiConv2d("conv_p", "p", "q", rng.integers(-100, 120, (4, 2, 3, 3)), (4, 8, 8), stride=(2, 1),
                         padding=(1, 0), groups=2)
    pool_p = sum_pool2d("pool_p", "p", "r", (4, 8, 8), 2, padding=(1, 1), weight=int(rng.integers(400, 1200)))
    conv_g = LoihiConv2d("conv_g", "g", "s", rng.integers(-60, 60, (3, 2, 3, 3)), (2, 6, 6), stride=(2, 2),
                         padding=(1, 1), num_message_bits=6)
    pool_g = dataclasses.replace(sum_pool2d("pool_g", "g", "t", (2, 6, 6), 3, stride=2, weight=60), num_message_bits=6)
    projs = (first, conv_p, pool_p, conv_g, pool_g)
    shapes = {p.dst: int(np.prod(p.expected_out_shape())) for p in projs}
    pops = tuple(lif(n, shapes[n]) for n in ("p", "q", "r", "s", "t"))
    graph = Graph((x_in, g_in), pops, projs, ("q", "r", "s", "t")).validate()
    names = [p.name for p in pops]
    calls = []
    scan = compiled.network_scan
    monkeypatch.setattr(compiled, "network_scan", lambda *a, **k: calls.append(1) or scan(*a, **k))
    for batch in (1, 4):
        x = {"x": (rng.random((batch, 20, 64)) < 0.4).astype(np.int64),
             "g": rng.integers(-32, 32, (batch, 20, 72))}
        fast = sim.run(graph, x, record=names, record_state=names)
        assert calls, "the network kernel did not run"
        assert all(fast.spikes[n].any() and not fast.spikes[n].all() for n in names), \
            {n: int(fast.spikes[n].sum()) for n in names}
        with monkeypatch.context() as m:
            m.setattr(simulator, "_use_kernel", lambda dev: False)
            _assert_same(fast, sim.run(graph, x, record=names, record_state=names))
