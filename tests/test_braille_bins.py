"""Braille's time-binned input (data option ``bins``): the encoding, its refusals, the task's input width,
and ``snn2hw train --task braille`` end to end on synthetic recordings (no data file needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from snn2hw import cli
from snn2hw.models import braille as B
from snn2hw.models.tasks import TaskConfigError, build_model, get_task


def _records(n_per_letter=2, steps=12):
    rng = np.random.default_rng(0)
    return [{"letter": letter, "repetition": r, "taxel_data": rng.uniform(60, 255, size=(steps, 12))}
            for letter in B.LETTERS for r in range(n_per_letter)]


def test_time_bins_split_events_by_sub_window():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 10, 4, generator=g) < 0.5).float()
    assert B.time_bins(x, 1) is x  # the default: today's encoding, untouched
    y = B.time_bins(x, 3)  # 10 steps into 3 sub-windows: steps 0-3, 4-6, 7-9 (t * 3 // 10)
    assert y.shape == (3, 10, 12)
    y = y.reshape(3, 10, 4, 3)  # channel c * 3 + k
    assert torch.equal(y.sum(-1), x)  # the same events, each in exactly one bin channel
    windows = [range(0, 4), range(4, 7), range(7, 10)]
    for k, steps in enumerate(windows):
        inside = torch.zeros(10, dtype=torch.bool)
        inside[list(steps)] = True
        assert torch.equal(y[:, inside, :, k], x[:, inside])
        assert not y[:, ~inside, :, k].any()
    # one bin per step: each channel's step t goes to bin t
    z = B.time_bins(x, 10).reshape(3, 10, 4, 10)
    assert torch.equal(z.diagonal(dim1=1, dim2=3), x.transpose(1, 2))


def test_encode_with_bins():
    recs = _records()[:5]
    x1 = B.encode(recs, steps=32, threshold=2.0)
    assert torch.equal(B.encode(recs, steps=32, threshold=2.0, bins=1), x1)
    x4 = B.encode(recs, steps=32, threshold=2.0, bins=4)
    assert x4.shape == (5, 32, 96) and torch.equal(x4.reshape(5, 32, 24, 4).sum(-1), x1)
    assert B.build_model(bins=4, hidden=8).layers[0].in_features == 96


@pytest.mark.parametrize("bins,message", [
    (0, "from 1 to steps (32), got 0"), (-2, "from 1 to steps (32), got -2"), (33, "from 1 to steps (32), got 33"),
    (2.0, "an integer from 1 to steps (32), got 2.0"), ("4", "an integer"), (True, "an integer"), (None, "an integer")])
def test_bad_bins_are_refused(bins, message):
    with pytest.raises(B.BrailleOptionError, match="bins must be") as exc:
        B.encode(_records()[:2], steps=32, bins=bins)
    assert message in str(exc.value)
    with pytest.raises(TaskConfigError, match="data option bins must be") as exc:
        get_task("braille").input_size({"steps": 32, "bins": bins})
    assert message in str(exc.value)
    with pytest.raises(TaskConfigError, match="data option bins"):
        get_task("braille").load({"steps": 32, "bins": bins})  # refused before the data file is looked for


def test_task_input_width_follows_bins():
    task = get_task("braille")
    assert task.input_size() == 24 and task.input_size({"bins": 1}) == 24
    assert task.input_size({"bins": 8}) == 192 and task.input_size({"steps": 16, "bins": 16}) == 384
    assert build_model(task, None, 0).layers[0].in_features == 24
    model = build_model(task, {"hidden": [16]}, 0, {"bins": 8})
    assert model.layers[0].in_features == 192 and model.layers[1].in_features == 16
    assert get_task("digits").input_size() == 64  # tasks without a width option keep theirs


def test_train_braille_with_bins_end_to_end(tmp_path, monkeypatch, capsys):
    """``snn2hw train --task braille --config CFG`` with ``"bins": 4``: the model takes 96 inputs, trains, the
    checkpoint and results record it, and the network deploys on the simulator; a bad value exits 2."""
    torch.set_num_threads(1)
    recs = _records(n_per_letter=5)
    seen = {}

    def fake_load(path=None, steps=B.STEPS, threshold=B.THRESHOLD, bins=1):
        seen["bins"] = bins
        x, y = B.encode(recs, steps, threshold, bins), B.labels(recs)
        return x, y, x[:54], y[:54]

    monkeypatch.setattr(B, "load", fake_load)
    cfg = {"model": {"hidden": [8]}, "data": {"steps": 16, "bins": 4}, "trainer": {"batch_size": 32}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert cli.main(["train", "--task", "braille", "--rule", "strsbp", "--config", str(path), "--epochs", "1",
                     "--threads", "1", "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert seen["bins"] == 4 and r["data"] == {"steps": 16, "bins": 4}
    assert r["model"]["layers"][0]["in_features"] == 96
    assert 0.0 <= r["deployed_test_accuracy"] <= 1.0
    path.write_text(json.dumps({**cfg, "data": {"steps": 16, "bins": 17}}))
    assert cli.main(["train", "--task", "braille", "--config", str(path), "--epochs", "1", "--quiet",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "data option bins must be from 1 to steps (16), got 17" in capsys.readouterr().err


def test_layers_spec_must_fit_the_task_width():
    """A ``"layers"`` spec states its widths itself: one built for the 24 channels, used with ``bins: 4``, was only
    refused inside training's first matrix product."""
    task = get_task("braille")

    def spec(n_in, n_out=27):
        return {"layers": [{"layer": "LIFDense", "in_features": n_in, "out_features": 8},
                           {"layer": "LIFDense", "in_features": 8, "out_features": n_out}]}

    with pytest.raises(TaskConfigError, match=r"first layer takes 24 inputs.*\{'bins': 4\} gives 96"):
        build_model(task, spec(24), data={"bins": 4})
    assert build_model(task, spec(96), data={"bins": 4}).layers[0].in_features == 96
    assert build_model(task, spec(24)).layers[0].in_features == 24
    with pytest.raises(TaskConfigError, match="last layer has 10 outputs, fewer than the 27 classes of task 'braille'"):
        build_model(task, spec(24, 10))
