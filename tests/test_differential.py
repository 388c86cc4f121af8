"""Differential tests: snn2hw's simulator against Lava's bit-accurate models, every neuron, every step.

Random integer graphs over the whole legal parameter ranges (sizes 1..12, du -1..4095, dv, vth,
bias_mant/bias_exp, weights beyond the clip range, every sign mode, 1..8 weight bits, weight_exp,
graded inputs up to 24 bits, fan-in, skip connections, recurrent projections and cycles, delays up to
63) plus hand-made cases at the width limits. Spikes, u and v of every population must be equal at
every step. Lava's start-up costs about a second per run, so each example bundles several independent
networks into one graph and one Lava run.

``SNN2HW_SOAK=1`` runs the soak variant with many more examples (marked ``soak``; ``SNN2HW_SOAK_EXAMPLES``
sets how many, default 400; ``SNN2HW_SOAK_LOG=file`` appends one progress line per example).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

pytest.importorskip("lava")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from snn2hw.backends import lava as lava_backend  # noqa: E402
from snn2hw.backends import sim  # noqa: E402
from snn2hw.hw import loihi2 as hw  # noqa: E402
from snn2hw.ir import Graph, Input, LoihiDense, LoihiLIF, Population  # noqa: E402

pytestmark = pytest.mark.lava

SOAK = os.environ.get("SNN2HW_SOAK") == "1"

# Neuron-steps compared (each one: spike, u and v of one neuron at one step of one sample).
COMPARED = {"neuron_steps": 0, "mismatches": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_count(request):
    yield
    report_count(request, COMPARED)


def report_count(request, counter) -> None:
    """Print the neuron-step count past pytest's output capture (it is the evidence in the closing note)."""
    line = (
        f"{request.module.__name__}: {counter['mismatches']} mismatches over "
        f"{counter['neuron_steps']} neuron-steps compared (sim vs Lava: spikes, u, v)"
    )
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:  # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


# --- comparison helpers (also used by test_lava_backend.py) -------------------------------------------
def _first_mismatch(name: str, kind: str, a: np.ndarray, b: np.ndarray) -> str:
    sample, step, neuron = (int(i) for i in np.argwhere(a != b)[0])
    return (
        f"{kind} of population {name!r} differ first at sample {sample}, step {step}, neuron {neuron}: "
        f"sim {a[sample, step, neuron]}, lava {b[sample, step, neuron]} "
        f"({int(np.count_nonzero(a != b))} differing values)"
    )


def assert_same(sim_res, lava_res, names, lava_prefix: str = "", counter: dict | None = None) -> int:
    """Assert equal spikes/u/v for ``names``; count the neuron-steps compared in ``counter``."""
    counter = COMPARED if counter is None else counter
    prefix = ""
    count = 0
    for name in names:
        for kind in ("spikes", "u", "v"):
            a = getattr(sim_res, kind)[prefix + name]
            b = getattr(lava_res, kind)[lava_prefix + name]
            assert a.shape == b.shape, f"{kind} of {name!r}: shape {a.shape} vs {b.shape}"
            if not np.array_equal(a, b):
                counter["mismatches"] += int(np.count_nonzero(a != b))
                raise AssertionError(_first_mismatch(name, kind, a, b))
        count += int(np.prod(getattr(sim_res, "spikes")[prefix + name].shape))
    counter["neuron_steps"] += count
    return count


def merge(graphs: list[Graph]) -> Graph:
    """Independent graphs as one graph (names prefixed ``g{k}.``), to run them in one Lava run."""
    inputs, pops, projs, outputs = [], [], [], []
    for k, g in enumerate(graphs):
        pre = f"g{k}."
        inputs += [dataclasses.replace(i, name=pre + i.name) for i in g.inputs]
        pops += [dataclasses.replace(p, name=pre + p.name) for p in g.populations]
        projs += [dataclasses.replace(p, name=pre + p.name, src=pre + p.src, dst=pre + p.dst) for p in g.projections]
        outputs += [pre + o for o in g.outputs]
    return Graph(tuple(inputs), tuple(pops), tuple(projs), tuple(outputs)).validate()


def compare_bundle(graphs: list[Graph], inputs: list[dict[str, np.ndarray]], **lava_kwargs) -> int:
    """Run all ``graphs`` in ONE Lava run and each alone in the simulator; compare every population."""
    merged = merge(graphs)
    # one run needs one (batch, steps): pad shorter inputs with silent steps at the end
    steps = max(arr.shape[1] for xs in inputs for arr in xs.values())
    inputs = [{name: np.pad(arr, ((0, 0), (0, steps - arr.shape[1]), (0, 0))) for name, arr in xs.items()}
              for xs in inputs]
    x = {f"g{k}.{name}": arr for k, xs in enumerate(inputs) for name, arr in xs.items()}
    every = [p.name for p in merged.populations]
    lava_res = lava_backend.run(merged, x, record=every, record_state=every, **lava_kwargs)
    assert lava_res.backend == "lava"
    count = 0
    for k, (g, xs) in enumerate(zip(graphs, inputs)):
        names = [p.name for p in g.populations]
        sim_res = sim.run(g, xs, record=names, record_state=names)
        count += assert_same(sim_res, lava_res, names, lava_prefix=f"g{k}.")
    return count


