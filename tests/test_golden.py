"""Golden traces: the simulator must reproduce, bit for bit, the spikes, u and v it produced when
``scripts/make_golden.py`` wrote ``tests/golden/`` (one small network per construct: dense, graded dense,
recurrent, delay, conv, pool, sparse, fan-in/skip, overflow edges). A failure means the integer path
changed; regenerate only for an intended change and say why."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snn2hw.artefact import load
from snn2hw.backends import sim

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "graph.npz").is_file())
EXPECTED = {"dense", "graded_dense", "recurrent", "delay", "conv", "pool", "sparse", "fan_in_skip", "overflow_edges"}


def test_every_construct_has_a_golden_trace():
    assert EXPECTED <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_simulator_reproduces_golden_trace(case):
    d = GOLDEN / case
    art = load(d / "graph.npz")
    g = art.graph
    x = {i.name: np.load(d / f"input.{i.name}.npy").astype(np.int64) for i in g.inputs}
    names = [p.name for p in g.populations]
    res = sim.run(art, x, record=names, record_state=names)
    for p in names:
        for kind in ("spikes", "u", "v"):
            want = np.load(d / f"{p}.{kind}.npy").astype(np.int64)
            got = getattr(res, kind)[p].astype(np.int64)
            assert got.shape == want.shape, f"{case}/{p}.{kind}: shape {got.shape} != {want.shape}"
            if not np.array_equal(got, want):
                b, t, n = np.argwhere(got != want)[0]
                pytest.fail(f"{case}/{p}.{kind} differs first at sample {b}, step {t}, neuron {n}: "
                            f"got {got[b, t, n]}, golden {want[b, t, n]}")
    if case == "overflow_edges":  # the edges are really reached
        ev = res.events
        assert ev["uw"]["u_wrap"] > 0 and ev["vs"]["v_saturation"] > 0
