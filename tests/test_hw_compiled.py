"""The compiled fast path (snn2hw.hw.compiled) against the tensor formulas it is compiled from.

Both paths run loihi2.py's formula code; these tests make sure that the primitives, the kernel's
scheduling (time order, hop delays, several projections, state continuation, event counting) and the
simulator's choice of path never change a single bit. Inputs are drawn over the full integer ranges the
hardware can see and concentrate on the wrap and saturation edges.
"""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snn2hw.backends import sim
from snn2hw.backends.sim import simulator
from snn2hw.hw import compiled
from snn2hw.hw import loihi2 as hw
from snn2hw.ir import Graph, Input, LoihiConv2d, LoihiDense, LoihiLIF, Population

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed")

H = hw.STATE_HALF
I32 = 1 << 31


def edgy(lo: int, hi: int, edges=()) -> st.SearchStrategy[int]:
    """Integers in [lo, hi], often exactly at or next to a width limit."""
    points = {lo, hi, 0, 1, -1}
    for e in (H, I32, 1 << 24, hw.V_MAX, *edges):
        points.update({e - 1, e, e + 1, -e - 1, -e, -e + 1})
    points = sorted(p for p in points if lo <= p <= hi)
    return st.one_of(st.sampled_from(points), st.integers(lo, hi))


U_STATE = edgy(-hw.U_MAX, hw.U_MAX)  # u and v as Lava can hold them (loihi2's domain note)
V_STATE = edgy(-hw.V_MAX, hw.V_MAX)
ACT = edgy(-I32, I32 - 1)  # int32 channel payloads
DU = st.integers(hw.DU_MIN, hw.DU_MAX)
DV = st.integers(hw.DV_MIN, hw.DV_MAX)
VTH = st.integers(hw.VTH_MIN, hw.VTH_MAX).map(hw.effective_threshold)
BIAS = edgy(-I32, I32 - 1)
F = compiled.formulas() if compiled.available() else {}


def T(x):
    return torch.tensor(x, dtype=torch.int64)


def same(torch_out, compiled_out):
    if isinstance(torch_out, tuple):
        assert len(torch_out) == len(compiled_out)
        for a, b in zip(torch_out, compiled_out):
            same(a, b)
        return
    assert int(torch_out) == int(compiled_out), (torch_out, compiled_out)


# --- each formula, compiled vs tensor -----------------------------------------------------------------
@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-(1 << 62), (1 << 62) - 1))
def test_wrap_int32(x):
    same(hw.wrap_int32(T(x)), F["wrap_int32"](x))
    assert int(hw.wrap_int32(T(x))) == (x + I32) % (1 << 32) - I32  # the mask is the floor modulo


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-(1 << 53), 1 << 53), st.integers(hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX))
def test_shift_by(x, e):
    same(hw.shift_by(T(x), e), F["shift_by"](x, e))
    same(hw.shift(T(x), T([e]))[0], F["shift_by"](x, e))  # tensor exponents agree too


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-(1 << 53), 1 << 53), st.integers(hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX), st.booleans(), st.booleans())
def test_synaptic_output(acc, e, graded, delayed):
    same(hw.synaptic_output(T(acc), e, graded, delayed), F["synaptic_output"](acc, e, graded, delayed))


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-I32, I32 - 1, (256, 255)), st.sampled_from(list(hw.SignMode)), st.integers(1, hw.WEIGHT_BITS_MAX))
def test_prepared_weight(w, mode, bits):
    args = hw.weight_preparation(mode, bits)
    same(hw.prepared_weight(T(w), *args), F["prepared_weight"](w, *args))


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**32 - 1), st.sampled_from(list(hw.SignMode)), st.integers(1, hw.WEIGHT_BITS_MAX),
       st.sampled_from([3, 300, I32 - 1]))
def test_prepare_weights_matrix(seed, mode, bits, scale):
    w = np.random.default_rng(seed).integers(-scale, scale + 1, (13, 70))
    ref = hw.prepare_weights(torch.as_tensor(w), mode, bits)
    out, bound = compiled.prepare_weights(w, int(mode), bits)
    assert out.dtype == torch.float32 and torch.equal(out.to(torch.int64), ref)
    assert bound == int(ref.abs().sum(dim=1).max())


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(ACT, ACT)
def test_add_messages(a, b):
    same(hw.add_messages(T(a), T(b)), F["add_messages"](a, b))


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-hw.U_MAX, hw.U_MAX), st.integers(0, hw.DECAY_UNITY))
def test_decay(x, keep):
    same(hw.decay(T(x), keep), F["decay"](x, keep))


