"""The rules other than the spike-train ones (bptt, gated, spike-time, fa, dfa, eprop, decolle, superspike) on the
networks, windows and options ``benchmarks/sweep_rules.py`` found mishandled: options outside their documented
range (also as JSON would give them: "false", 1.5 for a seed, NaN), windows shorter than a layer's hop distance to
the output, and windows in which everything a loss reads is 0 whatever the weights."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snn2hw.learning import LearningRuleError, make_rule
from snn2hw.learning.superspike import label_raster
from snn2hw.nn.conv import ConvLIF, Flatten, LeakyReadout, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential
from snn2hw.train.losses import count_cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def loss_fn(out, y):
    return count_cross_entropy(out[-1] if isinstance(out, (list, tuple)) else out, y, scale=0.3)


def spikes(batch, steps, n, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, n, generator=g) < p).double()


def dense_net(sizes, bias=False, seed=0, recurrent=()):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        kind = RecurrentLIFDense if i in recurrent else LIFDense
        layers.append(kind(a, b, du=0.3, dv=0.2, v_th=0.5, bias=bias, weight_gain=3.0))
    return SpikingSequential(layers).double()


def grads(rule, net, x, y, forward_kwargs=None):
    rule.setup(net)
    res = rule.compute_gradients(net, x, y, loss_fn, forward_kwargs or {})
    return res, {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


# -- options outside the documented range are refused by name ------------------------------------------------------

BAD_OPTIONS = [
    ("fa", {"seed": 1.5}), ("fa", {"seed": "3"}), ("dfa", {"seed": None}), ("dfa", {"align_delays": "false"}),
    ("dfa", {"rate_target": "x"}), ("dfa", {"rate_cost": math.inf}), ("eprop", {"align_delays": 1}),
    ("eprop", {"reset_in_trace": 1}), ("eprop", {"seed": "abc"}), ("eprop", {"rate_target": math.nan}),
    ("decolle", {"readout_scale": math.nan}), ("decolle", {"readout_scale": math.inf}),
    ("decolle", {"readout_scale": 0.0}), ("decolle", {"readout_scale": "big"}),
    ("superspike", {"rmsprop": "yes"}), ("superspike", {"rms_eps": 0.0}), ("superspike", {"rms_decay": 1.5}),
    ("superspike", {"rms_decay": math.nan}), ("superspike", {"tau": math.inf}), ("superspike", {"tau": math.nan}),
    ("superspike", {"target_offset": -1}), ("superspike", {"target_interval": 1.5}),
    ("spike-time", {"window": -4.0}), ("spike-time", {"window": 0.0}), ("spike-time", {"window": math.inf}),
    ("spike-time", {"window": "long"}), ("spike-time", {"grid": 1.5}), ("spike-time", {"tau0": math.nan}),
    ("spike-time", {"early": math.nan}), ("gated", {"checkpoints": "many"}), ("gated", {"checkpoints": 2.5}),
]


@pytest.mark.parametrize("rule,options", BAD_OPTIONS, ids=[f"{r}-{json.dumps(o)}" for r, o in BAD_OPTIONS])
def test_options_outside_their_range_are_refused_by_name(rule, options):
    with pytest.raises(LearningRuleError, match=next(iter(options))):
        make_rule(rule, **options)


def test_options_inside_their_range_are_kept():
    assert make_rule("dfa", seed=3, align_delays=False, rate_target=0, rate_cost=2).rate_target == 0.0
    r = make_rule("superspike", tau=5, rms_decay=0, rms_eps=1e-6, target_offset=0, rmsprop=True)
    assert (r.tau, r.rms_decay, r.target_offset, r.rmsprop) == (5.0, 0.0, 0, True)
    assert make_rule("spike-time", window=7, grid=2).window == 7.0
    assert make_rule("eprop", reset_in_trace="output").reset_in_trace == "output"


# -- windows shorter than a layer's distance to the output ----------------------------------------------------------

def test_dfa_hidden_layer_further_from_the_output_than_the_window():
    """A hidden layer 3 hops below the output with T = 2: none of the output error can reach it (the shift is
    longer than the window). It crashed padding the projected error to 3 steps; it now gets no output error,
    only its rate-regulariser term."""
    net = dense_net([6, 5, 4, 3, 3], bias=True)
    x, y = spikes(2, 2, 6), torch.tensor([0, 2])
    _, g = grads(make_rule("dfa", rate_target=0.3), net, x, y)
    assert all(bool(torch.isfinite(v).all()) for v in g.values())
    # without the regulariser the lowest layer gets nothing (its bias only sees the 0 error)
    net = dense_net([6, 5, 4, 3, 3], bias=True)
    _, g = grads(make_rule("dfa"), net, x, y)
    assert g["layers.0.weight"].abs().max() == 0


def test_superspike_target_offset_beyond_the_window():
    assert label_raster(torch.tensor([1, 0]), 2, 3, interval=1, offset=3).sum() == 0
    assert label_raster(torch.tensor([1]), 4, 3, interval=2, offset=1)[0, :, 1].tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="offset"):
        label_raster(torch.tensor([1]), 4, 3, interval=1, offset=-1)
    net = dense_net([6, 5, 3], bias=True)
    res, g = grads(make_rule("superspike", target_offset=3), net, spikes(2, 2, 6), torch.tensor([0, 2]))
    assert math.isfinite(float(res.loss)) and g


# -- a window in which everything the loss reads is 0 whatever the weights ------------------------------------------

WINDOW_RULES = ["bptt", "fa", "dfa", "eprop", "decolle", "superspike"]


def test_short_window_without_bias_really_gives_a_constant_output():
    """The premise of the refusal: without biases, T <= (hop layers) gives an output of exact zeros for any
    weights, any layer kind (dense, recurrent, conv, pool, read-out)."""
    for seed in range(5):
        torch.manual_seed(seed)
        net = SpikingSequential([ConvLIF((1, 4, 4), 2, 3, v_th=0.01, weight_gain=50.0), SumPoolLIF((2, 2, 2), 2, v_th=0.01),
                                 Flatten(), RecurrentLIFDense(2, 4, v_th=0.01, weight_gain=50.0),
                                 LeakyReadout(4, 3, weight_gain=50.0)])
        with torch.no_grad():
            assert float(net(torch.ones(2, 4, 16)).abs().max()) == 0.0
            for layer in net.layers:  # excitatory weights: the input gets through as soon as the hops allow
                if hasattr(layer, "weight"):
                    layer.weight.abs_()
            out = net(torch.ones(2, 5, 16))
        assert float(out[:, :4].abs().max()) == 0.0 and float(out[:, 4].min()) > 0.0  # T = 5: moves at step 4


@pytest.mark.parametrize("rule", WINDOW_RULES)
def test_window_too_short_for_the_output_is_refused(rule):
    # the output (layer 2) can spike at step 2; DECOLLE's local loss reads the hidden layer, from step 1
    first = 1 if rule == "decolle" else 2
    with pytest.raises(LearningRuleError, match=rf"T = {first} steps.*use T > {first}"):
        grads(make_rule(rule), dense_net([6, 5, 3]), spikes(2, first, 6), torch.tensor([0, 1]))
    grads(make_rule(rule), dense_net([6, 5, 3]), spikes(2, first + 1, 6), torch.tensor([0, 1]))


@pytest.mark.parametrize("rule", WINDOW_RULES)
def test_short_window_with_a_bias_is_not_refused(rule):
    """A bias drives neurons before any input arrives: the output is not constant, the rule must run."""
    net = dense_net([6, 5, 3], bias=True)
    grads(make_rule(rule), net, spikes(2, 2, 6), torch.tensor([0, 1]))


def test_window_check_counts_hidden_layers_the_loss_reads():
    x, y = spikes(2, 2, 6), torch.tensor([0, 1])
    # return_all: the loss sees the first layer, which can spike at step 1
    grads(make_rule("bptt"), dense_net([6, 5, 3]), x, y, {"return_all": True})
    grads(make_rule("eprop", rate_target=0.1), dense_net([6, 5, 3]), x, y)
    grads(make_rule("decolle"), dense_net([6, 5, 4, 3]), spikes(2, 2, 6), y)
    with pytest.raises(LearningRuleError, match="T = 1 steps"):
        grads(make_rule("bptt"), dense_net([6, 5, 3]), spikes(2, 1, 6), y, {"return_all": True})
    with pytest.raises(LearningRuleError, match="T = 1 steps"):
        grads(make_rule("decolle"), dense_net([6, 5, 3]), spikes(2, 1, 6), y)


def test_window_check_counts_conv_pool_and_readout_hops():
    torch.manual_seed(0)
    net = SpikingSequential([ConvLIF((1, 4, 4), 2, 3), SumPoolLIF((2, 2, 2), 2), Flatten(), LIFDense(2, 3)]).double()
    x, y = spikes(2, 3, 16), torch.tensor([0, 1])
    with pytest.raises(LearningRuleError, match="use T > 3"):
        grads(make_rule("bptt"), net, x, y)
    grads(make_rule("bptt"), net, spikes(2, 4, 16), y)


def test_window_check_leaves_unknown_layer_kinds_alone():
    class Identity(torch.nn.Module):  # a user's layer: its delay is not known to the check
        def forward(self, s):
            return s

    net = SpikingSequential([LIFDense(6, 5), Identity(), LIFDense(5, 3)]).double()
    grads(make_rule("bptt"), net, spikes(2, 2, 6), torch.tensor([0, 1]))


# -- the CLI: a bad rule or trainer config is one line, exit 2, nothing written ---------------------------------------

CLI_CONFIGS = [
    ("eprop", {"rule_options": {"align_delays": "false"}}, "align_delays"),
    ("decolle", {"rule_options": {"readout_scale": "big"}}, "readout_scale"),
    ("bptt", {"trainer": {"lr": "fast"}}, "lr"),
    ("bptt", {"trainer": {"lr": -1.0}}, "lr must be a finite number > 0"),
    ("bptt", {"trainer": {"lr": 1e-3, "scheduler": "cosine", "min_lr": 1e-2}}, "min_lr"),
    ("bptt", {"data": {"steps": "ten"}}, "steps"),
    ("bptt", {"data": {"steps": 2}}, "T = 2 steps"),
    ("eprop", {"model": {"conv": [[4, 3]]}}, "ConvLIF"),
]


@pytest.mark.parametrize("rule,config,needle", CLI_CONFIGS, ids=[f"{r}-{n}" for r, _, n in CLI_CONFIGS])
def test_cli_bad_config_is_one_line_exit_2_and_nothing_written(tmp_path, rule, config, needle):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "snn2hw.cli", "train", "--task", "digits", "--rule", rule, "--config",
                        str(cfg), "--epochs", "1", "--out", str(out), "--quiet", "--no-deploy"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snn2hw: error: ") and needle in lines[0], p.stderr
    assert not out.exists()


@pytest.mark.parametrize("what", ["train_decays", "train_threshold", "qat"])
def test_spike_time_refuses_what_its_relaxation_cannot_train(what):
    """The TTFS relaxation reads du, dv and the threshold as numbers: trainable ones were left untrained without a
    word, and a QAT layer was trained as a float one."""
    from snn2hw.quantize import QuantConfig

    kwargs = {what: True} if what != "qat" else {}
    net = SpikingSequential([LIFDense(6, 5, du=0.3, dv=0.2, **kwargs), LIFDense(5, 3, du=0.3, dv=0.2)]).double()
    if what == "qat":
        net.set_qat(QuantConfig())
    with pytest.raises(LearningRuleError, match="QAT" if what == "qat" else "trainable"):
        make_rule("spike-time").setup(net)
    make_rule("spike-time").setup(SpikingSequential([LIFDense(6, 5, du=0.3, dv=0.2)]))


@pytest.mark.parametrize("rule", ["bptt", "dfa"])
def test_qat_step_makes_no_tensor_on_the_default_device(rule, monkeypatch):
    """QAT quantizes the layer on every forward: the quantizer turned the float IR weights (numpy) into tensors on
    torch's default device (``meta`` here; CUDA for a user who sets it). Host data now: the step under ``meta``
    as default device gives the CPU step's gradients."""
    from snn2hw.quantize import QuantConfig

    monkeypatch.setenv("SNN2HW_NO_NUMBA", "1")
    torch.manual_seed(0)
    first = [ConvLIF((1, 4, 4), 2, 3, bias=True), Flatten()] if rule == "bptt" else [LIFDense(16, 8, bias=True)]
    net = SpikingSequential(first + [LIFDense(8, 5, bias=True), LIFDense(5, 3)]).double().set_qat(QuantConfig())
    x, y = spikes(2, 6, 16, p=0.6), torch.tensor([0, 2])
    ref = {n: g.clone() for n, g in grads(make_rule(rule), net, x, y)[1].items()}
    net.zero_grad(set_to_none=True)
    torch.set_default_device("meta")
    try:
        got = grads(make_rule(rule), net, x, y)[1]
    finally:
        torch.set_default_device(None)
    assert ref and sorted(got) == sorted(ref)
    for n in ref:
        assert got[n].device.type == "cpu" and torch.equal(got[n], ref[n]), n