# --- random graphs ------------------------------------------------------------------------------------
@st.composite
def networks(draw, max_pops: int = 4, max_size: int = 12, allow_bias: bool = True, allow_cycles: bool = True,
             max_delay: int = hw.MAX_DELAY):
    """A random integer graph; scalar parameters from hypothesis, arrays from a drawn numpy seed."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = []
    for i in range(draw(st.integers(1, 2))):
        nmb = draw(st.one_of(st.just(0), st.sampled_from([1, 2, 8, 24]), st.integers(1, hw.MESSAGE_BITS_MAX)))
        inputs.append(Input(f"in{i}", draw(st.integers(1, max_size)), nmb))

    pops = []
    for j in range(draw(st.integers(1, max_pops))):
        size = draw(st.integers(1, max_size))
        du = draw(st.one_of(st.sampled_from([-1, 0, 1, 4095]), st.integers(hw.DU_MIN, hw.DU_MAX)))
        dv = draw(st.one_of(st.sampled_from([0, 1, 4095]), st.integers(hw.DV_MIN, hw.DV_MAX)))
        vth = draw(st.one_of(st.sampled_from([0, 1, hw.VTH_MAX]), st.integers(0, 300), st.integers(hw.VTH_MIN, hw.VTH_MAX)))
        bias_kind = draw(st.sampled_from(["zero", "small", "full"] if allow_bias else ["zero"]))
        if bias_kind == "zero":
            mant = np.zeros(size, dtype=np.int64)
        elif bias_kind == "small":
            mant = rng.integers(-20, 21, size)
        else:
            mant = rng.integers(hw.BIAS_MANT_MIN, hw.BIAS_MANT_MAX + 1, size)
        exp = rng.integers(hw.BIAS_EXP_MIN, hw.BIAS_EXP_MAX + 1, size)
        pops.append(Population(f"p{j}", size, LoihiLIF(du, dv, vth, mant, exp)))

    nodes = [*inputs, *pops]
    projs = []

    def projection(src, dst) -> LoihiDense:
        lim = draw(st.sampled_from([3, 64, 256, 300]))  # 300: beyond the clip range
        w = rng.integers(-lim, lim + 1, (dst.size, src.size))
        density = draw(st.sampled_from([1.0, 0.5, 0.1]))
        w = np.where(rng.random(w.shape) < density, w, 0)
        graded_src = isinstance(src, Input) and src.num_message_bits > 0
        nmb = draw(st.one_of(st.just(0), st.integers(1, hw.MESSAGE_BITS_MAX))) if not graded_src else \
            draw(st.one_of(st.just(src.num_message_bits), st.just(0), st.integers(1, hw.MESSAGE_BITS_MAX)))
        return LoihiDense(
            f"w{len(projs)}", src.name, dst.name, w,
            weight_exp=draw(st.integers(hw.WEIGHT_EXP_MIN, hw.WEIGHT_EXP_MAX)),
            num_weight_bits=draw(st.integers(1, hw.WEIGHT_BITS_MAX)),
            sign_mode=int(draw(st.sampled_from(list(hw.SignMode)))),
            num_message_bits=nmb,
            delay=draw(st.one_of(st.just(0), st.integers(0, 3), st.integers(0, max_delay))),
        )

    for j, dst in enumerate(pops):
        # at least one feed-forward input per population (from an input or an earlier population) ...
        earlier = nodes[: len(inputs) + j]
        projs.append(projection(earlier[draw(st.integers(0, len(earlier) - 1))], dst))
        # ... plus fan-in / skip connections, and recurrent ones (self or backwards) when allowed
        for _ in range(draw(st.integers(0, 2))):
            pool = nodes if allow_cycles else earlier
            projs.append(projection(pool[draw(st.integers(0, len(pool) - 1))], dst))
    outputs = (pops[-1].name,)
    return Graph(tuple(inputs), tuple(pops), tuple(projs), outputs).validate()


def random_inputs(graph: Graph, batch: int, steps: int, seed: int,
                  densities: tuple[float, ...] = (0.1, 0.4, 0.9)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in graph.inputs:
        active = rng.random((batch, steps, i.size)) < rng.choice(list(densities))
        if i.num_message_bits == 0:
            out[i.name] = active.astype(np.int64)
        else:
            lim = 1 << (i.num_message_bits - 1)
            vals = rng.integers(-lim, lim, (batch, steps, i.size))
            # sometimes pin the extremes, including -2**23, whose products with -256 leave int32
            vals = np.where(rng.random(vals.shape) < 0.1, rng.choice([-lim, lim - 1], vals.shape), vals)
            out[i.name] = np.where(active, vals, 0)
    return out


@st.composite
def bundles(draw, n_graphs: int = 3, **net_kwargs):
    graphs = [draw(networks(**net_kwargs)) for _ in range(n_graphs)]
    steps = draw(st.one_of(st.integers(1, 12), st.integers(13, 80)))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    xs = [random_inputs(g, batch, steps, seed + k) for k, g in enumerate(graphs)]
    return graphs, xs


CI_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
# No shrinking in the soak: every shrink step is a Lava run; a failure is reported (and logged) as found.
SOAK_SETTINGS = settings(max_examples=int(os.environ.get("SNN2HW_SOAK_EXAMPLES", "400")), deadline=None,
                         suppress_health_check=list(HealthCheck),
                         phases=[Phase.explicit, Phase.reuse, Phase.generate])


@CI_SETTINGS
@given(bundles())
def test_random_graphs_sim_equals_lava(bundle):
    graphs, xs = bundle
    assert compare_bundle(graphs, xs) > 0


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="soak run: set SNN2HW_SOAK=1")
@SOAK_SETTINGS
@given(bundles(n_graphs=4))
def test_soak_random_graphs_sim_equals_lava(bundle):
    graphs, xs = bundle
    log = os.environ.get("SNN2HW_SOAK_LOG")
    try:
        assert compare_bundle(graphs, xs) > 0
    except Exception as exc:
        if log:
            with open(log, "a") as f:
                f.write(f"FAILED: {type(exc).__name__}: {exc}\n{graphs!r}\n{xs!r}\n")
        raise
    if log:  # progress of a long soak, one line per example
        with open(log, "a") as f:
            f.write(f"{COMPARED['mismatches']} mismatches over {COMPARED['neuron_steps']} neuron-steps\n")


# --- hand-made width-limit cases ----------------------------------------------------------------------
def _one(name, du, dv, vth, weights, nmb_in, steps_values, weight_exp=0, bias=0, bias_exp=0, delay=0, sign_mode=1):
    """Input (graded if nmb_in) -> one population, with the given input rows."""
    w = np.atleast_2d(np.asarray(weights))
    n_out, n_in = w.shape
    g = Graph(
        (Input("in", n_in, nmb_in),),
        (Population(name, n_out, LoihiLIF(du, dv, vth, np.full(n_out, bias), np.full(n_out, bias_exp))),),
        (LoihiDense("w", "in", name, w, weight_exp=weight_exp, num_message_bits=nmb_in, delay=delay,
                    sign_mode=sign_mode),),
        (name,),
    ).validate()
    x = np.asarray(steps_values, dtype=np.int64).reshape(1, -1, n_in)
    return g, {"in": x}


def edge_cases():
    cases = {}
    # u = 2**23 exactly is kept, one more step wraps it (2**24 -> 0): w 2 * s 2**16 = 2**17, << 6 = 2**23
    cases["u_wrap_upper"] = _one("u_up", -1, 4095, hw.VTH_MAX, [[2]], 18, [2**16, 2**16, 2**16, 0, 0])
    # u = -2**23 becomes +2**23 (asymmetric single wrap)
    cases["u_wrap_lower"] = _one("u_lo", -1, 4095, hw.VTH_MAX, [[2]], 18, [-(2**16), -(2**16), 0, 0])
    # u just above 2**23 wraps to a large negative value; decaying u with du = 0
    cases["u_wrap_decay"] = _one("u_dec", 0, 0, hw.VTH_MAX, [[254]], 24, [2**15, 2**15, 0, 0, 0, 0])
    # v saturates at +-(2**23 - 1) and stays there without decay
    cases["v_sat_pos"] = _one("v_pos", -1, 0, hw.VTH_MAX, [[254]], 16, [2**14] * 4 + [0] * 4)
    cases["v_sat_neg"] = _one("v_neg", -1, 0, hw.VTH_MAX, [[-256]], 16, [2**14] * 4 + [0] * 4)
    # v saturated at the top, vth = VTH_MAX: (2**17 - 1) << 6 = 2**23 - 64 < 2**23 - 1, so it spikes
    cases["v_sat_spike"] = _one("v_spk", -1, 0, hw.VTH_MAX, [[254]], 16, [2**14] * 3)
    # int32 wrap of the Dense output (graded: int32 dot, then shift) and of a_in << 6
    cases["int32_dense"] = _one("i32", 4095, 4095, hw.VTH_MAX, [[255, 255, 255]], 24,
                                [[2**23 - 1] * 3, [-(2**23)] * 3, [2**23 - 1, 0, 0]], weight_exp=7)
    cases["int32_shift_right"] = _one("i32r", 4095, 4095, hw.VTH_MAX, [[255, 255, -256]], 24,
                                      [[2**23 - 1, 2**23 - 1, -(2**23)], [2**23 - 1, 2**23 - 1, 0]], weight_exp=-8)
    # the same through DelayDense, which multiplies in int32 but sums in int64 before the shift
    cases["int32_delay_dense"] = _one("i32d", 4095, 4095, hw.VTH_MAX, [[255, 255, -256]], 24,
                                      [[2**23 - 1, 2**23 - 1, -(2**23)], [2**23 - 1, 2**23 - 1, 0]] + [[0, 0, 0]] * 6,
                                      weight_exp=-8, delay=3)
    # a_in << 6 wraps in int32: a_in = 2**25 + 1
    cases["activation_shift_wrap"] = _one("ash", 4095, 4095, hw.VTH_MAX, [[255]], 24, [2**23 - 1, 0, 0])
    # largest bias: 4095 << 7, and the most negative one with a right shift
    cases["bias_extremes"] = _one("bias", 4095, 0, hw.VTH_MAX, [[0]], 0, [0] * 6, bias=4095, bias_exp=7)
    cases["bias_neg_shift"] = _one("biasn", 4095, 0, 10, [[0]], 0, [0] * 6, bias=-4096, bias_exp=-7)
    # threshold 0: any positive v spikes; strict '>' keeps v = 0 silent
    cases["vth_zero"] = _one("vth0", 4095, 4095, 0, [[2], [0]], 0, [1, 0, 1, 1])
    # graded input into a binary projection: Lava takes any non-zero payload as one spike
    g, x = _one("gbin", -1, 0, hw.VTH_MAX, [[4, 8]], 8, [[7, -3], [0, 0], [-128, 1]])
    cases["graded_into_binary"] = (dataclasses.replace(
        g, projections=(dataclasses.replace(g.projections[0], num_message_bits=0),)), x)
    # NULL sign mode behaves as excitatory (clip to [0, 255]); inhibitory clips to [-255, 0]
    cases["sign_null"] = _one("snull", -1, 0, hw.VTH_MAX, [[-5, 300, 7]], 0, [[1, 1, 1]] * 3, sign_mode=0)
    cases["sign_inhib"] = _one("sinh", -1, 0, hw.VTH_MAX, [[-300, 5, -7]], 0, [[1, 1, 1]] * 3, sign_mode=3)
    # delay 63, the maximum: arrives 64 steps later
    cases["delay_63"] = _one("d63", 4095, 4095, 0, [[2]], 0, [1] + [0] * 70, delay=63)
    # sum of several projections into one population wraps in int32
    g, x = _one("fan", 4095, 4095, hw.VTH_MAX, [[255]], 24, [[2**23 - 1], [0], [0]], weight_exp=7)
    extra = tuple(dataclasses.replace(g.projections[0], name=f"w{k}") for k in range(1, 3))
    cases["fan_in_int32_sum"] = (dataclasses.replace(g, projections=g.projections + extra), x)
    return cases


def test_width_limit_edge_cases_sim_equals_lava():
    cases = edge_cases()
    graphs = [g for g, _ in cases.values()]
    xs = [x for _, x in cases.values()]
    assert compare_bundle(graphs, xs) > 0

    # and the edges were really reached (the simulator's event counters say so)
    def events(key):
        g, x = cases[key]
        return sim.run(g, x).events[g.populations[0].name]

    assert events("u_wrap_upper")["u_wrap"] > 0 and events("u_wrap_lower")["u_wrap"] > 0
    assert events("v_sat_pos")["v_saturation"] > 0 and events("v_sat_neg")["v_saturation"] > 0
    assert events("activation_shift_wrap")["activation_int32_wrap"] > 0
    res = sim.run(*cases["u_wrap_upper"], record_state=["u_up"])
    assert res.u["u_up"][0, :, 0].tolist()[1:4] == [2**23, 0, 2**23]
    res = sim.run(*cases["u_wrap_lower"], record_state=["u_lo"])
    assert res.u["u_lo"][0, 1, 0] == 2**23  # -2**23 wraps to +2**23
    res = sim.run(*cases["v_sat_neg"], record_state=["v_neg"])
    assert res.v["v_neg"][0, :, 0].min() == -hw.V_MAX
    res = sim.run(*cases["delay_63"])
    assert np.flatnonzero(res.spikes["d63"][0, :, 0]).tolist() == [64]
