"""The simulator's fast paths against the paths they replace and the tensor formulas, bit for bit: binary
inputs' projections formed into messages before the scan (dense and conv, split over steps or columns),
the one-pass check of binary inputs, and the compiled direct float32 convolution at its bound."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from snn2hw.backends import sim
from snn2hw.backends.base import BackendError, check_inputs
from snn2hw.backends.sim import simulator
from snn2hw.hw import compiled
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population, sum_pool2d

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed")


def _graph(seed: int):
    """Binary input (2x6x6) -> conv (with weights that wrap Lava Conv's 24-bit output) -> LIF, sum pooling
    -> LIF, and a dense projection with a delay into the conv's target; all driven from the input."""
    rng = np.random.default_rng(seed)
    big = 1 << int(rng.integers(8, 22))  # up to 2**21 per weight: sums pass the 24-bit wrap
    conv = LoihiConv2d("conv", "x", "c", rng.integers(-big, big, (3, 2, 3, 3)), (2, 6, 6), padding=(1, 1),
                       stride=(1, int(rng.integers(1, 3))))
    pool = sum_pool2d("pool", "x", "q", (2, 6, 6), 2, weight=int(rng.integers(1, 200)))
    n_c = int(np.prod(conv.out_shape))
    dense = LoihiDense("d", "x", "c", rng.integers(-256, 256, (n_c, 72)), int(rng.integers(-3, 8)), 8, 1, 0,
                       int(rng.integers(0, 3)))
    out = LoihiDense("o", "c", "r", rng.integers(-256, 256, (5, n_c)), 0)

    def lif(n, vth):
        return LoihiLIF(int(rng.integers(0, 4096)), int(rng.integers(0, 4096)), vth, rng.integers(-50, 50, n),
                        np.zeros(n, dtype=np.int64))

    pops = (Population("c", n_c, lif(n_c, int(rng.integers(1, 3000)))), Population("q", 18, lif(18, 50)),
            Population("r", 5, lif(5, 100)))
    g = Graph((Input("x", 72),), pops, (conv, pool, dense, out), ("r", "q")).validate()
    x = (rng.random((1, 40, 72)) < 0.3).astype(np.int64)
    return g, x


def _run(g, x):
    names = [p.name for p in g.populations]
    return sim.run(g, x, record=names, record_state=names)


def _assert_same(a, b):
    for k in b.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k], err_msg=k)
        np.testing.assert_array_equal(a.u[k], b.u[k], err_msg=k)
        np.testing.assert_array_equal(a.v[k], b.v[k], err_msg=k)
    assert a.events == b.events


@pytest.mark.parametrize("seed", range(4))
def test_input_messages_before_the_scan_equal_the_scan_and_the_tensor_path(monkeypatch, seed):
    g, x = _graph(seed)
    # more "threads" than the machine may have: the pre-pass splits one sample's steps or columns into
    # 4 jobs (the real thread count only decides how many run at once)
    monkeypatch.setattr(compiled.runtime, "_threads", lambda: 4)
    monkeypatch.setattr(compiled.runtime, "_set_threads", lambda n: None)
    steps_split = _run(g, x)
    assert sim.prepare(g).network().ready.tolist() == [True, True, True, False]
    monkeypatch.setattr(compiled.input_stages, "_SPLIT_COLUMNS_BYTES", 0)
    columns_split = _run(g, x)
    monkeypatch.setattr(compiled.plan, "_PRECOMPUTE_MIN_SYNAPSES", 1 << 62)  # the former path: all in the scan
    in_scan = _run(g, x)
    assert not sim.prepare(g).network().ready.any()
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    reference = _run(g, x)
    assert any(reference.spikes[k].any() for k in reference.spikes)
    for fast in (steps_split, columns_split, in_scan):
        _assert_same(fast, reference)


