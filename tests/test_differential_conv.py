"""Differential tests for convolution, sum pooling and sparse projections: simulator vs Lava, every spike,
u and v of every population at every step.

Random ``LoihiConv2d`` geometries (stride 1-2, padding 0-2, dilation 1-2, groups 1 / 2 / C, kernels 1-3,
small images), binary and graded inputs, weights off the 8-bit grid and with a non-zero weight_exp (Lava's
Conv ignores both, and so does the simulator), conv after conv, sum pooling, sparse projections (Lava's
``Sparse``) with every sign mode and weight_exp, and a cycle through a conv (the simulator's step-wise
schedule), plus hand-made 24-bit wrap cases. Several networks share one Lava run (``merge``), and the
number of runs is kept small: Lava starts OS processes for every process of a run.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("lava")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_differential import assert_same, merge, random_inputs, report_count  # noqa: E402

from snn2hw.backends import lava as lava_backend  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.hw import loihi2 as hw  # noqa: E402
from snn2hw.ir import (  # noqa: E402
    Graph,
    Input,
    LoihiConv2d,
    LoihiDense,
    LoihiLIF,
    Population,
    conv_output_hw,
    sum_pool2d,
)

pytestmark = pytest.mark.lava

COMPARED = {"neuron_steps": 0, "mismatches": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_count(request):
    yield
    report_count(request, COMPARED)


def compare(graphs: list[Graph], inputs: list[dict[str, np.ndarray]]) -> int:
    """All ``graphs`` in ONE Lava run, each alone in the simulator; every population compared."""
    merged = merge(graphs)
    steps = max(arr.shape[1] for xs in inputs for arr in xs.values())
    batch = max(arr.shape[0] for xs in inputs for arr in xs.values())
    inputs = [{n: np.pad(a, ((0, batch - a.shape[0]), (0, steps - a.shape[1]), (0, 0))) for n, a in xs.items()}
              for xs in inputs]
    x = {f"g{k}.{name}": arr for k, xs in enumerate(inputs) for name, arr in xs.items()}
    every = [p.name for p in merged.populations]
    lava_res = lava_backend.run(merged, x, record=every, record_state=every)
    count = 0
    for k, (g, xs) in enumerate(zip(graphs, inputs)):
        names = [p.name for p in g.populations]
        count += assert_same(sim.run(g, xs, record=names, record_state=names), lava_res, names,
                             lava_prefix=f"g{k}.", counter=COMPARED)
    return count


def _pop(name, size, du=0, dv=0, vth=100, bias=0, rng=None):
    mant = np.full(size, bias, dtype=np.int64) if rng is None else rng.integers(-bias, bias + 1, size)
    return Population(name, size, LoihiLIF(du, dv, vth, mant, np.zeros(size, dtype=np.int64)))


def _bound(weight, max_input):
    w = np.abs(np.asarray(weight, dtype=np.int64))
    return int(w.reshape(w.shape[0], -1).sum(axis=1).max()) * max_input


# --- random conv networks -----------------------------------------------------------------------------
@st.composite
def conv_geometry(draw, in_shape):
    """Stride, padding, dilation, kernel, groups and out channels that fit ``in_shape`` (C, H, W)."""
    c, h, w = in_shape
    while True:
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        if min(conv_output_hw((h, w), k, stride, padding, dilation)) >= 1:
            break
    groups = draw(st.sampled_from(sorted({1, c} | ({2} if c % 2 == 0 else set()))))
    out_ch = groups * draw(st.integers(1, 3 if groups == 1 else 2))
    return k, stride, padding, dilation, groups, out_ch


@st.composite
def conv_networks(draw):
    """Input image -> conv -> (conv | pool | sparse | dense) [-> sparse read-out], random LIF parameters."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    nmb = draw(st.sampled_from([0, 0, 1, 8, 16]))
    inp = Input("in", c * h * w, nmb)

    def neurons(name, size):
        du = draw(st.one_of(st.sampled_from([-1, 0, 4095]), st.integers(hw.DU_MIN, hw.DU_MAX)))
        dv = draw(st.one_of(st.sampled_from([0, 4095]), st.integers(hw.DV_MIN, hw.DV_MAX)))
        vth = draw(st.one_of(st.integers(0, 300), st.integers(hw.VTH_MIN, hw.VTH_MAX)))
        mant = rng.integers(-20, 21, size) if draw(st.booleans()) else np.zeros(size, dtype=np.int64)
        return Population(name, size, LoihiLIF(du, dv, vth, mant, rng.integers(0, 3, size)))

    def conv(name, src, in_shape, graded_bits):
        k, stride, padding, dilation, groups, out_ch = draw(conv_geometry(in_shape))
        lim = draw(st.sampled_from([3, 64, 256]))
        weight = rng.integers(-lim, lim, (out_ch, in_shape[0] // groups, *k))
        weight = np.where(rng.random(weight.shape) < draw(st.sampled_from([1.0, 0.5])), weight, 0)
        # keep every possible sum inside int32 (the design rule): shrink the payload range if needed
        max_input = 1 << max(graded_bits - 1, 0) if graded_bits else 1
        while graded_bits and _bound(weight, max_input) >= hw.CONV_ACC_LIMIT:
            weight = weight // 2
        return LoihiConv2d(name, src, "", weight, in_shape, None, stride, padding, dilation, groups,
                           weight_exp=draw(st.sampled_from([0, 0, 3, -2])),  # Lava ignores it
                           num_weight_bits=draw(st.sampled_from([8, 4])),  # ... and this
                           sign_mode=1, num_message_bits=graded_bits)

    c1 = conv("c1", "in", (c, h, w), nmb)
    p1 = neurons("p1", int(np.prod(c1.out_shape)))
    c1 = dataclasses.replace(c1, dst="p1")
    pops, projs = [p1], [c1]
    second = draw(st.sampled_from(["conv", "pool", "sparse", "dense"]))
    if second == "conv":
        c2 = conv("c2", "p1", c1.out_shape, draw(st.sampled_from([0, 1])))
        p2 = neurons("p2", int(np.prod(c2.out_shape)))
        projs.append(dataclasses.replace(c2, dst="p2"))
    elif second == "pool":
        kernel = draw(st.integers(1, 2))
        kernel = min(kernel, c1.out_shape[1], c1.out_shape[2])
        pool = sum_pool2d("pool", "p1", "p2", c1.out_shape, kernel, weight=int(rng.integers(1, 200)))
        p2 = neurons("p2", int(np.prod(pool.out_shape)))
        projs.append(pool)
    else:
        n2 = draw(st.integers(1, 6))
        wd = rng.integers(-300, 301, (n2, p1.size))
        wd = np.where(rng.random(wd.shape) < 0.3, wd, 0)
        p2 = neurons("p2", n2)
        projs.append(LoihiDense("d2", "p1", "p2", wd, weight_exp=draw(st.integers(-3, 3)),
                                num_weight_bits=draw(st.integers(1, 8)),
                                sign_mode=int(draw(st.sampled_from(list(hw.SignMode)))),
                                sparse=second == "sparse"))
    pops.append(p2)
    if draw(st.booleans()):  # a sparse read-out, graded from the input (fan-in / skip connection)
        n3 = draw(st.integers(1, 4))
        pops.append(neurons("p3", n3))
        ws = rng.integers(-256, 256, (n3, p2.size))
        projs.append(LoihiDense("s3", "p2", "p3", np.where(rng.random(ws.shape) < 0.4, ws, 0), sparse=True))
        wsk = rng.integers(-256, 256, (n3, inp.size))
        projs.append(LoihiDense("skip", "in", "p3", np.where(rng.random(wsk.shape) < 0.2, wsk, 0), sparse=True,
                                num_message_bits=nmb, weight_exp=-4 if nmb else 0))
    return Graph((inp,), tuple(pops), tuple(projs), (pops[-1].name,)).validate()


def conv_inputs(graph: Graph, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    return random_inputs(graph, batch, steps, seed, densities=(0.2, 0.5, 0.9))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(conv_networks(), min_size=4, max_size=4), st.integers(4, 16), st.integers(1, 2),
       st.integers(0, 2**31))
def test_random_conv_networks_sim_equals_lava(graphs, steps, batch, seed):
    xs = [conv_inputs(g, batch, steps, seed + k) for k, g in enumerate(graphs)]
    assert compare(graphs, xs) > 0


# --- hand-made cases ----------------------------------------------------------------------------------
def hand_cases():
    rng = np.random.default_rng(7)
    cases = {}
    # 24-bit wrap: 20-bit graded payloads into 255-weights over 9 taps reach ~1.2e9: far above 2**23, inside int32
    w = np.full((1, 1, 3, 3), 255)
    g = Graph((Input("in", 16, 20),), (_pop("wrap", 4, du=4095, dv=4095, vth=hw.VTH_MAX),),
              (LoihiConv2d("c", "in", "wrap", w, (1, 4, 4), num_message_bits=20),), ("wrap",)).validate()
    assert _bound(w, 1 << 19) < hw.CONV_ACC_LIMIT
    vals = np.array([(1 << 19) - 1, -(1 << 19), 1 << 18, 12345, -(1 << 17), 3, 0, (1 << 19) - 1])
    x = rng.choice(vals, (1, 8, 16))
    cases["wrap24_graded"] = (g, {"in": x})
    # the same input through an asymmetric kernel with stride/padding/dilation and mixed signs near the wrap
    w2 = np.array([[[[255, -256, 7], [0, 254, -1]]]])
    g = Graph((Input("in", 30, 20),), (_pop("wrap2", 21, du=-1, dv=0, vth=hw.VTH_MAX),),
              (LoihiConv2d("c", "in", "wrap2", w2, (1, 5, 6), None, (1, 2), (2, 1), (2, 1),
                           num_message_bits=20),), ("wrap2",)).validate()
    cases["wrap24_asym"] = (g, {"in": rng.choice(vals, (1, 6, 30))})
    # depthwise (groups = C) binary conv followed by sum pooling and a conv after it
    c1 = LoihiConv2d("c1", "in", "a", rng.integers(-60, 61, (3, 1, 3, 3)), (3, 6, 6), None, 1, 1, 1, 3)
    pool = sum_pool2d("pool", "a", "b", c1.out_shape, 2, weight=90)
    c3 = LoihiConv2d("c3", "b", "c", rng.integers(-100, 101, (2, 3, 2, 2)), pool.out_shape)
    g = Graph((Input("in", 108),), (_pop("a", 108, vth=40), _pop("b", 27, vth=60), _pop("c", 8, vth=30)),
              (c1, pool, c3), ("c",)).validate()
    cases["depthwise_pool_conv"] = (g, {"in": (rng.random((1, 10, 108)) < 0.5).astype(np.int64)})
    # a binary input's tiled 2-wide sum pooling on rows of 16 pixels (the input stage's uint64-word pass),
    # kh = 2 and kh = 3
    for kh in (2, 3):
        pool = sum_pool2d("pool", "in", "q", (2, 3 * kh, 16), (kh, 2), weight=int(rng.integers(20, 120)))
        g = Graph((Input("in", 96 * kh),), (_pop("q", 48, vth=40),), (pool,), ("q",)).validate()
        cases[f"input_pool_words_{kh}"] = (g, {"in": (rng.random((1, 10, 96 * kh)) < 0.4).astype(np.int64)})
    # a cycle through a conv (step-wise schedule): conv forward, sparse back
    c = LoihiConv2d("fw", "a", "b", rng.integers(-120, 121, (2, 2, 2, 2)), (2, 3, 3))
    back = LoihiDense("back", "b", "a", np.where(rng.random((18, 8)) < 0.3, rng.integers(-200, 201, (18, 8)), 0),
                      sparse=True)
    drive = LoihiDense("drive", "in", "a", rng.integers(0, 200, (18, 5)))
    g = Graph((Input("in", 5),), (_pop("a", 18, vth=50, bias=3), _pop("b", 8, vth=20)), (drive, c, back),
              ("b",)).validate()
    assert g.feedforward_order() is None
    cases["cycle_through_conv"] = (g, {"in": (rng.random((1, 12, 5)) < 0.5).astype(np.int64)})
    # sparse, graded, int32 wrap of the product sum (Lava's csr dot in int32), weights beyond the clip range
    ws = np.array([[255, 255, 255, 0], [0, -256, 300, -300], [0, 0, 0, 0]])
    g = Graph((Input("in", 4, 24),), (_pop("sp", 3, du=4095, dv=4095, vth=hw.VTH_MAX),),
              (LoihiDense("s", "in", "sp", ws, weight_exp=7, num_message_bits=24, sparse=True),), ("sp",)).validate()
    x = np.array([[[2**23 - 1] * 4, [-(2**23)] * 4, [2**23 - 1, 0, 5, -(2**23)]]])
    cases["sparse_int32"] = (g, {"in": x})
    # sparse binary, inhibitory / excitatory sign modes and few weight bits
    g = Graph((Input("in", 6),), (_pop("si", 4, vth=10), _pop("se", 4, vth=10)),
              (LoihiDense("i", "in", "si", -np.abs(rng.integers(0, 300, (4, 6))), sign_mode=3, num_weight_bits=3,
                          sparse=True),
               LoihiDense("e", "in", "se", rng.integers(-50, 300, (4, 6)), sign_mode=2, weight_exp=-1, sparse=True)),
              ("se",)).validate()
    cases["sparse_sign_modes"] = (g, {"in": (rng.random((1, 6, 6)) < 0.6).astype(np.int64)})
    return cases


def test_hand_made_conv_pool_sparse_cases_sim_equals_lava():
    cases = hand_cases()
    assert compare([g for g, _ in cases.values()], [x for _, x in cases.values()]) > 0
    # the 24-bit wrap really happened: the sum exceeds 2**23 somewhere, and what arrives is wrapped
    g, x = cases["wrap24_graded"]
    import torch

    img = torch.as_tensor(x["in"][0]).reshape(-1, 1, 4, 4)
    acc = hw.conv_accumulate_exact(img, torch.as_tensor(g.projections[0].weight), (1, 1), (0, 0), (1, 1), 1, 1 << 19)
    assert int(acc.abs().max()) > 2**23
    assert not torch.equal(hw.conv_output(acc), acc)