@settings(deadline=None)  # the first call of each compiled formula compiles it
@given(edgy(-I32, I32 - 1))  # wrap_u24_once's domain: the int32 words u_update passes
def test_wraps_and_saturation(x):
    same(hw.wrap_u24_once(T(x)), F["wrap_u24_once"](x))
    same(hw.saturate_v24(T(x)), F["saturate_v24"](x))


@settings(deadline=None)
@given(edgy(-(1 << 40), 1 << 40, (1 << 23, 1 << 31)))
def test_conv_output(x):
    same(hw.wrap_int24(T(x)), F["wrap_int24"](x))
    same(hw.conv_output(T(x)), F["conv_output"](x))


@settings(max_examples=400, deadline=None)
@given(U_STATE, V_STATE, ACT, DU, DV, VTH, BIAS)
def test_lif_step(u, v, a, du, dv, vth, bias):
    step = hw.lif_step(T(u), T(v), T(a), du, dv, vth, T(bias))
    flags = hw.lif_step_flags(T(u), T(v), T(a), du, dv, T(bias))
    same(step, F["lif_step"](u, v, a, du, dv, vth, bias))
    same(flags, F["lif_step_flags"](u, v, a, du, dv, bias))
    # the kernel's single evaluation is exactly the two
    same(step + flags, hw.lif_step_counted(T(u), T(v), T(a), du, dv, vth, T(bias)))
    same(step + flags, F["lif_step_counted"](u, v, a, du, dv, vth, bias))


def test_lif_step_on_every_edge_combination():
    edges = [0, 1, -1, H - 1, H, H + 1, -H - 1, -H, -H + 1, hw.V_MAX, -hw.V_MAX, I32 - 1, -I32]
    u, v, a = (torch.tensor(c, dtype=torch.int64).reshape(-1) for c in np.meshgrid(edges, edges, edges))
    u = u.clamp(-hw.U_MAX, hw.U_MAX)  # the formulas' domain (loihi2's note): the states Lava can hold
    v = v.clamp(-hw.V_MAX, hw.V_MAX)
    for du, dv in [(-1, 0), (0, 4095), (4095, 0), (2047, 1024)]:
        for vth in (0, hw.effective_threshold(hw.VTH_MAX)):
            ref = hw.lif_step(u, v, a, du, dv, vth, torch.zeros_like(u))
            flags = hw.lif_step_flags(u, v, a, du, dv, torch.zeros_like(u))
            for i in range(u.numel()):
                args = int(u[i]), int(v[i]), int(a[i])
                same(tuple(r[i] for r in ref), F["lif_step"](*args, du, dv, vth, 0))
                same(tuple(f[i] for f in flags), F["lif_step_flags"](*args, du, dv, 0))


# --- the scan kernels ---------------------------------------------------------------------------------
def _random_inputs(seed, batch, steps, size, scale):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-scale, scale + 1, (batch, steps, size), generator=g)
    bias = torch.randint(-(1 << 16), 1 << 16, (size,), generator=g)
    return a, bias


def _torch_counts(du, dv, bias):
    """An ``on_step`` for lif_scan_torch that adds up the tensor event flags, and the totals."""
    totals = torch.zeros(3, dtype=torch.int64)

    def on_step(t, u, v, a_t):
        totals.add_(torch.stack([f.sum() for f in hw.lif_step_flags(u, v, a_t, du, dv, bias)]))

    return totals, on_step


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 12), st.integers(1, 70),
       st.sampled_from([40, 4000, 1 << 20, I32 - 1]), DU, DV, st.integers(0, 5000), st.booleans())
