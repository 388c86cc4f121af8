"""``snn2hw train`` and the task registry: a run end to end (train, choose on validation, checkpoint that
export takes, simulator deployment), rules selectable by name, and clear errors for bad input."""
from __future__ import annotations

import json

import pytest
import torch

from snn2hw import cli
from snn2hw.learning import BatchResult, LearningRule, register_rule
from snn2hw.models.tasks import TaskConfigError, build_model, get_task
from snn2hw.nn.conv import ConvLIF, SumPoolLIF
from snn2hw.train.checkpoint import load_checkpoint

SMALL = {"model": {"hidden": [64]}, "data": {"steps": 40}, "trainer": {"batch_size": 32, "lr": 5e-3}}


def _config(tmp_path, cfg):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_train_hm2bp_digits_end_to_end(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    rc = cli.main(["train", "--task", "digits", "--rule", "hm2bp", "--config", _config(tmp_path, SMALL),
                   "--epochs", "2", "--seed", "1", "--quiet", "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["rule"]["name"] == "hm2bp" and r["seed"] == 1 and r["steps"] == 40 and len(r["history"]) == 2
    assert r["rule"]["target_true"] == 12  # 30 % of 40 steps
    for k in ("float_val_accuracy", "float_test_accuracy", "deployed_test_accuracy"):
        assert 0.2 < r[k] <= 1.0, (k, r[k])  # chance: 0.1 (learning itself: test_learning_spiketrain)
    assert r["time_per_epoch_s"] > 0 and "peak_memory_mb" in r
    model = load_checkpoint(out / "model.ckpt")
    assert [layer.out_features for layer in model.layers] == [64, 10]
    assert cli.main(["export", str(out / "model.ckpt"), "-o", str(tmp_path / "m.nir"), "--dt", "1e-3"]) == 0


def test_any_registered_rule_is_selectable(tmp_path):
    @register_rule
    class ZeroRule(LearningRule):
        name = "test-zero-rule"

        def compute_gradients(self, model, x, y, loss_fn, forward_kwargs, scale=1.0):
            out = model(x)
            return BatchResult(loss_fn(out, y).detach(), out)

    out = tmp_path / "z"
    rc = cli.main(["train", "--task", "digits", "--rule", "test-zero-rule", "--config", _config(tmp_path, SMALL),
                   "--epochs", "1", "--no-deploy", "--quiet", "--out", str(out)])
    assert rc == 0 and json.loads((out / "results.json").read_text())["rule"]["name"] == "test-zero-rule"


@pytest.mark.parametrize("argv,cfg,message", [
    (["--task", "nope"], None, "unknown task 'nope'"),
    (["--task", "digits", "--rule", "nope"], None, "unknown learning rule 'nope'"),
    (["--task", "digits"], {"modle": {}}, "unknown key(s) ['modle']"),
    (["--task", "digits"], {"trainer": {"lr": 1e-3, "epochz": 2}}, "'trainer': unknown or reserved field(s) ['epochz']"),
    (["--task", "digits"], {"model": {"hiden": [3]}}, "model spec: unknown key(s) ['hiden']"),
    (["--task", "digits"], {"data": {"step": 3}}, "unknown data option(s) ['step']"),
    (["--task", "digits", "--rule", "hm2bp"], {"rule_options": {"margn": 1}}, "bad options"),
])
def test_train_errors_exit_2_with_one_line(tmp_path, capsys, argv, cfg, message):
    extra = ["--config", _config(tmp_path, cfg)] if cfg is not None else []
    out = tmp_path / "o"
    assert cli.main(["train", *argv, *extra, "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snn2hw: error:") and message in err, err
    assert not (out / "results.json").exists()


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["train", "--task", "digits", "--config", str(tmp_path / "x.json"), "--out", str(tmp_path)]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_task_model_specs():
    mnist = get_task("mnist10k")
    cnn = build_model(mnist, {"conv": [[15, 5], "p2", [40, 5], "p2"], "hidden": [300]})
    kinds = [type(layer).__name__ for layer in cnn.layers]
    assert kinds == ["ConvLIF", "SumPoolLIF", "ConvLIF", "SumPoolLIF", "Flatten", "LIFDense", "LIFDense"]
    assert isinstance(cnn.layers[2], ConvLIF) and cnn.layers[2].out_shape == (40, 8, 8)
    assert isinstance(cnn.layers[3], SumPoolLIF) and cnn.layers[5].in_features == 640
    rec = build_model(get_task("braille"))
    assert type(rec.layers[0]).__name__ == "RecurrentLIFDense" and rec.layers[-1].out_features == 27
    with pytest.raises(TaskConfigError, match="recurrent"):
        build_model(mnist, {"hidden": [10, 10], "recurrent": [True]})
    with pytest.raises(TaskConfigError, match="conv"):
        build_model(mnist, {"conv": [["a"]]})
    # [channels, kernel, stride]: a strided conv in place of a pool (28 -> (28 - 4) // 2 + 1 = 13)
    strided = build_model(mnist, {"conv": [[15, 4, 2], [40, 3, 2]], "hidden": [300]})
    assert [type(layer).__name__ for layer in strided.layers[:2]] == ["ConvLIF", "ConvLIF"]
    assert strided.layers[0].stride == (2, 2) and strided.layers[0].out_shape == (15, 13, 13)
    assert strided.layers[1].out_shape == (40, 6, 6) and strided.layers[3].in_features == 40 * 36
    for bad in ([15, 4, 0], [15, 2, 3], [15, 4, 2.5]):
        with pytest.raises(TaskConfigError, match="conv"):
            build_model(mnist, {"conv": [bad]})


def test_threads_option_limits_numba_threads(tmp_path, monkeypatch):
    """``--threads N`` bounds numba's kernels too, not only torch's: otherwise a "one-thread" training run on a
    shared machine runs numba's parallel loops on every core."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1): nothing to limit")
    import snn2hw.learning.experiment as experiment

    seen = {}

    def fake_train_task(*args, **kwargs):
        seen["numba"], seen["torch"] = numba.get_num_threads(), torch.get_num_threads()
        return {"task": "digits", "rule": {"name": "bptt"}, "seed": 0, "checkpoint": "model.ckpt"}

    monkeypatch.setattr(experiment, "train_task", fake_train_task)
    before_numba, before_torch = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        assert cli.main(["train", "--task", "digits", "--threads", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    finally:
        numba.set_num_threads(before_numba)
        torch.set_num_threads(before_torch)
    assert seen == {"numba": 1, "torch": 1}