def test_binary_inputs_are_checked_and_converted_in_one_pass():
    g = Graph((Input("x", 4),), (Population("p", 2, LoihiLIF(0, 0, 1, np.zeros(2, int), np.zeros(2, int))),),
              (LoihiDense("w", "x", "p", np.ones((2, 4), dtype=np.int64)),), ("p",)).validate()
    rng = np.random.default_rng(0)
    for dtype in (np.int64, np.int8, np.uint8, np.bool_, np.float64):
        x = (rng.random((3, 5, 4)) < 0.5).astype(dtype)
        b = check_inputs(g, x, binary_as_bool=True)["x"]
        assert b.dtype == np.bool_ and np.array_equal(b, x != 0)
        assert check_inputs(g, x)["x"].dtype == np.int64
    for bad in (2, -1):
        x = np.zeros((2, 3, 4), dtype=np.int64)
        x[1, 2, 3] = bad
        assert compiled.binary_spikes(x) is None
        for as_bool in (False, True):
            with pytest.raises(BackendError, match="binary"):
                check_inputs(g, x, binary_as_bool=as_bool)


@pytest.mark.parametrize("geometry", [dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1),
                                      dict(stride=(2, 3), padding=(0, 2), dilation=(2, 1), groups=2),
                                      dict(stride=(2, 2), padding=(0, 0), dilation=(1, 1), groups=4)])
