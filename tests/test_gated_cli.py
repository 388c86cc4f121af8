"""``snn2hw train`` with the exact-gradient rules: the gated QIF network on delayed XOR and on the
predictive-coding auto-encoder, and spike-time gradients on Yin-Yang; checkpoints that reload and score
the same, deployment (exact, or the LIF mapping said to be one), and the auto-encoder learning."""
from __future__ import annotations

import json

import pytest
import torch

from snn2hw import cli
from snn2hw.models import pc_autoencoder as P
from snn2hw.models.sequence_tasks import get_task
from snn2hw.models.tasks import TaskConfigError
from snn2hw.nn.gated import GatedQIF
from snn2hw.train.checkpoint import load_checkpoint

XOR_SMALL = {"data": {"train": 64, "val": 32, "test": 32, "pulse": 5, "onset": [2, 5], "delay": [8, 12],
                      "response": 6, "go": 3},
             "model": {"hidden": 16, "tau_v": 5.0, "tau_s": 5.0}}
PC_SMALL = {"data": {"train": 48, "val": 24, "test": 24, "steps": 60, "warmup": 10, "tau_x": 8.0},
            "trainer": {"lr": 3e-2, "batch_size": 8}}


def _config(tmp_path, cfg):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def _train(tmp_path, task, rule, cfg, epochs, *extra):
    out = tmp_path / task
    rc = cli.main(["train", "--task", task, "--rule", rule, "--config", _config(tmp_path, cfg), "--epochs", str(epochs),
                   "--threads", "1", "--quiet", "--out", str(out), *extra])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_gated_delayed_xor_cli_checkpoint_and_lif_deployment(tmp_path, capsys):
    out, r = _train(tmp_path, "delayed_xor", "gated", XOR_SMALL, 2)
    assert r["rule"]["name"] == "gated" and len(r["history"]) == 2 and r["best_epoch"] in (0, 1)
    for k in ("float_val_accuracy", "float_test_accuracy", "deployed_test_accuracy", "mapped_float_test_accuracy"):
        assert 0.0 <= r[k] <= 1.0
    assert r["deployment"]["exact"] is False and "to_lif_network" in r["deployment"]["note"]
    assert "no exact Loihi-2 mapping" in capsys.readouterr().out
    # the checkpoint reloads as the trained GatedQIF and scores what the run reported
    model = load_checkpoint(out / "model.ckpt")
    assert isinstance(model, GatedQIF) and model.hidden == 16
    setup = get_task("delayed_xor").setup("gated", XOR_SMALL["model"], 0, XOR_SMALL["data"])
    _, _, (x_te, y_te) = get_task("delayed_xor").load(XOR_SMALL["data"]).values()
    assert setup.evaluate(model, x_te, y_te, "test")["float_test_accuracy"] == r["float_test_accuracy"]
    # the QIF model itself has no IR: a typed error and exit 2; its LIF mapping compiles
    assert cli.main(["compile", str(out / "model.ckpt"), "-o", str(tmp_path / "q.npz")]) == 2
    assert "no exact Loihi-2 mapping" in capsys.readouterr().err
    assert cli.main(["compile", r["deployed_checkpoint"], "-o", str(tmp_path / "l.npz")]) == 0


def test_pc_autoencoder_learns_well_below_baseline(tmp_path):
    x, y = P.make(8, seed=0, steps=100)
    assert x.shape == (8, 100, 4) and y.shape == (8, 100, 2) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.isnan(y[:, :20]).all() and abs(float(y[:, 20:].std()) - 1.0) < 0.5
    assert P.nmse(torch.zeros(8, 100, 2), y) == pytest.approx(1.0)
    _, r = _train(tmp_path, "pc_ae", "gated", PC_SMALL, 6, "--no-deploy")
    losses = [row["loss"] for row in r["history"]]
    assert losses[-1] < 0.7 * losses[0]
    # 0.52 when written (an untrained network: ~0.95-1.0)
    assert r["float_test_nmse"] < 0.65 * r["baseline_zero_test_nmse"], r["float_test_nmse"]


def test_spike_time_yinyang_cli_deploys_exactly(tmp_path):
    cfg = {"data": {"train": 120, "val": 60, "test": 60}, "model": {"hidden": 16}}
    out, r = _train(tmp_path, "yinyang", "spike-time", cfg, 1)
    assert r["deployment"]["exact"] is True and r["deployment"]["decode"] == "predict_first_spike"
    # single_spike network: the simulator's first output spikes are the float network's
    assert abs(r["deployed_test_accuracy"] - r["float_test_accuracy"]) <= 0.05
    assert cli.main(["export", str(out / "model.ckpt"), "-o", str(tmp_path / "yy.nir"), "--dt", "1e-3"]) == 0


def test_sequence_task_errors():
    with pytest.raises(TaskConfigError, match="unknown data option"):
        get_task("pc_ae").load({"nope": 1})
    with pytest.raises(TaskConfigError, match="unknown model key"):
        get_task("delayed_xor").setup("gated", {"hiden": 3})
    with pytest.raises(TaskConfigError, match="bad data option"):
        get_task("pc_ae").load({"steps": 10, "warmup": 20})
    assert cli.main(["train", "--task", "delayed_xor", "--rule", "gated", "--config", "/nonexistent.json",
                     "--out", "/tmp/unused"]) == 2


def test_refit_readout_recovers_a_linear_readout_of_the_hidden_spikes():
    from snn2hw.nn.gated_deploy import deployed_readout, refit_readout

    torch.manual_seed(0)
    net = GatedQIF(3, 12, 2, input_gain=3.0, i0=0.05).to_lif_network()
    with torch.no_grad():
        net.layers[-1].weight.normal_(0.0, 0.5)
        net.layers[-1].bias.copy_(torch.tensor([0.3, -0.2]))
    x = (torch.rand(16, 40, 3) < 0.3).float()
    with torch.no_grad():
        target = net(x)
        refit = refit_readout(net, x, target)
        assert torch.allclose(refit(x), target, atol=1e-4)
        active = net.layers[0](x).sum(dim=(0, 1)) > 0  # silent neurons get the minimum-norm weight, 0
        assert 4 <= int(active.sum()) < 12
        assert torch.allclose(refit.layers[-1].weight[:, active], net.layers[-1].weight[:, active], atol=1e-3)
    assert refit.layers[-1].v_scale >= float(refit.layers[-1].weight.detach().abs().sum(1).max())
    # on="sim": fitted to the spikes the compiled hidden layer sends, so the deployed read-out of the refit
    # network reproduces the deployed read-out it was fitted to (up to the read-out's own fixed point)
    deployed = torch.from_numpy(deployed_readout(net, x)).float()
    sim_refit = refit_readout(net, x, deployed, on="sim")
    again = torch.from_numpy(deployed_readout(sim_refit, x)).float()
    assert (again - deployed).abs().max() < 0.02 * deployed.abs().max()
    with pytest.raises(ValueError, match="on must be"):
        refit_readout(net, x, target, on="lava")
