"""The accuracy benchmark's round-13 Braille stages (``tune-bins3``, ``final-bins3``): their configs build the
networks they name, and the selection rule ranks candidates as the notes state (validation only)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_spiketrain_accuracy",
                                                      BENCH / "bench_spiketrain_accuracy.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_configs_build(bench):
    """Every candidate and final config exists, builds 24K-R{128,256}-27 for its bins and gives its rule valid
    options, so that a stage cannot fail on a config after an hour of runs."""
    from snn2hw.learning import make_rule
    from snn2hw.learning.experiment import read_config
    from snn2hw.models.tasks import build_model, default_rule_options, get_task

    runs = [(rule, config) for _, rule, config, _ in bench.TUNE_BINS3]
    runs += [(rule, config) for _, _, config, rule, _, _ in bench.FINAL_BINS3]
    runs += [(rule, config) for _, rule, config, _ in bench.TUNE_BINS3_PIVOT + bench.TUNE_BINS3_CLIP]
    task = get_task("braille")
    for rule, config in runs:
        cfg = read_config(BENCH / "configs" / config)
        bins = cfg["data"]["bins"]
        model = build_model(task, cfg["model"], 0, data=cfg["data"])
        sizes = [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")]
        hidden = cfg["model"]["hidden"][0]
        assert sizes[0] == (hidden, 24 * bins) and sizes[-1] == (27, hidden), (config, sizes)
        assert (hidden, hidden) in sizes, config  # recurrent
        make_rule(rule, **{**default_rule_options(rule, cfg["data"]["steps"]), **cfg.get("rule_options", {})})


def _run(seed, best, history, losses=None):
    return {"seed": seed, "float_val_accuracy": history[best], "best_epoch": best, "val_history": history,
            "val_loss_history": losses}


def _row(config, rule, runs, setting="s", loss="mse"):
    return {"config": config, "rule": rule, "epochs": 20, "setting": setting, "loss": loss, "runs": runs}


def test_rank_needs_every_seed_and_orders_by_mean_validation(bench):
    a = _row("a", "strsbp", [_run(k, 1, [0.9, 0.99]) for k in range(3)])
    b = _row("b", "strsbp", [_run(k, 1, [0.9, 0.995]) for k in range(3)])
    partial = _row("c", "strsbp", [_run(k, 1, [0.9, 1.0]) for k in range(2)])  # seed 2 missing: not eligible
    ranked = bench.rank_candidates([a, b, partial], [0, 1, 2])
    assert [r["config"] for r in ranked] == ["b", "a"]
    assert ranked[0]["score"]["val_mean"] == pytest.approx(0.995)


def test_rank_ties_by_last_epochs_then_loss_then_plan_order(bench):
    h_flat = [0.95] * 5 + [0.99]      # best 0.99, last-5 mean 0.958
    h_good = [0.9] + [0.99] * 5       # best 0.99, last-5 mean 0.99
    a = _row("a", "strsbp", [_run(k, 5, h_flat) for k in range(3)])
    b = _row("b", "strsbp", [_run(k, 1, h_good) for k in range(3)])
    assert [r["config"] for r in bench.rank_candidates([a, b], [0, 1, 2])] == ["b", "a"]
    # tied on both: the lower best-epoch validation loss, when the losses are the same kind
    c = _row("c", "strsbp", [_run(k, 1, h_good, [1.0] * 6) for k in range(3)])
    d = _row("d", "strsbp", [_run(k, 1, h_good, [0.5] * 6) for k in range(3)])
    assert [r["config"] for r in bench.rank_candidates([c, d], [0, 1, 2])] == ["d", "c"]
    # different losses are not compared: plan order (the incumbent first)
    e = dict(d, config="e", loss="task")
    assert [r["config"] for r in bench.rank_candidates([c, e], [0, 1, 2])] == ["c", "e"]
    # no stored loss: plan order
    f = _row("f", "strsbp", [_run(k, 1, h_good) for k in range(3)])
    assert [r["config"] for r in bench.rank_candidates([f, d], [0, 1, 2])] == ["f", "d"]


def test_choose_setting_uses_both_rules(bench):
    rows = [_row("s1", "strsbp", [_run(k, 0, [0.99]) for k in range(3)], "small"),
            _row("b1", "bptt", [_run(k, 0, [0.99]) for k in range(3)], "small"),
            # the big setting: ST-RSBP better, BPTT worse by more -> mean lower
            _row("s2", "strsbp", [_run(k, 0, [0.995]) for k in range(3)], "big"),
            _row("b2", "bptt", [_run(k, 0, [0.98]) for k in range(3)], "big"),
            # a setting one rule did not finish is skipped
            _row("s3", "strsbp", [_run(k, 0, [1.0]) for k in range(3)], "only-one")]
    ch = bench.choose_setting(rows, [0, 1, 2])
    assert ch["setting"] == "small"
    assert {k: v["config"] for k, v in ch["rows"].items()} == {"strsbp": "s1", "bptt": "b1"}
    with pytest.raises(RuntimeError, match="no setting"):
        bench.choose_setting(rows[3:], [0, 1, 2])  # "big" lacks strsbp, "only-one" bptt


def test_prune_first_seed_keeps_rows_near_each_rules_best(bench):
    n = 216
    rows = [_row("s_best", "strsbp", [_run(0, 0, [214 / n])]),
            _row("s_two_below", "strsbp", [_run(0, 0, [212 / n])]),
            _row("s_three_below", "strsbp", [_run(0, 0, [211 / n])]),
            _row("b_only", "bptt", [_run(0, 0, [200 / n])]),   # its own rule's best: kept
            _row("no_seed0", "strsbp", [_run(1, 0, [1.0])])]
    kept = bench.prune_first_seed(rows, 0, 2, n)
    assert [r["config"] for r in kept] == ["s_best", "s_two_below", "b_only"]


def test_run_lock_waits_for_a_live_holder_and_ignores_a_stale_one(bench, tmp_path):
    """Two invocations of a stage never train the same run at once: a run held by a live process is waited for;
    a lock left by a dead process (or none) lets the caller run it."""
    import os
    import subprocess
    import threading

    assert bench._wait_for_other(tmp_path, poll_s=0.01) is False  # no lock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / bench.RUN_LOCK).write_text(dead.stdout.strip())
    assert bench._wait_for_other(tmp_path, poll_s=0.01) is False  # holder gone, no results
    (tmp_path / bench.RUN_LOCK).write_text(str(os.getpid()))  # a live holder that finishes shortly
    timer = threading.Timer(0.2, lambda: (tmp_path / "results.json").write_text("{}"))
    timer.start()
    try:
        assert bench._wait_for_other(tmp_path, poll_s=0.01) is True
    finally:
        timer.cancel()