def test_lif_scan_matches_tensor_loop(seed, batch, steps, size, scale, du, dv, vth, keep):
    a, bias = _random_inputs(seed, batch, steps, size, scale)
    vth_eff = hw.effective_threshold(vth)
    totals, on_step = _torch_counts(du, dv, bias)
    s_ref, u_ref, v_ref = hw.lif_scan_torch(a, du, dv, vth_eff, bias, keep, on_step=on_step)
    s, u_rec, v_rec, counts, _, _, fired = compiled.lif_scan(a, du, dv, vth_eff, bias, keep, count_events=True)
    assert fired == int(s.sum())
    assert torch.equal(s, s_ref)
    assert torch.equal(counts, totals)
    if keep:
        assert torch.equal(u_rec, u_ref) and torch.equal(v_rec, v_ref)
    # loihi2.lif_scan picks the kernel on the CPU and must be indistinguishable from the loop
    s2, u2, v2 = hw.lif_scan(a, du, dv, vth_eff, bias, keep)
    assert torch.equal(s2, s_ref) and (not keep or (torch.equal(u2, u_ref) and torch.equal(v2, v_ref)))


def test_lif_scan_continues_from_a_given_state():
    a, bias = _random_inputs(7, 3, 40, 130, 5000)
    s_ref, u_ref, v_ref = hw.lif_scan_torch(a, 300, 200, 3200, bias, keep_state=True)
    s1, _, _, _, u1, v1, _ = compiled.lif_scan(a[:, :17], 300, 200, 3200, bias)
    s2, u_rec, v_rec, _, u2, v2, _ = compiled.lif_scan(a[:, 17:], 300, 200, 3200, bias, True, u0=u1, v0=v1)
    assert torch.equal(torch.cat([s1, s2], 1), s_ref)
    assert torch.equal(u_rec, u_ref[:, 17:]) and torch.equal(v_rec, v_ref[:, 17:])
    assert torch.equal(u2, u_ref[:, -1]) and torch.equal(v2, v_ref[:, -1])


def test_parallel_split_over_neurons_matches(monkeypatch):
    # few samples and many neurons: the kernel splits neurons into blocks across threads
    monkeypatch.setattr(compiled.scan, "_MIN_JOB_UPDATES", 1)
    monkeypatch.setattr(compiled.runtime, "_threads", lambda: 2)
    a, bias = _random_inputs(3, 1, 30, 517, 1 << 20)
    totals, on_step = _torch_counts(100, 100, bias)
    s_ref, u_ref, v_ref = hw.lif_scan_torch(a, 100, 100, 640, bias, True, on_step=on_step)
    s, u, v, counts, _, _, fired = compiled.lif_scan(a, 100, 100, 640, bias, True, count_events=True)
    assert fired == int(s.sum())
    assert torch.equal(s, s_ref) and torch.equal(u, u_ref) and torch.equal(v, v_ref)
    assert torch.equal(counts, totals)


def _delayed(a, lag):
    out = torch.zeros_like(a)
    if lag < a.shape[1]:
        out[:, lag:] = a[:, : a.shape[1] - lag]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([torch.float32, torch.float64, torch.int64]),
       st.sampled_from([300, 1 << 26, 1 << 40]))
def test_layer_scan_matches_tensor_composition(seed, parts_n, batch, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    steps, size = 9, 37
    if dtype == torch.float32:
        scale = min(scale, 1 << 24)  # only exact integers are ever handed over in float32
    parts, ref_parts = [], []
    for _ in range(parts_n):
        acc = torch.randint(-scale, scale + 1, (batch, steps, size), generator=g)
        exp = int(torch.randint(hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX + 1, (), generator=g))
        graded, delayed = (bool(b) for b in torch.randint(0, 2, (2,), generator=g))
        lag = int(torch.randint(1, 5, (), generator=g))
        parts.append((acc.to(dtype), exp, graded, delayed, lag))
        ref_parts.append(_delayed(hw.synaptic_output(acc, exp, graded, delayed), lag))
    a_in = hw.sum_activations(ref_parts)
    bias = torch.randint(-1000, 1000, (size,), generator=g)
    totals, on_step = _torch_counts(50, 3000, bias)
    s_ref, u_ref, v_ref = hw.lif_scan_torch(a_in, 50, 3000, 6400, bias, True, on_step=on_step)
    s, u, v, counts, _, _, fired = compiled.layer_scan(parts, steps, 50, 3000, 6400, bias, True, count_events=True)
    assert fired == int(s.sum())
    assert torch.equal(s, s_ref) and torch.equal(u, u_ref) and torch.equal(v, v_ref)
    assert torch.equal(counts, totals)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 150), st.integers(1, 40), st.integers(1, 70),
       st.sampled_from([torch.float32, torch.float64, torch.int64]), st.sampled_from([torch.bool, torch.float32]),
       st.floats(0.0, 1.0))