def test_spike_time_refuses_forward_options_it_would_ignore():
    net = SpikingSequential([LIFDense(6, 5, du=0.3, dv=0.2), LIFDense(5, 3, du=0.3, dv=0.2)]).double()
    rule = make_rule("spike-time")
    rule.setup(net)
    ce = lambda out, y: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    with pytest.raises(LearningRuleError, match="return_all"):
        rule.compute_gradients(net, spikes(2, 8, 6), torch.tensor([0, 1]), ce, {"return_all": True})
    with pytest.raises(LearningRuleError, match="unsupported forward options"):
        rule.compute_gradients(net, spikes(2, 8, 6), torch.tensor([0, 1]), ce, {"extra": 1})
    rule.compute_gradients(net, spikes(2, 8, 6), torch.tensor([0, 1]), ce, {})


@pytest.mark.parametrize("options,needle", [({"calibrate_rate": 2.0}, "calibrate_rate"),
                                            ({"calibrate_rate": True}, "calibrate_rate"),
                                            ({"calibrate_fold": "all"}, "calibrate_fold"),
                                            ({"betas": (0.9,)}, "betas"), ({"grad_clip": -1.0}, "grad_clip"),
                                            ({"eval_batch_size": 0}, "eval_batch_size"),
                                            ({"step_size": 0}, "step_size"), ({"lr": 0.0}, "lr must be"),
                                            ({"lr": float("nan")}, "lr must be"), ({"lr": True}, "lr must be"),
                                            ({"min_lr": -1e-4}, "min_lr"), ({"lr": 1e-3, "min_lr": 2e-3}, "min_lr"),
                                            ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"),
                                            ({"gamma": float("inf")}, "gamma")])
def test_trainer_refuses_bad_options_when_built(options, needle):
    """Checked in Trainer(...), not at fit's first step: ``snn2hw train`` refuses them before writing anything
    (a rate of 2.0 went on to calibrate_thresholds' CalibrationError inside fit, one beta to torch's IndexError:
    tracebacks from the CLI)."""
    from snn2hw.train.trainer import Trainer, TrainerConfig

    with pytest.raises(ValueError, match=needle):
        Trainer(dense_net([6, 3]), TrainerConfig(**options))
    Trainer(dense_net([6, 3]), TrainerConfig(calibrate_rate=0.1, calibrate_fold="neurons"))


@pytest.mark.parametrize("spec", [{"neuron": {"v_th": -1}}, {"hidden": ["a"]}, {"weight_gain": "x"},
                                  {"conv": [[2, 30]]}])
def test_model_spec_values_the_layers_refuse_are_task_config_errors(spec):
    """The short model spec's values went to the layer constructors unchecked: their ValueError reached the CLI as a
    traceback (exit 1); the ``layers`` form was already wrapped."""
    from models.tasks import TASKS, TaskConfigError, build_model

    with pytest.raises(TaskConfigError, match="model spec"):
        build_model(TASKS["digits"], spec)