def test_direct_conv_is_exact_up_to_its_bound(geometry):
    rng = np.random.default_rng(7)
    groups = geometry["groups"]
    w = rng.integers(-256, 256, (4, 4 // groups, 3, 2))
    w[0] = 255  # output channel 0 carries the largest sum of |w|
    max_input = (2**24 - 1) // int(np.abs(w).reshape(4, -1).sum(axis=1).max())
    assert 2**23 <= hw.conv_bound(torch.as_tensor(w), max_input) < 2**24
    s = torch.as_tensor(rng.integers(-max_input, max_input + 1, (3, 4, 7, 9)))
    s[0] = max_input  # an all-extreme image: partial sums reach the bound
    wt = torch.as_tensor(w)
    args = (geometry["stride"], geometry["padding"], geometry["dilation"], groups)
    out = compiled.conv_accumulate(s, wt, *args)
    ref = hw.conv_accumulate_exact(s, wt, *args, 2**40)  # the int64 im2col path
    assert out.dtype == torch.float32 and torch.equal(out.to(torch.int64), ref)
    assert int(ref.abs().max()) > 2**23
    spikes = torch.as_tensor(rng.random((2, 4, 7, 9)) < 0.4)
    assert torch.equal(compiled.conv_accumulate(spikes, wt, *args).to(torch.int64),
                       hw.conv_accumulate_exact(spikes, wt, *args, 2**40))


def test_layer_schedule_runs_one_channel_and_depthwise_convs_on_the_direct_kernel(monkeypatch):
    rng = np.random.default_rng(5)
    conv = LoihiConv2d("conv", "x", "c", rng.integers(-3000, 3000, (4, 1, 3, 3)), (2, 6, 6), padding=(1, 1), groups=2)
    pool = sum_pool2d("pool", "x", "q", (2, 6, 6), 2, weight=100)
    pops = (Population("c", 144, LoihiLIF(300, 500, 400, rng.integers(-50, 50, 144), np.zeros(144, int))),
            Population("q", 18, LoihiLIF(300, 500, 50, np.zeros(18, int), np.zeros(18, int))))
    g = Graph((Input("x", 72),), pops, (conv, pool), ("c", "q")).validate()
    x = (rng.random((2, 30, 72)) < 0.3).astype(np.int64)
    monkeypatch.setattr(simulator, "_FEEDFORWARD_NETWORK_KERNEL", False)
    calls = []
    direct = compiled.conv_accumulate
    monkeypatch.setattr(compiled, "conv_accumulate", lambda *a: calls.append(1) or direct(*a))
    fast = _run(g, x)
    assert len(calls) == 2  # the conv (one input channel per group) and the sum pooling
    assert fast.spikes["c"].any() and fast.spikes["q"].any()
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    _assert_same(fast, _run(g, x))


def _conv_graph(rng, geometry, in_shape, out_ch, kernel, big):
    """Binary input -> one convolution (weights up to ``big``) -> LIF; the conv is the input's projection."""
    ch = in_shape[0]
    w = rng.integers(-big, big, (out_ch, ch // geometry["groups"], *kernel))
    w[0, 0, 0, 0] = 0  # a zero tap: skipped by the dense stage's tap lists
    conv = LoihiConv2d("conv", "x", "c", w, in_shape, **geometry)
    n = int(np.prod(conv.out_shape))
    vth = int(rng.integers(1000, 20000))
    pops = (Population("c", n, LoihiLIF(int(rng.integers(0, 4096)), int(rng.integers(0, 4096)), vth,
                                        rng.integers(-50, 50, n), np.zeros(n, dtype=np.int64))),)
    return Graph((Input("x", int(np.prod(in_shape))),), pops, (conv,), ("c",)).validate()


@pytest.mark.parametrize("geometry", [dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1),
                                      dict(stride=(2, 3), padding=(0, 2), dilation=(2, 1), groups=2),
                                      dict(stride=(2, 2), padding=(1, 0), dilation=(1, 1), groups=4)])
# sums below 2**23 (plain messages) / in int32 (dense stage) / beyond 2**31 (events)
@pytest.mark.parametrize("big", [1 << 12, 1 << 20, 1 << 28])
def test_dense_input_conv_equals_the_event_segments_and_the_tensor_path(monkeypatch, geometry, big):
    rng = np.random.default_rng(big % 97 + geometry["groups"])
    g = _conv_graph(rng, geometry, (4, 9, 7), 4, (3, 2), big)
    x = (rng.random((5, 12, 4 * 9 * 7)) < 0.3).astype(np.int64)
    x[0, :3] = 1  # every input spikes: the sums reach the bound
    bound = hw.conv_bound(torch.as_tensor(g.projections[0].weight), 1)
    spec = sim.prepare(g).network()
    assert (spec.dense_convs[0] is not None) == (bound < 2**31)  # the fallback: int64 event segments
    assert spec.plain[0] == (bound < 2**23)
    # slices of one sample (batch > threads): messages and scan interleave over the batch
    monkeypatch.setattr(compiled.runner, "_PRE_SLICE_BYTES", 1)
    fast = _run(g, x)
    monkeypatch.setattr(compiled.runner, "_PRE_SLICE_BYTES", 1 << 40)
    whole = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_TABLE_INPUT_CONV", False)  # the dense int32 stage
    assert sim.prepare(g).network().table_convs[0] is None
    dense_stage = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_DENSE_INPUT_CONV", False)
    assert sim.prepare(g).network().dense_convs[0] is None
    events = _run(g, x)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    reference = _run(g, x)
    assert reference.spikes["c"].any() and not reference.spikes["c"].all()
    for other in (fast, whole, dense_stage, events):
        _assert_same(other, reference)
    if bound >= 2**31:  # sums beyond int32 reached Lava Conv's cast (INT32_MIN, then 0 after the wrap)
        assert reference.events is not None


@pytest.mark.parametrize("geometry, in_shape, out_ch, kernel", [
    (dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1), (1, 9, 7), 4, (3, 3)),  # 9 taps
    (dict(stride=(2, 3), padding=(0, 2), dilation=(2, 1), groups=2), (2, 9, 7), 4, (2, 2)),
    (dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=1), (2, 8, 8), 3, (2, 2))])  # 2 channels
@pytest.mark.parametrize("big", [1 << 20, 1 << 28])  # sums in int32 / beyond 2**31: the table takes both
def test_pattern_table_conv_equals_the_event_segments_and_the_tensor_path(monkeypatch, geometry, in_shape,
                                                                          out_ch, kernel, big):
    rng = np.random.default_rng(big % 89 + in_shape[0] + kernel[0])
    g = _conv_graph(rng, geometry, in_shape, out_ch, kernel, big)
    w = np.array(g.projections[0].weight)
    w[:, :, 0, -1] = 0  # a tap that no output channel uses: left out of the patterns
    g = Graph(g.inputs, g.populations, (dataclasses.replace(g.projections[0], weight=w),), g.outputs).validate()
    table, offsets, taps, _ = sim.prepare(g).network().table_convs[0]
    cg = w.shape[1]
    assert taps.max() == cg * (kernel[0] * kernel[1] - 1) and table.shape == (out_ch, 1 << int(taps.max()))
    x = (rng.random((5, 12, int(np.prod(in_shape)))) < 0.3).astype(np.int64)
    x[0, :3] = 1  # every input spikes: the sums reach the bound
    monkeypatch.setattr(compiled.runner, "_PRE_SLICE_BYTES", 1)  # slices of one sample
    fast = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_TABLE_INPUT_CONV", False)
    monkeypatch.setattr(compiled.input_stages, "_DENSE_INPUT_CONV", False)  # the event segments
    events = _run(g, x)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    reference = _run(g, x)
    assert reference.spikes["c"].any() and not reference.spikes["c"].all()
    for other in (fast, events):
        _assert_same(other, reference)


def test_conv_message_table_leaves_wide_patches_to_the_other_stages(monkeypatch):
    kernel = np.ones((2, 3, 2, 2), dtype=np.int64)  # 12 taps per group
    geometry = (kernel, (3, 4, 4), (1, 1), (0, 0), (1, 1), 1)
    assert compiled.conv_message_table(geometry, 0, False, True, np.int32) is None
    monkeypatch.setattr(compiled.input_stages, "_TABLE_BITS", 12)
    table, offsets, taps, dims = compiled.conv_message_table(geometry, 0, False, True, np.int32)
    assert table.shape == (2, 4096) and taps.tolist() == [12] and table[0, -1] == 12 and table[1, 5] == 2
    assert offsets[0, :5].tolist() == [0, 1, 4, 5, 16]  # (channel, ky, kx) in the 4x4 image


@pytest.mark.parametrize("pool, in_shape", [
    (dict(kernel_size=2), (3, 7, 9)), (dict(kernel_size=3, stride=2, padding=1), (3, 7, 9)),
    (dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)), (3, 7, 9)),
    # windows that tile the image exactly: the byte-lane passes (kw = 2, and the general kw)
    (dict(kernel_size=2), (3, 8, 10)), (dict(kernel_size=(2, 3)), (2, 6, 9)),
    # ... and the uint64-word pass (kw = 2 on rows of whole words; kh = 2, 3 and 1)
    (dict(kernel_size=2), (3, 8, 16)), (dict(kernel_size=(3, 2)), (2, 9, 8)), (dict(kernel_size=(1, 2)), (1, 3, 24))])
