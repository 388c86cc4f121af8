"""The whole pipeline end to end on scikit-learn digits (short training)."""
import json

import numpy as np
import pytest

from snn2hw import artefact
from snn2hw.pipeline import lava_available, run_demo

EPOCHS = 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    row = run_demo(out, epochs=EPOCHS, use_lava=lava_available(), progress=False, log=lambda s: None)
    return out, row


def test_demo_writes_every_file_and_a_consistent_summary(demo):
    out, row = demo
    for name in ("digits.ckpt", "digits.nir", "digits.s2h.npz", "summary.json"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sim_accuracy"] == row["sim_accuracy"]
    assert summary["resources"]["neurons"] == 138 and summary["resources"]["synapses"] > 0
    assert set(summary["wall_time_s"]) >= {"train", "export", "import", "compile", "sim"}


def test_deployed_accuracy_tracks_float(demo):
    _, row = demo
    assert row["float_accuracy"] > 0.8  # only 6 epochs here; the full demo reaches ~95 %
    assert abs(row["float_to_deployed_drop_pp"]) <= 2.0


@pytest.mark.lava
def test_lava_agrees_with_the_simulator_on_the_whole_test_split(demo):
    pytest.importorskip("lava")
    _, row = demo
    ag = row["lava"]["agreement_vs_sim"]
    assert ag["entries_equal_pct"] == 100.0 and ag["samples_identical"] == ag["samples"] == 360
    assert row["lava"]["accuracy"] == row["sim_accuracy"]


@pytest.mark.lava
def test_trained_network_per_step_spikes_and_voltages_equal(demo):
    pytest.importorskip("lava")
    from snn2hw.backends import lava, sim
    from snn2hw.models import digits

    out, _ = demo
    art = artefact.load(out / "digits.s2h.npz")
    x = digits.load()[2][:3].numpy().astype(np.int64)
    pops = [p.name for p in art.graph.populations]
    a = sim.run(art, x, record=pops, record_state=pops)
    b = lava.run(art, x, record=pops, record_state=pops)
    for p in pops:
        np.testing.assert_array_equal(a.spikes[p], b.spikes[p])
        np.testing.assert_array_equal(a.u[p], b.u[p])
        np.testing.assert_array_equal(a.v[p], b.v[p])
    assert sum(int(a.spikes[p].sum()) for p in pops) > 0  # the comparison saw real activity