def test_event_accumulation_is_exact(monkeypatch, seed, rows, n_in, n_out, dtype, sdtype, density):
    monkeypatch.setattr(compiled.products, "_MIN_COLS", 16)  # several column blocks even for small layers
    monkeypatch.setattr(compiled.products, "_TILE_BYTES", 1 << 10)
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-256, 256, (n_in, n_out), generator=g)
    s = torch.rand(rows, n_in, generator=g) < density
    ref = s.to(torch.int64) @ w
    out = compiled.accumulate_events(s.to(sdtype).reshape(1, rows, n_in), w.to(dtype))
    assert out.dtype == dtype and out.shape == (1, rows, n_out)
    assert torch.equal(out[0].to(torch.int64), ref)


# --- the simulator: kernel path vs tensor path ----------------------------------------------------------
def _net(seed, recurrent=False, delay=0, graded_input=False):
    rng = np.random.default_rng(seed)
    n_in, n_h, n_o = 9, 23, 5
    bits = 8 if graded_input else 0
    pops = (
        Population("h", n_h, LoihiLIF(int(rng.integers(-1, 4096)), int(rng.integers(0, 4096)),
                                      int(rng.integers(1, 300)), rng.integers(-50, 50, n_h), rng.integers(-2, 3, n_h))),
        Population("o", n_o, LoihiLIF(400, 400, 100, np.zeros(n_o, int), np.zeros(n_o, int))),
    )
    projs = [
        LoihiDense("fc1", "in", "h", rng.integers(-256, 256, (n_h, n_in)), int(rng.integers(-2, 5)),
                   num_message_bits=bits),
        LoihiDense("fc2", "h", "o", rng.integers(-256, 256, (n_o, n_h)), 3, delay=delay),
        LoihiDense("skip", "in", "o", rng.integers(-256, 256, (n_o, n_in)), 0),
    ]
    if recurrent:
        projs.append(LoihiDense("rec", "h", "h", rng.integers(-256, 256, (n_h, n_h)), 1))
    g = Graph((Input("in", n_in, bits),), pops, tuple(projs), ("o",)).validate()
    if graded_input:
        x = rng.integers(-128, 128, (3, 25, n_in))
    else:
        x = (rng.random((3, 25, n_in)) < 0.4).astype(np.int64)
    return g, x


@pytest.mark.parametrize("network_kernel", [True, False])
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("delay", [0, 2])
@pytest.mark.parametrize("graded_input", [False, True])
def test_simulator_paths_agree(monkeypatch, recurrent, delay, graded_input, network_kernel):
    if recurrent and not network_kernel:
        pytest.skip("graphs with cycles always take the network kernel")
    g, x = _net(11 + delay, recurrent, delay, graded_input)
    monkeypatch.setattr(simulator, "_FEEDFORWARD_NETWORK_KERNEL", network_kernel)
    fast = sim.run(g, x, record=["h"], record_state=["h", "o"])
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    slow = sim.run(g, x, record=["h"], record_state=["h", "o"])
    for k in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[k], slow.spikes[k])
    for k in slow.u:
        np.testing.assert_array_equal(fast.u[k], slow.u[k])
        np.testing.assert_array_equal(fast.v[k], slow.v[k])
    assert fast.events == slow.events


def test_recurrent_graphs_run_as_one_compiled_network(monkeypatch):
    g, x = _net(21, recurrent=True, delay=3)
    calls = []
    scan = compiled.network_scan
    monkeypatch.setattr(compiled, "network_scan", lambda *a, **k: calls.append(1) or scan(*a, **k))
    fast = sim.run(g, x, record=["h"], record_state=["o"])
    assert calls == [1]
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    slow = sim.run(g, x, record=["h"], record_state=["o"])
    for k in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[k], slow.spikes[k])
    np.testing.assert_array_equal(fast.u["o"], slow.u["o"])
    np.testing.assert_array_equal(fast.v["o"], slow.v["o"])
    assert fast.events == slow.events