# sums below 2**23 (plain messages) / in int32 (dense pooling) / beyond (events)
@pytest.mark.parametrize("weight", [90, (1 << 21) + 6, (1 << 29) + 12345])
def test_dense_pooling_equals_the_event_segments_and_the_tensor_path(monkeypatch, pool, in_shape, weight):
    rng = np.random.default_rng(abs(weight) % 89)
    p = sum_pool2d("pool", "x", "q", in_shape, weight=weight, **pool)
    n = int(np.prod(p.out_shape))
    lif = LoihiLIF(int(rng.integers(0, 4096)), int(rng.integers(0, 4096)), 300, rng.integers(-50, 50, n),
                   np.zeros(n, dtype=np.int64))
    g = Graph((Input("x", int(np.prod(in_shape))),), (Population("q", n, lif),), (p,), ("q",)).validate()
    x = (rng.random((5, 12, int(np.prod(in_shape)))) < 0.4).astype(np.int64)
    x[0, :3] = 1  # every input spikes: the sums reach the bound
    spec = sim.prepare(g).network()
    window = weight * int(np.prod(p.weight.shape[2:]))  # the largest sum
    assert (spec.dense_pools[0] is not None) == (window < 1 << 31) and spec.dense_convs[0] is None
    assert spec.plain[0] == (window < 1 << 23)
    monkeypatch.setattr(compiled.runner, "_PRE_SLICE_BYTES", 1)  # slices of one sample
    fast = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_POOL_WORDS", False)  # the byte pass of tiled windows
    bytes_pass = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_DENSE_INPUT_POOL", False)  # the dense conv stage
    conv_stage = _run(g, x)
    monkeypatch.setattr(compiled.input_stages, "_DENSE_INPUT_CONV", False)  # the event segments
    events = _run(g, x)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    reference = _run(g, x)
    assert reference.spikes["q"].any() and not reference.spikes["q"].all()
    for other in (fast, bytes_pass, conv_stage, events):
        _assert_same(other, reference)


