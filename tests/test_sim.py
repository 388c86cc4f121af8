"""The simulator on its own: hand-checked timing, schedule equivalence, overflow accounting."""
import dataclasses

import numpy as np
import pytest
import torch

from snn2hw.backends import sim
from snn2hw.backends.base import BackendError
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, LoihiDense

from conftest import int_graph


def test_hop_delay_timing():
    # one input spike at step 0 with a weight that fires each layer at once: layer k fires at step k
    g = int_graph(np.array([[200]]), np.array([[200]]), du=4095, dv=4095, vth=1)
    x = np.zeros((1, 6, 1), dtype=np.int64)
    x[0, 0, 0] = 1
    res = sim.run(g, x, record=["h"])
    assert np.flatnonzero(res.spikes["h"][0, :, 0]).tolist() == [1]
    assert np.flatnonzero(res.spikes["o"][0, :, 0]).tolist() == [2]


def test_state_trace_by_hand():
    g = int_graph(np.array([[4]]), du=2047, dv=0, vth=1000)
    x = np.array([[[1], [0], [0]]])
    res = sim.run(g, x, record_state=["h"])
    # step0: nothing arrives; step1: u = 4<<6 = 256, v = 256; step2: u = 128, v = 384
    assert res.u["h"][0, :, 0].tolist() == [0, 256, 128]
    assert res.v["h"][0, :, 0].tolist() == [0, 256, 384]


def _with_cycle(g: Graph) -> Graph:
    # add a zero-weight recurrent projection: forces the step-by-step schedule without changing results
    n = g.population("h").size
    rec = LoihiDense("rec", "h", "h", np.zeros((n, n), dtype=np.int64))
    return dataclasses.replace(g, projections=g.projections + (rec,))


def test_stepwise_schedule_equals_feedforward_schedule():
    rng = np.random.default_rng(1)
    g = int_graph(rng.integers(-256, 256, (7, 5)), rng.integers(-256, 256, (4, 7)), du=300, dv=200, vth=60, bias=3)
    x = (rng.random((3, 30, 5)) < 0.4).astype(np.int64)
    a = sim.run(g, x, record=["h"], record_state=["h", "o"])
    b = sim.run(_with_cycle(g), x, record=["h"], record_state=["h", "o"])
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])
    for k in a.u:
        np.testing.assert_array_equal(a.u[k], b.u[k])
        np.testing.assert_array_equal(a.v[k], b.v[k])


def test_batch_equals_single_samples():
    rng = np.random.default_rng(2)
    g = int_graph(rng.integers(-256, 256, (6, 4)), rng.integers(-256, 256, (3, 6)), du=100, dv=50, vth=40)
    x = (rng.random((4, 20, 4)) < 0.5).astype(np.int64)
    batch = sim.run(g, x).spikes["o"]
    for i in range(4):
        np.testing.assert_array_equal(batch[i], sim.run(g, x[i]).spikes["o"][0])


def test_saturation_counted_and_strict_raises():
    g = int_graph(np.array([[254]]), du=-1, dv=0, vth=hw.VTH_MAX, weight_exp=7)
    x = np.ones((1, 50, 1), dtype=np.int64)
    res = sim.run(g, x)
    assert res.events["h"]["v_saturation"] > 0 or res.events["h"]["u_wrap"] > 0
    with pytest.raises(sim.ArithmeticLimitError, match="population 'h', neuron 0"):
        sim.run(g, x, strict=True)


def test_float64_and_int64_accumulation_paths_agree():
    rng = np.random.default_rng(3)
    w = torch.as_tensor(rng.integers(-256, 256, (5, 9)))
    s = torch.as_tensor((rng.random((2, 4, 9)) < 0.5).astype(np.int64))
    from snn2hw.backends.sim.simulator import _accumulate, _Synapse
    exact = s @ w.t()
    for dtype in (torch.float32, torch.float64, torch.int64):
        syn = _Synapse(None, w.t().contiguous().to(dtype), False)
        assert torch.equal(_accumulate(syn, s), exact)


def test_bad_inputs_are_rejected():
    g = int_graph(np.array([[1, 2]]))
    with pytest.raises(BackendError, match="expected shape"):
        sim.run(g, np.zeros((1, 3, 5)))
    with pytest.raises(BackendError, match="binary"):
        sim.run(g, np.full((1, 3, 2), 2))