def test_graded_delayed_projection_in_a_cycle_takes_the_stepwise_path(monkeypatch):
    # Lava's DelayDense wraps each graded product in int32: the network kernel leaves those graphs to
    # the step-wise schedule (compiled one step at a time), which must still equal the tensor path
    g, x = _net(22, recurrent=True, graded_input=True)
    projs = tuple(dataclasses.replace(p, delay=2) if p.name == "fc1" else p for p in g.projections)
    g = dataclasses.replace(g, projections=projs)
    x[:, :, 0] = -(1 << 7)
    monkeypatch.setattr(compiled, "network_scan", None)  # must not be called
    fast = sim.run(g, x, record=["h"], record_state=["h"])
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    slow = sim.run(g, x, record=["h"], record_state=["h"])
    for k in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[k], slow.spikes[k])
    np.testing.assert_array_equal(fast.u["h"], slow.u["h"])
    assert fast.events == slow.events


@pytest.mark.parametrize("recurrent", [False, True])
def test_simulator_paths_agree_with_convolutions(monkeypatch, recurrent):
    rng = np.random.default_rng(4)
    conv = LoihiConv2d("conv", "in", "h", rng.integers(-128, 128, (3, 2, 3, 3)) * 2, (2, 6, 6), padding=(1, 1))
    pops = (
        Population("h", 3 * 36, LoihiLIF(300, 200, 20, rng.integers(-20, 20, 108), np.zeros(108, int))),
        Population("o", 4, LoihiLIF(400, 400, 50, np.zeros(4, int), np.zeros(4, int))),
    )
    projs = [conv, LoihiDense("fc", "h", "o", rng.integers(-256, 256, (4, 108)), 1, delay=1)]
    if recurrent:
        projs.append(LoihiDense("rec", "o", "o", rng.integers(-256, 256, (4, 4)), 0))
    g = Graph((Input("in", 72),), pops, tuple(projs), ("o",)).validate()
    x = (rng.random((2, 20, 72)) < 0.3).astype(np.int64)
    fast = sim.run(g, x, record=["h"], record_state=["h", "o"])
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    slow = sim.run(g, x, record=["h"], record_state=["h", "o"])
    assert fast.spikes["h"].any()
    for k in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[k], slow.spikes[k])
    for k in slow.u:
        np.testing.assert_array_equal(fast.u[k], slow.u[k])
        np.testing.assert_array_equal(fast.v[k], slow.v[k])
    assert fast.events == slow.events


@pytest.mark.parametrize("recurrent", [False, True])
def test_strict_errors_are_the_same_on_both_paths(monkeypatch, recurrent):
    g, x = _net(5, recurrent)
    h = g.population("h")
    hot = dataclasses.replace(h, neuron=dataclasses.replace(h.neuron, du=-1, vth=hw.VTH_MAX))
    strong = tuple(dataclasses.replace(p, weight_exp=5) if p.name == "fc1" else p for p in g.projections)
    g = dataclasses.replace(g, populations=(hot, g.population("o")), projections=strong)
    x = np.ones_like(x)
    counted = sim.run(g, x).events
    assert sum(counted["h"].values()) > 0
    with pytest.raises(sim.ArithmeticLimitError) as fast:
        sim.run(g, x, strict=True)
    monkeypatch.setattr(simulator, "_use_kernel", lambda dev: False)
    assert sim.run(g, x).events == counted
    with pytest.raises(sim.ArithmeticLimitError) as slow:
        sim.run(g, x, strict=True)
    assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize("recurrent", [False, True])
def test_event_driven_and_dense_accumulation_agree(monkeypatch, recurrent):
    g, x = _net(8, recurrent, delay=1)
    monkeypatch.setattr(simulator, "_FEEDFORWARD_NETWORK_KERNEL", False)  # the layer schedule's choice
    monkeypatch.setattr(simulator, "_EVENT_DENSITY", 0.0)  # never
    dense = sim.run(g, x, record=["h"], record_state=["h", "o"])
    monkeypatch.setattr(simulator, "_EVENT_DENSITY", 1.1)  # always
    monkeypatch.setattr(simulator, "_EVENT_MIN_OUTPUTS", 0)
    events = sim.run(g, x, record=["h"], record_state=["h", "o"])
    for k in dense.spikes:
        np.testing.assert_array_equal(events.spikes[k], dense.spikes[k])
    for k in dense.u:
        np.testing.assert_array_equal(events.u[k], dense.u[k])
        np.testing.assert_array_equal(events.v[k], dense.v[k])
    assert events.events == dense.events