@pytest.mark.parametrize("kh", [1, 2, 3])
def test_word_pooling_pass_equals_the_byte_pass_at_batch_one_and_on_every_count(monkeypatch, kh):
    """The uint64-word pass of a tiled 2-wide sum pooling against the byte pass: batch 1 and a batch,
    the step blocks of a single sample, windows with every count from 0 to 2 * kh (all inputs on,
    alternate columns, random), so each 8-bit and 16-bit lane reaches its largest value."""
    rng = np.random.default_rng(kh)
    in_shape = (3, 4 * kh, 16)
    p = sum_pool2d("pool", "x", "q", in_shape, kernel_size=(kh, 2), weight=int(rng.integers(1, 120)))
    n = int(np.prod(p.out_shape))
    lif = LoihiLIF(200, 300, 40, rng.integers(-50, 50, n), np.zeros(n, dtype=np.int64))
    g = Graph((Input("x", int(np.prod(in_shape))),), (Population("q", n, lif),), (p,), ("q",)).validate()
    x = (rng.random((4, 9, int(np.prod(in_shape)))) < 0.5).astype(np.int64)
    x[0, 0] = 1
    x[0, 1] = 0
    x[0, 2] = np.tile([1, 0], x.shape[2] // 2)
    assert sim.prepare(g).network().dense_pools[0] is not None
    for batch in (1, 4):
        words = _run(g, x[:batch])
        monkeypatch.setattr(compiled.input_stages, "_POOL_WORDS", False)
        byte_pass = _run(g, x[:batch])
        monkeypatch.setattr(compiled.input_stages, "_POOL_WORDS", True)
        assert byte_pass.spikes["q"].any()
        _assert_same(words, byte_pass)


def test_dense_pool_weights_takes_only_sum_poolings():
    pool = sum_pool2d("pool", "x", "q", (2, 4, 4), 2, weight=7)
    geometry = (pool.weight, pool.in_shape, pool.stride, pool.padding, pool.dilation, pool.groups)
    weights, dims = compiled.dense_pool_weights(geometry)
    assert weights.tolist() == [7, 7] and dims.tolist() == [2, 4, 4, 0, 0, 2, 2, 2, 2, 2, 2]
    uneven = np.array(pool.weight)
    uneven[1, 0, 1, 1] = 6  # one channel's taps differ: a depthwise conv, not a pooling
    assert compiled.dense_pool_weights((uneven, *geometry[1:])) is None
    mixing = np.ones((2, 2, 2, 2), dtype=np.int64)  # every output reads both channels
    assert compiled.dense_pool_weights((mixing, (2, 4, 4), (2, 2), (0, 0), (1, 1), 1)) is None


@pytest.mark.parametrize("tap", [(1 << 21) - 2, 1 << 21])  # conv sums up to 2**23 - 8 (plain) / 2**23 (wraps)
def test_plain_messages_only_where_the_bound_keeps_the_conv_output_stage_the_identity(monkeypatch, tap):
    rng = np.random.default_rng(tap % 7)
    n = 2 * 4 * 4
    lif = LoihiLIF(0, 0, 1, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
    drive = LoihiDense("drive", "x", "a", np.eye(n, dtype=np.int64) * 254)  # a spikes where x did
    conv = LoihiConv2d("conv", "a", "c", np.full((3, 2, 2, 2), tap // 2, dtype=np.int64), (2, 4, 4), stride=(1, 1))
    m = int(np.prod(conv.out_shape))
    out = LoihiLIF(int(rng.integers(0, 4096)), int(rng.integers(0, 4096)), 1 << 16, rng.integers(-50, 50, m),
                   np.zeros(m, dtype=np.int64))
    g = Graph((Input("x", n),), (Population("a", n, lif), Population("c", m, out)), (drive, conv), ("c",)).validate()
    spec = sim.prepare(g).network()
    assert spec.plain.tolist() == [True, tap * 4 < 1 << 23]
    x = (rng.random((3, 10, n)) < 0.5).astype(np.int64)
    x[0, :4] = 1  # every source spikes: the conv's sums reach the bound
    fast = _run(g, x)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    _assert_same(fast, _run(g, x))


def test_plain_messages_bounds():
    def proj(bound, exp=0, conv=False, graded=False):
        return compiled.Projection(src_kind=1, src_off=0, src_n=1, dst_pop=0, weight_exp=exp, graded=graded,
                                   delayed=False, conv=conv, lag=1, bound=bound)
    plain = compiled.plan.plain_messages
    assert plain(proj((1 << 31) - 1)) and not plain(proj(1 << 31))
    assert plain(proj((1 << 23) - 1, conv=True)) and not plain(proj(1 << 23, conv=True))
    assert plain(proj((1 << 28) - 1, exp=3)) and not plain(proj(1 << 28, exp=3))
    assert plain(proj((1 << 31) - 1, exp=-7)) and not plain(proj(5, graded=True))


@pytest.mark.parametrize("table_max, pool_weight, narrow", [
    (2**15 - 2, 2**13 - 1, True),  # the dense conv stage's bound 32766 (+1 for a negative shift): int16 too
    (2**15 - 1, 2**13 - 1, True),  # the largest conv message 32767, the largest pooled 4 * 8191 = 32764
    (2**15, 2**13 - 1, False),  # one conv message beyond int16: the whole buffer keeps the accumulator's type
    (2**15 - 1, 2**13, False)])  # the pooling's bound 32768 (+1 for a negative shift) beyond int16
@pytest.mark.parametrize("table", [True, False])  # the conv on the pattern-table stage / the dense int32 stage
def test_int16_messages_equal_the_accumulator_type_at_the_edge(monkeypatch, table_max, pool_weight, narrow, table):
    """The ready messages in int16 (plan.int16_messages) against the buffer of the accumulator's type and
    the tensor path: a conv whose largest message is at int16's edge or one beyond (its bound, for the dense
    stage), and a sum pooling whose bound is; inputs all on for a few steps so the messages reach those
    values; batch 1 and 5, slices of one sample and the whole batch, and a population read out from the conv."""
    monkeypatch.setattr(compiled.input_stages, "_TABLE_INPUT_CONV", table)
    if not table:  # the bound rule: one below the table's exact rule at the edge
        narrow = narrow and table_max + 1 < 2**15
    rng = np.random.default_rng(table_max % 97 + pool_weight)
    kernel = np.zeros((2, 1, 3, 3), dtype=np.int64)
    kernel[0, 0] = table_max // 9
    kernel[0, 0, 2, 2] += table_max - kernel[0].sum()  # the full pattern's sum is table_max
    kernel[1, 0] = rng.integers(-3000, 3000, (3, 3))
    conv = LoihiConv2d("conv", "x", "c", kernel, (1, 6, 6), padding=(1, 1))
    pool = sum_pool2d("pool", "x", "q", (1, 6, 6), 2, weight=pool_weight)
    n_c, n_q = int(np.prod(conv.out_shape)), int(np.prod(pool.out_shape))
    out = LoihiDense("o", "c", "r", rng.integers(-256, 256, (4, n_c)), 0)

    def lif(n, vth):
        return LoihiLIF(int(rng.integers(0, 4096)), int(rng.integers(0, 4096)), vth, rng.integers(-50, 50, n),
                        np.zeros(n, dtype=np.int64))

    pops = (Population("c", n_c, lif(n_c, 400)), Population("q", n_q, lif(n_q, 300)), Population("r", 4, lif(4, 100)))
    g = Graph((Input("x", 36),), pops, (conv, pool, out), ("r", "q")).validate()
    spec = sim.prepare(g).network()
    assert spec.dense_pools[1] is not None and spec.plain[:2].all()
    assert (spec.table_convs[0] is not None) == table and spec.dense_convs[0] is not None  # the table goes first
    if table:
        assert int(spec.table_convs[0][0].max()) == table_max
    assert spec.message_dtype == (np.int16 if narrow else np.int32)
    x = (rng.random((5, 16, 36)) < 0.4).astype(np.int64)
    x[0, :3] = 1  # every input on: the conv's and the pooling's largest messages
    for batch in (1, 5):
        for slice_bytes in (1, 1 << 40):
            monkeypatch.setattr(compiled.runner, "_PRE_SLICE_BYTES", slice_bytes)
            fast = _run(g, x[:batch])
            with monkeypatch.context() as m:
                m.setattr(compiled.input_stages, "_NARROW_MESSAGES", False)
                assert sim.prepare(g).network().pre_dtype is None
                wide = _run(g, x[:batch])
                m.setattr(simulator, "_use_kernel", lambda dev: False)
                reference = _run(g, x[:batch])
            assert all(reference.spikes[k].any() and not reference.spikes[k].all() for k in ("c", "q"))
            _assert_same(fast, reference)
            _assert_same(wide, reference)