def test_batch_slices_are_invisible(monkeypatch):
    g, x = _net(3)
    monkeypatch.setattr(simulator, "_FEEDFORWARD_NETWORK_KERNEL", False)  # slices: the layer schedule
    x = np.concatenate([x] * 3)  # 9 samples
    whole = sim.run(g, x, record=["h"], record_state=["h"])
    monkeypatch.setattr(simulator, "_CHUNK_ELEMENTS", 2 * x.shape[1] * 23)  # two samples per slice
    assert simulator._batch_chunk(g, 9, x.shape[1], torch.device("cpu"), True) == 2
    sliced = sim.run(g, x, record=["h"], record_state=["h"])
    for k in whole.spikes:
        np.testing.assert_array_equal(sliced.spikes[k], whole.spikes[k])
    np.testing.assert_array_equal(sliced.u["h"], whole.u["h"])
    np.testing.assert_array_equal(sliced.v["h"], whole.v["h"])
    assert sliced.events == whole.events
    # strict mode names the sample by its index in the whole batch
    h = g.population("h")
    hot = dataclasses.replace(h, neuron=dataclasses.replace(h.neuron, du=-1, vth=hw.VTH_MAX))
    strong = tuple(dataclasses.replace(p, weight_exp=5) if p.name == "fc1" else p for p in g.projections)
    g = dataclasses.replace(g, populations=(hot, g.population("o")), projections=strong)
    x[:5] = 0  # the first samples stay quiet, so the first event is in a later slice
    with pytest.raises(sim.ArithmeticLimitError, match="sample 5$"):
        sim.run(g, x, strict=True)


def test_empty_batch():
    g, x = _net(3)
    res = sim.run(g, x[:0], record_state=["h"])
    assert res.spikes["o"].shape == (0, x.shape[1], 5) and res.u["h"].shape == (0, x.shape[1], 23)


# --- the single-definition guard ------------------------------------------------------------------------
def test_formulas_may_not_call_tensor_methods():
    def sneaky(x):
        return x.abs()

    def sneakier(x):
        return torch.abs(x)

    _, allowed = compiled.twins._namespace()
    for fn in (sneaky, sneakier):
        with pytest.raises(RuntimeError, match="formulas may use only operators"):
            compiled.check_formula(fn, allowed)
    for fn in hw.FORMULAS:
        compiled.check_formula(fn, allowed)


def test_compiled_formulas_run_loihi2_bytecode():
    for fn in hw.FORMULAS:
        assert F[fn.__name__].py_func.__code__ is fn.__code__


def test_kernel_cache_key_follows_the_formulas(monkeypatch):
    before = compiled.formulas_fingerprint()
    kernel = compiled.scan._kernel("raw", False, False, False)
    assert before in [c.cell_contents for c in kernel.py_func.__closure__]

    def decay(x, keep):  # a changed formula must change the fingerprint (and so the cache key)
        p = x * keep
        return _sign(p) * (_abs(p) >> (DECAY_SHIFT + 1))  # noqa: F821

    changed = tuple(decay if f is hw.decay else f for f in hw.FORMULAS)
    monkeypatch.setattr(hw, "FORMULAS", changed)
    assert compiled.formulas_fingerprint() != before


def test_kernel_threads_leave_the_multiprocessing_start_method_unset():
    # Lava sets the start method when first imported and fails if it is already fixed; numba's thread
    # pool start fixes it. A fresh process: the parallel kernel runs, then Lava must still import.
    import subprocess
    import sys

    code = (
        "import multiprocessing as mp, torch\n"
        "from snn2hw.hw import compiled\n"
        "compiled.scan._MIN_JOB_UPDATES = 1\n"
        "compiled.runtime._threads = lambda: 2\n"
        "compiled.lif_scan(torch.zeros(4, 3, 70, dtype=torch.int64), 0, 0, 64, 0)\n"
        "compiled.prepare_weights([[1, 2], [3, 4]], 1, 8)\n"
        "assert mp.get_start_method(allow_none=True) is None, mp.get_start_method()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_lif_scan_refuses_a_state_lava_cannot_hold():
    a, bias = _random_inputs(1, 2, 5, 9, 100)
    with pytest.raises(ValueError, match="v0 holds"):
        compiled.lif_scan(a, 0, 0, 64, bias, v0=torch.full((2, 9), hw.V_MAX + 1))
    with pytest.raises(ValueError, match="u0 holds"):
        compiled.lif_scan(a, 0, 0, 64, bias, u0=torch.full((2, 9), -hw.U_MAX - 1))
