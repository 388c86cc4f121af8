"""Accuracy of HM2-BP and ST-RSBP against BPTT on the same network and task, with the rules' options
chosen on the validation split (never the test split), then several seeds of the chosen configuration.

Two stages, each a list of ``snn2hw train`` runs in fresh single-threaded processes (the command is
stored with every run; a run whose ``results.json`` already exists is read back, not re-run, unless
``--rerun``):

* ``tune``: short seed-0 runs of candidate configs (``benchmarks/configs/tune/``); the table is ranked
  by **validation** accuracy, which is what chose the configs of the final stage. Writes
  ``benchmarks/results/spiketrain_tuning.json``.
* ``final``: the chosen config of each rule and BPTT on the same network, several seeds, rules
  interleaved seed by seed. Writes ``benchmarks/results/spiketrain_accuracy.json``. Each later stage
  below writes its own JSON; the Summary of ``docs/learning-rules.md`` takes its rows from several of
  them (its commands table names the JSON of each row), and
  ``python benchmarks/_spiketrain_bench.py report <JSON>`` prints any one's table.

    python benchmarks/bench_spiketrain_accuracy.py tune
    python benchmarks/bench_spiketrain_accuracy.py tune-strsbp      # issue 8: ST-RSBP on Braille, 10 epochs
    python benchmarks/bench_spiketrain_accuracy.py final-strsbp     # its rows, 3 seeds
    python benchmarks/bench_spiketrain_accuracy.py tune-strsbp20    # the same at 20 epochs (options, R256)
    python benchmarks/bench_spiketrain_accuracy.py final-strsbp20   # its rows, 3 seeds x 20 epochs
    python benchmarks/bench_spiketrain_accuracy.py final-strsbp40   # seed 0 x 40 epochs, both rules
    python benchmarks/bench_spiketrain_accuracy.py tune-bins [--only bins8]  # Braille, time-binned input (bins 4/8/16),
                                                                     # both rules, seed 0 x 20 epochs, validation
    python benchmarks/bench_spiketrain_accuracy.py final-bins [--only "bins 8"]  # its choice (bins 8) and the runner-up
                                                                     # (bins 4), both rules, 3 seeds x 20 epochs
    python benchmarks/bench_spiketrain_accuracy.py tune-bins3 --jobs 2  # bins 8 candidates, both rules, seeds 0-2 on
                                                                     # validation (seed-0 pruning); --collect ranks stored runs
    python benchmarks/bench_spiketrain_accuracy.py final-bins3      # its choice, both rules, 5 seeds x 20 epochs
    python benchmarks/bench_spiketrain_accuracy.py tune-bins3-pivot --jobs 2  # exploratory: ST-RSBP min_pivot 0.5
    python benchmarks/bench_spiketrain_accuracy.py tune-bins3-clip --jobs 2   # exploratory: ST-RSBP grad_clip 1
    python benchmarks/bench_spiketrain_accuracy.py tune-bins3-stab --jobs 2   # ST-RSBP stabiliser chosen on seeds 5-9
    python benchmarks/bench_spiketrain_accuracy.py tune-bins-hm2bp   # HM2-BP feed-forward 24K-128-27, K 1/4/8, both rules
    python benchmarks/bench_spiketrain_accuracy.py final-bins-hm2bp  # its choice (bins 8) and 24 channels, both rules, 3 x 20
    python benchmarks/bench_spiketrain_accuracy.py final [--only braille] [--seeds 3]
    python benchmarks/bench_spiketrain_accuracy.py final --collect   # tabulate stored runs, run nothing
    python benchmarks/bench_spiketrain_accuracy.py tune-mnist        # issue 8: HM2-BP options on MNIST-10k
    python benchmarks/bench_spiketrain_accuracy.py final-mnist       # MNIST-10k MLP/recurrent and digits CNN rows
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn          # issue 8: conv/pool nets, calibrated init
    python benchmarks/bench_spiketrain_accuracy.py final-cnn         # digits CNN 3 seeds, paper CNN on MNIST-10k
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn2         # HM2-BP digits CNN: cosine schedule, the papers' MSE loss
    python benchmarks/bench_spiketrain_accuracy.py final-cnn2        # its choice: digits CNN 3 x 3, paper CNN 1 x 1
    python benchmarks/bench_spiketrain_accuracy.py final-cnn3        # paper CNN 3 seeds x 1 epoch, both rules (+ digits CNN
                                                                     # 3 x 15); --collect tabulates the stored runs
    python benchmarks/bench_spiketrain_accuracy.py calib-cnn4        # paper CNN's start: calibration folds, validation
    python benchmarks/bench_spiketrain_accuracy.py final-cnn4        # its choice (per-unit), 3 seeds x 2 epochs, both rules
    python benchmarks/bench_spiketrain_accuracy.py final-cnn4-e1     # the same at one epoch (--collect: stored runs)
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn5         # HM2-BP digits CNN at BPTT's 15 epochs: candidates
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn5-paper   # paper CNN, HM2-BP 1 epoch: cosine over steps
    python benchmarks/bench_spiketrain_accuracy.py final-cnn5        # digits CNN, both rules, 5 seeds x 15 epochs
    python benchmarks/bench_spiketrain_accuracy.py final-cnn5-paper  # paper CNN, tune-cnn5-paper's choice, 3 x 1, both rules
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn6         # HM2-BP digits CNN: hidden rate penalty, 2 seeds
    python benchmarks/bench_spiketrain_accuracy.py final-cnn6        # its choice, 5 seeds, next to final-cnn5's rows
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn6-paper   # the choice on the paper CNN, seed 0, 1 epoch
    python benchmarks/bench_spiketrain_accuracy.py tune-cnn7         # digits CNN, both rules: slower decays, longer window
    python benchmarks/bench_spiketrain_accuracy.py final-cnn7        # its smallest validation gap (T 200), 5 seeds, both rules
    python benchmarks/bench_spiketrain_accuracy.py final-cnn8        # paper CNN, 3 seeds x 2 epochs, both rules, deploy on val
    python benchmarks/bench_spiketrain_accuracy.py depth13           # depth or conv/pool: MLPs with 1-3 hidden layers, a
                                                                     # strided CNN, HM2-BP variants on the digits CNN
    python benchmarks/bench_spiketrain_accuracy.py tune-mnist-e3     # MNIST-10k MLP rows: options at 3 epochs
    python benchmarks/bench_spiketrain_accuracy.py final-mnist-e3    # their rows, 3 seeds x 3 epochs
    python benchmarks/bench_spiketrain_accuracy.py final-mnist-e3 --collect   # tabulate; rows also into
                                                                     # spiketrain_mnist10k_accuracy.json
    python benchmarks/bench_spiketrain_accuracy.py final-mnist-e6    # seed 0 x 6 epochs, both comparisons (--collect: rows also into
                                                                     # spiketrain_mnist10k_accuracy.json)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _spiketrain_bench import ENV, ROOT, _write, command, environment, summarize, table

# (task, rule, config under benchmarks/configs/, epochs): seed 0, compared on validation accuracy
TUNE = [
    ("digits", "hm2bp", "tune/digits_mlp128_t24.json", 8),
    ("digits", "hm2bp", "tune/digits_mlp128_slow.json", 8),
    ("digits", "hm2bp", "tune/digits_mlp128_taskloss.json", 8),
    ("digits", "hm2bp", "tune/digits_mlp128_taskloss_bounds.json", 8),
    ("braille", "strsbp", "braille_rec128.json", 4),
    ("braille", "strsbp", "tune/braille_rec128_taskloss.json", 4),
    ("braille", "strsbp", "tune/braille_rec128_taskloss_bounds.json", 4),
    ("braille", "bptt", "braille_rec128.json", 4),
]
# issue 8, ST-RSBP on Braille at the final rows' length (10 epochs), seed 0, compared on validation accuracy
# (stage ``tune-strsbp``, ``benchmarks/results/strsbp_braille_tuning.json``); ``windows`` is snn2hw's
# sub-window extension of the rule, 1 (absent) the paper's rule
TUNE_STRSBP = [
    ("braille", "strsbp", "braille_rec128.json", 10),
    ("braille", "strsbp", "braille_rec128_strsbp.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_w8.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_taskloss_w8.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_taskloss_w32.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_taskloss_w8_lr1e-2.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_w8_lr1e-2.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_w4.json", 10),
    ("braille", "strsbp", "tune/braille_rec128_w16.json", 10),
]
# issue 8, ST-RSBP on Braille, longer runs (20 epochs; the cosine schedule spans the run), seed 0, compared on
# validation accuracy (stage ``tune-strsbp20``, ``benchmarks/results/strsbp_braille_tuning_e20.json``): the chosen
# 10-epoch setting, its options (self term off, learning rate, shifted windows: ``window_shifts``, the task's loss),
# and a wider recurrent layer (R256) for both rules
TUNE_STRSBP20 = [
    ("braille", "bptt", "braille_rec128.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_w4.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_w4_noself.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_w4_lr2e-3.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_w4_s2.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_taskloss_w4.json", 20),
    ("braille", "bptt", "braille_rec256.json", 20),
    ("braille", "strsbp", "tune/braille_rec256_w4.json", 20),
]
# label, task, config, rule, epochs, seeds
FINAL = [
    ("digits 64-128-10 T60, tuned options", "digits", "digits_mlp128_hm2bp.json", "hm2bp", 15, 3),
    ("digits 64-128-10 T60", "digits", "digits_mlp128.json", "bptt", 15, 3),
    ("braille 24-R128-27 T256, tuned options", "braille", "braille_rec128_strsbp.json", "strsbp", 4, 3),
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "bptt", 4, 3),
    ("braille 24-R128-27 T256, tuned options", "braille", "braille_rec128_strsbp.json", "strsbp", 10, 3),
    ("braille 24-R128-27 T256", "braille", "braille_rec128.json", "bptt", 10, 3),
]
# issue 8, ST-RSBP on Braille: the paper's rule with the papers' loss, the chosen sub-window setting, and BPTT,
# 10 epochs (stage ``final-strsbp``, ``benchmarks/results/strsbp_braille_accuracy.json``). BPTT's seeds 0-1
# at 10 epochs are the runs stored in ``spiketrain_accuracy.json`` (same command and code path), reused.
FINAL_STRSBP = [
    ("braille 24-R128-27 T256, paper's rule and loss", "braille", "braille_rec128.json", "strsbp", 10, 3),
    ("braille 24-R128-27 T256, windows 8 (snn2hw extension)", "braille", "tune/braille_rec128_w8.json", "strsbp",
     10, 3),
    ("braille 24-R128-27 T256, windows 4 (snn2hw extension), chosen on validation", "braille",
     "tune/braille_rec128_w4.json", "strsbp", 10, 3),
    ("braille 24-R128-27 T256 (BPTT reference)", "braille", "braille_rec128.json", "bptt", 10, 3),
]
# issue 8, ST-RSBP on Braille at 20 epochs (stage ``final-strsbp20``, ``benchmarks/results/strsbp_braille_accuracy_e20.json``):
# the setting chosen on validation at 20 epochs and BPTT on the same network, 3 seeds
FINAL_STRSBP20 = [
    ("braille 24-R128-27 T256, windows 4 (snn2hw extension), lr 2e-3, chosen on validation", "braille",
     "tune/braille_rec128_w4_lr2e-3.json", "strsbp", 20, 3),
    ("braille 24-R128-27 T256, windows 4 (snn2hw extension), lr 5e-3 (the 10-epoch choice)", "braille",
     "tune/braille_rec128_w4.json", "strsbp", 20, 3),
    ("braille 24-R128-27 T256 (BPTT reference)", "braille", "braille_rec128.json", "bptt", 20, 3),
]
# seed 0 only, 40 epochs: does the gap shrink with a longer run? (stage ``final-strsbp40``)
FINAL_STRSBP40 = [
    ("braille 24-R128-27 T256, windows 4 (snn2hw extension), lr 2e-3", "braille", "tune/braille_rec128_w4_lr2e-3.json",
     "strsbp", 40, 1),
    ("braille 24-R128-27 T256 (BPTT reference)", "braille", "braille_rec128.json", "bptt", 40, 1),
]
# issue 8, MNIST-10k (fixed split: images 0-6999 train, 7000-7999 validation, 8000-9999 test): HM2-BP with
# the papers' MSE count loss against the options chosen on digits (count cross-entropy, ``count_bounds``),
# seed 0, one epoch, compared on validation accuracy (stage ``tune-mnist``,
# ``benchmarks/results/spiketrain_mnist10k_tuning.json``)
TUNE_MNIST = [
    ("mnist10k", "hm2bp", "mnist10k_mlp100.json", 1),
    ("mnist10k", "hm2bp", "tune/mnist10k_mlp100_taskloss_bounds.json", 1),
    # the digits CNN: BPTT stayed near chance with the first recipe (``digits_cnn.json``); two other recipes,
    # seed 0, 4 epochs, validation accuracy (BPTT stayed near chance with both too)
    ("digits", "bptt", "tune/digits_cnn_pad.json", 4),
    ("digits", "bptt", "tune/digits_cnn_lr1e-3.json", 4),
    # diagnosis, not a candidate: the conv layers without the pools (15c3-40c3-300-10) do train with BPTT
    ("digits", "bptt", "tune/digits_cnn_nopool.json", 4),
]
# issue 8: the MNIST-10k and CNN rows (stage ``final-mnist``, ``benchmarks/results/spiketrain_mnist10k_accuracy.json``);
# HM2-BP's seed 0 on 784-100-10 is the chosen candidate's tuning run (same command). The digits CNN is the
# paper's 15c5-p2-40c5-p2-300-10 pattern with kernels that fit 8x8 images: 15c3-p2-40c2-p2-300-10
# (8x8 -> 6x6 -> 3x3 -> 2x2 -> 1x1 x 40 -> 300 -> 10); ``tune/digits_cnn_pad.json`` is the same pattern with
# 3x3 kernels padded by 1 (8x8 -> 8x8 -> 4x4 -> 4x4 -> 2x2 x 40 -> 300 -> 10)
FINAL_MNIST = [
    ("mnist10k 784-100-10 T100", "mnist10k", "tune/mnist10k_mlp100_taskloss_bounds.json", "hm2bp", 1, 3),
    ("mnist10k 784-100-10 T100", "mnist10k", "mnist10k_mlp100.json", "bptt", 1, 3),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "strsbp", 1, 3),
    ("mnist10k 784-R100-10 T100", "mnist10k", "mnist10k_rec100.json", "bptt", 1, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60", "digits", "digits_cnn_hm2bp.json", "hm2bp", 4, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60", "digits", "digits_cnn.json", "bptt", 4, 3),
    ("digits conv 15c3-40c3-300-10 T60 (no pools)", "digits", "tune/digits_cnn_nopool_hm2bp.json", "hm2bp", 4, 3),
    ("digits conv 15c3-40c3-300-10 T60 (no pools)", "digits", "tune/digits_cnn_nopool.json", "bptt", 4, 3),
    ("mnist10k 784-800-10 T100", "mnist10k", "mnist10k_mlp800_hm2bp.json", "hm2bp", 1, 3),
    ("mnist10k 784-800-10 T100", "mnist10k", "mnist10k_mlp800.json", "bptt", 1, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50", "mnist10k", "mnist10k_cnn_hm2bp.json", "hm2bp", 1, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50", "mnist10k", "mnist10k_cnn.json", "bptt", 1, 3),
]
# issue 8, conv/pool networks after the fix (``snn2hw.nn.calibrate``: the trainer's default data-driven
# init sets each spiking layer's threshold so it fires at 0.1 per step on the first batch; configs unchanged).
# Stage ``tune-cnn`` (``benchmarks/results/spiketrain_cnn_tuning.json``), compared on validation with the
# previous round's uncalibrated runs of the same command (``spiketrain_mnist10k_accuracy.json``, 4 epochs):
# HM2-BP with and without calibration (BPTT without it stays at chance, so it has no choice to make).
TUNE_CNN = [
    ("digits", "hm2bp", "digits_cnn_hm2bp.json", 4),
    # HM2-BP's learning rate on the digits CNN at the row's length (its validation peaked within 2-6 epochs at
    # 5e-3, the MLP's rate, and then fell); the 5e-3 candidate at 10 epochs is seed 0 of the final row
    ("digits", "hm2bp", "digits_cnn_hm2bp.json", 10),
    ("digits", "hm2bp", "tune/digits_cnn_hm2bp_lr2e-3.json", 10),
    ("digits", "hm2bp", "tune/digits_cnn_hm2bp_lr1e-3.json", 10),
]
# stage ``final-cnn`` (``benchmarks/results/spiketrain_cnn_accuracy.json``); the MNIST-10k rows are what fitted
# the 2-core machine shared by five engineers (one seed, one epoch)
FINAL_CNN = [
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60", "digits", "digits_cnn_hm2bp.json", "hm2bp", 10, 3),
    # HM2-BP at the learning rate chosen by stage ``tune-cnn`` (1e-3: validation 74.3 against 74.0 at 2e-3 and
    # 63.2 at 5e-3, seed 0, 10 epochs)
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP lr 1e-3 (chosen on validation)", "digits",
     "tune/digits_cnn_hm2bp_lr1e-3.json", "hm2bp", 10, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60", "digits", "digits_cnn.json", "bptt", 15, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50", "mnist10k", "mnist10k_cnn_hm2bp.json", "hm2bp", 1, 1),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50", "mnist10k", "mnist10k_cnn.json", "bptt", 1, 1),
]
# issue 8, HM2-BP on the digits CNN after the diagnosis of ``benchmarks/diag_cnn_hm2bp.py`` (every hidden layer's
# rate climbs from 0.1 to 0.3 per step within 4 epochs at a constant rate, the outputs stop being selective, and
# training and validation accuracy fall with it; ``benchmarks/diag_cnn_gradcos.py``: HM2-BP's update then raises
# every layer's weights while BPTT's lowers the output's): stage ``tune-cnn2``
# (``benchmarks/results/spiketrain_cnn_tuning2.json``), seed 0, compared on validation with ``tune-cnn``'s 1e-3
# (74.3 %, 10 epochs): a cosine schedule from 2e-3 (it anneals before the drift), and the papers' MSE loss on
# counts (targets 18 / 3, margin 3 at T = 60), which names a low target for every wrong output, with the same
# schedule. (A third candidate, cosine 2e-3 with 3 virtual spikes for a silent label output, was stopped after
# 2 epochs, validation 71.5 / 66.0 %, to free the core.)
TUNE_CNN2 = [
    ("digits", "hm2bp", "tune/digits_cnn_hm2bp_cos2e-3.json", 5),
    ("digits", "hm2bp", "tune/digits_cnn_hm2bp_mse_cos2e-3.json", 3),
]
# stage ``final-cnn2`` (``benchmarks/results/spiketrain_cnn_accuracy2.json``): ``tune-cnn2``'s choice (the papers' MSE,
# validation 84.0 % against 72.2 % for cosine alone and 74.3 % for ``tune-cnn``'s best), 3 seeds x 3 epochs (seed 0
# is its tuning run), and the same options on the paper's CNN on MNIST-10k, 1 seed x 1 epoch (what fitted the
# shared machine; its options come from the digits CNN, not from MNIST-10k's validation split). BPTT's rows are
# ``final-cnn``'s (digits 3 x 15, MNIST-10k 1 x 1).
FINAL_CNN2 = [
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 3, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, HM2-BP papers' MSE, cosine 2e-3", "mnist10k",
     "tune/mnist10k_cnn_hm2bp_mse_cos.json", "hm2bp", 1, 1),
    # the chosen options at 10 epochs (seed 0): does the gap to BPTT's 15-epoch row shrink with a longer run?
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, 10 epochs", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 10, 1),
    # and at BPTT's length, 3 seeds x 15 epochs (a quiet epoch takes about 6 s)
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, 15 epochs", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 3),
]
# stage ``final-cnn3`` (``benchmarks/results/spiketrain_cnn_accuracy3.json``): the paper's CNN on MNIST-10k with 3 seeds
# x 1 epoch for both rules (HM2-BP with ``final-cnn2``'s options, whose seed-0 run is seed 0 here; BPTT with
# ``final-cnn``'s config, whose seed-0 run is seed 0 here), next to the digits CNN rows at 15 epochs, so that one
# file holds both networks' comparison. Run with ``--collect`` after the runs: every row's directory is
# ``out/bench_accuracy/{task}-{config stem}-{rule}-e{epochs}-s{seed}``.
FINAL_CNN3 = [
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, HM2-BP papers' MSE, cosine 2e-3", "mnist10k",
     "tune/mnist10k_cnn_hm2bp_mse_cos.json", "hm2bp", 1, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_cnn.json", "bptt", 1, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, BPTT Adam 5e-3 constant", "digits", "digits_cnn.json", "bptt", 15, 3),
]
# issue 8, the paper's CNN's slow start (seed 1 trailed for both rules after one epoch): stage ``calib-cnn4``
# (``benchmarks/results/spiketrain_cnn_calib_start.json``) runs ``benchmarks/diag_cnn_calib_start.py``, BPTT for the
# first 1,600 training images (50 Adam steps) after each calibration ``fold`` (``snn2hw.nn.calibrate``), and
# compares the whole validation split. (seed, fold) pairs; each JSON is ``out/calib_start/bptt-s{seed}-{fold}.json``.
# Chosen: "neurons" (seeds 0/1/2: 67.3/60.4/67.2 % against 63.4/23.6/71.7 % for one threshold per layer, and
# 26.2 % for "output" on seed 1).
CALIB_CNN4 = [(1, "none"), (1, "output"), (0, "none"), (1, "neurons"), (0, "neurons"), (2, "neurons"), (2, "none")]
CALIB_CNN4_CONFIG, CALIB_CNN4_SAMPLES = "mnist10k_cnn.json", 1600
# its choice (``fold="neurons"``) on the paper's CNN, both rules (HM2-BP with ``final-cnn3``'s options, chosen on
# MNIST-10k's validation split: papers' MSE + cosine 87.5 % against 58.1 % for the count cross-entropy, seed 0, one
# epoch): stage ``final-cnn4`` (``benchmarks/results/spiketrain_cnn_accuracy4.json``) 3 seeds x 2 epochs, and
# ``final-cnn4-e1`` (``benchmarks/results/spiketrain_cnn_accuracy4_e1.json``) at one epoch, next to ``final-cnn3``.
FINAL_CNN4 = [
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, HM2-BP papers' MSE, cosine 2e-3", "mnist10k",
     "tune/mnist10k_cnn_hm2bp_mse_cos_neurons.json", "hm2bp", 2, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, BPTT Adam 2e-3 constant", "mnist10k",
     "tune/mnist10k_cnn_neurons.json", "bptt", 2, 3),
]
FINAL_CNN4_E1 = [row[:4] + (1, 3) for row in FINAL_CNN4]
REUSE_STRSBP = {("braille_rec128.json", "bptt", 10): ("spiketrain_accuracy.json", [0, 1])}
# issue 8, HM2-BP on the digits CNN at BPTT's budget (15 epochs, whose 3 BPTT seeds are ``final-cnn``'s): stage
# ``tune-cnn5`` (``benchmarks/results/spiketrain_cnn_tuning5.json``), seeds 0 and 1, compared on validation with
# ``final-cnn2``'s 15-epoch runs (the same commands: stored runs are reused). Candidate: the label's target count
# 30 (half of T) instead of 18 (``benchmarks/diag_cnn_readout.py``: HM2-BP's label outputs fire 15 spikes, 10 above
# the largest wrong one; BPTT's fire 34, 29 above). Tried and stopped (seed 0, the stopped runs' logs are quoted in
# the docs): the same cosine 2e-3 over 30 epochs (validation collapsed from 89.9 % to 58.7 % by epoch 16 at lr
# 1.7e-3; training accuracy 91.7 -> 73.9 %), and per-unit calibration (``calibrate_fold: "neurons"``; 80.2 % after
# 5 epochs against 86.5 % without, training accuracy 82.0 against 87.5 %).
TUNE_CNN5 = [
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, targets 18/3, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, targets 30/3, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_t30_cos2e-3.json", "hm2bp", 15, 2),
    # against the drift that ended the 30-epoch run (hidden rates 0.08 -> 0.18-0.24 by epoch 16): AdamW's decoupled
    # weight decay 0.5 (the Braille FA rows' value), seed 0
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, targets 18/3, cosine 2e-3, AdamW decay 0.5", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_wd0.5.json", "hm2bp", 15, 1),
]
# stage ``final-cnn5`` (``benchmarks/results/spiketrain_cnn_accuracy5.json``): ``tune-cnn5`` chose no new option, so the
# digits CNN rows of ``final-cnn3`` (HM2-BP's and BPTT's seeds 0-2: the same commands, reused) with more seeds, to
# measure the gap's spread; seeds beyond the last stored one were run as the time allowed (``--collect``).
FINAL_CNN5 = [
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 5),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, BPTT Adam 5e-3 constant", "digits", "digits_cnn.json", "bptt", 15, 5),
]
# stage ``tune-cnn5-paper`` (``benchmarks/results/spiketrain_cnn_tuning5_paper.json``): the paper's CNN on MNIST-10k,
# HM2-BP, seed 0, one epoch, compared on validation with ``final-cnn4-e1``'s seed 0 (the same command: reused).
# ``scheduler: "cosine"`` steps once per epoch, so a 1-epoch run trains at a constant 2e-3; candidate: the same
# cosine over every optimizer step (``"cosine_steps"``). ``diag_cnn_readout.py`` on ``final-cnn4-e1``'s seed 0: the
# label output is silent on 13.1 % of the validation images (BPTT's 0.5 %), and training accuracy over the
# epoch equals BPTT's (71 / 70 %) while validation at its end does not (80.7 / 92.3 %). Stopped (seed 0, one epoch
# not finished in the time left): the label target 25 instead of 15 (``tune/mnist10k_cnn_hm2bp_mse_t25_cos_neurons.json``;
# on the digits CNN the larger target doubled the label's margin but not the accuracy).
TUNE_CNN5_PAPER = [
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, HM2-BP papers' MSE, constant 2e-3", "mnist10k",
     "tune/mnist10k_cnn_hm2bp_mse_cos_neurons.json", "hm2bp", 1, 1),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, HM2-BP papers' MSE, cosine over steps 2e-3",
     "mnist10k", "tune/mnist10k_cnn_hm2bp_mse_cossteps_neurons.json", "hm2bp", 1, 1),
]
# issue 8, MNIST-10k MLP rows at 3 epochs (stage ``tune-mnist-e3``, ``benchmarks/results/spiketrain_mnist10k_tuning_e3.json``),
# seed 0, compared on validation accuracy (images 7000-7999):
# * BPTT's learning rate and schedule at the rows' length (3 epochs): last round's constant 2e-3, cosine from 2e-3
#   (cosine: to 0 over the run), constant 5e-3, and on 784-100-10 cosine from 1e-3 (not on 784-R100-10: no time);
# * ST-RSBP's loss, at 1 epoch with last round's constant 2e-3 (so that it compares with last round's seed-0 run of
#   the papers' MSE, ``mnist10k_rec100.json``, validation 88.3 %, stored in ``spiketrain_mnist10k_accuracy.json``):
#   the count cross-entropy with ``count_bounds``, HM2-BP's choice on digits and MNIST-10k; then ST-RSBP's options
#   that might close its gap to BPTT: 4 sub-windows (``windows: 4``, chosen on Braille) and Adam 5e-3.
# HM2-BP keeps the options chosen on validation last round (``tune-mnist``). The spike-train rules' rows use the
# cosine schedule (3 epochs); the chosen BPTT candidate's seed-0 run is seed 0 of its ``final-mnist-e3`` row.
TUNE_MNIST_E3 = [
    ("mnist10k", "bptt", "mnist10k_mlp100.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_mlp100_cos.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_mlp100_lr1e-3_cos.json", 3),
    ("mnist10k", "bptt", "mnist10k_rec100.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_rec100_cos.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_mlp100_lr5e-3.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_rec100_lr5e-3.json", 3),
    ("mnist10k", "strsbp", "tune/mnist10k_rec100_taskloss_bounds.json", 1),
    ("mnist10k", "strsbp", "tune/mnist10k_rec100_w4.json", 1),
    ("mnist10k", "strsbp", "tune/mnist10k_rec100_lr5e-3.json", 1),
    # 784-800-10: BPTT at 2e-3 constant (the 784-100-10 choice) trails HM2-BP by 4 points on seed 0, so a lower,
    # decaying rate is checked on validation (the 2e-3 candidate's seed-0 run is seed 0 of its final row)
    ("mnist10k", "bptt", "mnist10k_mlp800.json", 3),
    ("mnist10k", "bptt", "tune/mnist10k_mlp800_lr1e-3_cos.json", 3),
    # and the same rate for HM2-BP, so that both rules get the candidate (its 2e-3 run is seed 0 of its final row)
    ("mnist10k", "hm2bp", "tune/mnist10k_mlp800_taskloss_bounds_cos.json", 3),
    ("mnist10k", "hm2bp", "tune/mnist10k_mlp800_taskloss_bounds_lr1e-3_cos.json", 3),
]
# issue 8: the MNIST-10k MLP rows, 3 seeds x 3 epochs, options from ``tune-mnist-e3`` (stage ``final-mnist-e3``,
# ``benchmarks/results/spiketrain_mnist10k_accuracy.json``, where the 1-epoch rows of ``final-mnist`` are kept)
FINAL_MNIST_E3 = [
    ("mnist10k 784-100-10 T100, 3 epochs, HM2-BP count CE + bounds, cosine 2e-3", "mnist10k",
     "tune/mnist10k_mlp100_taskloss_bounds_cos.json", "hm2bp", 3, 3),
    ("mnist10k 784-R100-10 T100, 3 epochs, ST-RSBP papers' MSE, cosine 5e-3", "mnist10k",
     "tune/mnist10k_rec100_lr5e-3_cos.json", "strsbp", 3, 3),
    ("mnist10k 784-R100-10 T100, 3 epochs, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_rec100.json", "bptt", 3, 3),
    ("mnist10k 784-100-10 T100, 3 epochs, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_mlp100.json", "bptt", 3, 3),
    # the paper's 784-800-10 with each rule's options chosen on validation on 784-100-10 (``tune-mnist-e3``);
    # not tuned again on 784-800-10, whose epochs cost 2-4x as much
    ("mnist10k 784-800-10 T100, 3 epochs, HM2-BP count CE + bounds, cosine 2e-3", "mnist10k",
     "tune/mnist10k_mlp800_taskloss_bounds_cos.json", "hm2bp", 3, 3),
    ("mnist10k 784-800-10 T100, 3 epochs, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_mlp800.json", "bptt", 3, 3),
    # BPTT's rate chosen on 784-800-10's validation split (``tune-mnist-e3``: 95.4 % against 91.0 % at 2e-3)
    ("mnist10k 784-800-10 T100, 3 epochs, BPTT Adam cosine 1e-3 (chosen on validation)", "mnist10k",
     "tune/mnist10k_mlp800_lr1e-3_cos.json", "bptt", 3, 3),
    # HM2-BP's rate chosen the same way (``tune-mnist-e3``: 95.3 % against 95.2 % at 2e-3)
    ("mnist10k 784-800-10 T100, 3 epochs, HM2-BP count CE + bounds, cosine 1e-3 (chosen on validation)", "mnist10k",
     "tune/mnist10k_mlp800_taskloss_bounds_lr1e-3_cos.json", "hm2bp", 3, 3),
]
# seed 0 only, 6 epochs (stage ``final-mnist-e6``, ``benchmarks/results/spiketrain_mnist10k_accuracy_e6.json``): does
# the 3-epoch comparisons (ST-RSBP and BPTT on 784-R100-10, HM2-BP and BPTT on 784-100-10) hold with twice the epochs?
FINAL_MNIST_E6 = [
    ("mnist10k 784-R100-10 T100, 6 epochs, ST-RSBP papers' MSE, cosine 5e-3", "mnist10k",
     "tune/mnist10k_rec100_lr5e-3_cos.json", "strsbp", 6, 1),
    ("mnist10k 784-R100-10 T100, 6 epochs, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_rec100.json", "bptt", 6, 1),
    ("mnist10k 784-100-10 T100, 6 epochs, HM2-BP count CE + bounds, cosine 2e-3", "mnist10k",
     "tune/mnist10k_mlp100_taskloss_bounds_cos.json", "hm2bp", 6, 1),
    ("mnist10k 784-100-10 T100, 6 epochs, BPTT Adam 2e-3 constant", "mnist10k", "mnist10k_mlp100.json", "bptt", 6, 1),
]
# the candidate (82.7 % against 80.7 % on seed 0) at 3 seeds x 1 epoch (stage ``final-cnn5-paper``,
# ``benchmarks/results/spiketrain_cnn_accuracy5_paper.json``), next to ``final-cnn4-e1``'s BPTT rows (the same
# commands: reused; BPTT's constant 2e-3 was not re-tuned with the per-step schedule). Seeds 1 and 2 reversed the
# choice: validation 82.7 / 76.4 / 79.8 % (mean 79.6) against the constant rate's 80.7 / 84.9 / 78.1 % (mean 81.2),
# so ``final-cnn4-e1``'s HM2-BP row stays the paper CNN's row.
FINAL_CNN5_PAPER = [TUNE_CNN5_PAPER[1][:5] + (3,), FINAL_CNN4_E1[1]]
# issue 8, a hidden-activity term for HM2-BP on the digits CNN (stage ``tune-cnn6``,
# ``benchmarks/results/spiketrain_cnn_tuning6.json``): ``benchmarks/diag_cnn_readout.py`` found HM2-BP's hidden code
# dense (every conv2 / pool2 / dense unit fires, rates 0.08-0.15) where BPTT's is sparse (5-21 % of the units off,
# rates 0.04-0.09), and nothing in the rule tells a hidden unit that "off" is better (the rate model gives a unit
# below threshold no gradient, ``count_bounds`` drops pushes below zero). Candidates: ``rate_penalty`` lambda in
# ``E_r = lambda sum_j max(0, o_j / T - rate_target)`` over every hidden unit (conv, pool, dense), whose gradient
# ``lambda / T`` per firing unit enters HM2-BP's hidden error. Scale: at epoch 2 of seed 0 the hidden layers'
# per-sample errors on firing units have medians 0.06 (conv1) to 1.3 (pool2) per count; lambda / T = 0.017 / 0.05 /
# 0.17 for lambda 1 / 3 / 10 at T = 60. Seeds 0 and 1, compared on validation with ``final-cnn5``'s HM2-BP runs (the
# same command: stored runs reused).
TUNE_CNN6 = [
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 0.1", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp0.1.json", "hm2bp", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 0.3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp0.3.json", "hm2bp", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 1", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp1.json", "hm2bp", 15, 2),
    # 3 and 10 (seed 0 only): validation 86.1 / 71.2 %, hidden rates down to 0.01-0.03; no second seed
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp3.json", "hm2bp", 15, 1),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 10", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp10.json", "hm2bp", 15, 1),
    # a target: only rates above 0.05 (the low end of BPTT's hidden rates) penalised
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 1 above rate 0.05", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_rp1_t0.05.json", "hm2bp", 15, 2),
]
REUSE_CNN6 = {("tune/digits_cnn_hm2bp_mse_cos2e-3.json", "hm2bp", 15): ("spiketrain_cnn_accuracy5.json", [0, 1, 2, 3, 4]),
              ("digits_cnn.json", "bptt", 15): ("spiketrain_cnn_accuracy5.json", [0, 1, 2, 3, 4])}
# stage ``final-cnn6`` (``benchmarks/results/spiketrain_cnn_accuracy6.json``): ``tune-cnn6``'s choice, rate_penalty 0.3
# (2-seed validation mean 94.97 % against 94.27 % without the term), 5 seeds, next to ``final-cnn5``'s HM2-BP and
# BPTT rows (the same commands: stored runs reused, BPTT not re-run).
FINAL_CNN6 = [TUNE_CNN6[2][:5] + (5,), TUNE_CNN6[0][:5] + (5,),
              ("digits CNN 15c3-p2-40c2-p2-300-10 T60, BPTT Adam 5e-3 constant", "digits", "digits_cnn.json", "bptt", 15,
               5)]
# stage ``tune-cnn6-paper`` (``benchmarks/results/spiketrain_cnn_tuning6_paper.json``): the digits CNN's choice on the
# paper's CNN, HM2-BP, one epoch, compared on validation with ``final-cnn4-e1``'s runs (reused); seed 0 first (83.4 %
# against 80.7 %), then seeds 1 and 2, as ``tune-cnn5-paper``'s seed-0 lead was reversed by them
TUNE_CNN6_PAPER = [FINAL_CNN4_E1[0][:5] + (3,),
                   ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, HM2-BP papers' MSE, cosine 2e-3 "
                    "(constant over 1 epoch), rate_penalty 0.3", "mnist10k",
                    "tune/mnist10k_cnn_hm2bp_mse_cos_neurons_rp0.3.json", "hm2bp", 1, 3)]
REUSE_CNN6_PAPER = {("tune/mnist10k_cnn_hm2bp_mse_cos_neurons.json", "hm2bp", 1):
                    ("spiketrain_cnn_accuracy4_e1.json", [0, 1, 2])}
# issue 8, round 11: HM2-BP is a rate-level approximation (o ~= a / v_th, d e / d o ~= e / o) designed for the paper's
# slow neuron (tau_s 8, tau_m 64, T 400); the digits CNN runs a leaky one (du 0.25, dv 0.1: tau_s 4, tau_m 10) at
# T = 60 with 2-6 spikes per hidden unit. Stage ``tune-cnn7`` (``benchmarks/results/spiketrain_cnn_tuning7.json``):
# both rules on the same changed network, seeds 0 and 1, 15 epochs, compared on validation with ``final-cnn5``'s
# runs of the current network (reused): the paper's decays (du 1/8, dv 1/64; deployable, no refractory period), an
# intermediate (du 1/8, dv 1/32), a longer window (T 120: the default targets scale to 36 / 6, margin 6) and both.
# Calibration (``calibrate_rate`` "auto", 0.1) sets each layer's threshold for the new neuron and window.
TUNE_CNN7 = [FINAL_CNN5[0][:5] + (3,), FINAL_CNN5[1][:5] + (3,)] + [
    row for name, what, n in (("slow", "du 1/8 dv 1/64 T60", 2), ("mid", "du 1/8 dv 1/32 T60", 2),
                              ("t120", "du 1/4 dv 1/10 T120", 3), ("slow_t120", "du 1/8 dv 1/64 T120", 2))
    for row in ((f"digits CNN 15c3-p2-40c2-p2-300-10 {what}, HM2-BP papers' MSE, cosine 2e-3", "digits",
                 f"tune/digits_cnn_hm2bp_mse_cos2e-3_{name}.json", "hm2bp", 15, n),
                (f"digits CNN 15c3-p2-40c2-p2-300-10 {what}, BPTT Adam 5e-3 constant", "digits",
                 f"tune/digits_cnn_{name}.json", "bptt", 15, n))] + [
    # the paper's decays lowered HM2-BP's validation on both seeds (rates drifted up to 0.28-0.32): a lower rate, the
    # hidden-rate term against the drift, and the paper's refractory neuron (t_ref 2, deployed without it), seed 0
    # (the rate term also seed 1); then a longer window still (T 200: targets 60 / 10, margin 10). The windows
    # (T 120, T 200), the only candidates whose 2-seed gap was not clearly larger, got a third seed next to the
    # current network's seed 2 (reused)
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/8 dv 1/64 T60, HM2-BP papers' MSE, cosine 1e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos1e-3_slow.json", "hm2bp", 15, 1),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/8 dv 1/64 T60, HM2-BP papers' MSE, cosine 5e-4", "digits",
     "tune/digits_cnn_hm2bp_mse_cos5e-4_slow.json", "hm2bp", 15, 1),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/8 dv 1/64 T60, HM2-BP papers' MSE, cosine 2e-3, rate_penalty 0.3",
     "digits", "tune/digits_cnn_hm2bp_mse_cos2e-3_slow_rp0.3.json", "hm2bp", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/8 dv 1/64 T60, HM2-BP on the refractory neuron (t_ref 2), papers' MSE, "
     "cosine 2e-3", "digits", "tune/digits_cnn_hm2bp_mse_cos2e-3_orig.json", "hm2bp", 15, 1),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/4 dv 1/10 T200, HM2-BP papers' MSE, cosine 2e-3", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_t200.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/4 dv 1/10 T200, BPTT Adam 5e-3 constant", "digits",
     "tune/digits_cnn_t200.json", "bptt", 15, 3),
    # BPTT's T 200 validation (95.7 %) fell below its T 60 one (96.4): its learning rate re-chosen for the window,
    # seeds 0 and 1, so that T 200's smaller gap is not BPTT's settings
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/4 dv 1/10 T200, BPTT Adam 2e-3 constant", "digits",
     "tune/digits_cnn_t200_lr2e-3.json", "bptt", 15, 2),
    ("digits CNN 15c3-p2-40c2-p2-300-10 du 1/4 dv 1/10 T200, BPTT Adam cosine 5e-3", "digits",
     "tune/digits_cnn_t200_cos5e-3.json", "bptt", 15, 2)]
REUSE_CNN7 = REUSE_CNN6
# stage ``final-cnn7`` (``benchmarks/results/spiketrain_cnn_accuracy7.json``): no candidate closed most of the gap on
# validation (T 200 the smallest: 1.39 points over 3 seeds against 2.20, from BPTT's lower validation, not HM2-BP's
# gain; BPTT's 5e-3 constant stayed its best rate there), so nothing replaces the current rows. T 200, both rules,
# 5 seeds (seeds 0-2 are ``tune-cnn7``'s runs: the same commands, re-read), next to ``final-cnn5``'s rows (reused),
# so that the test split says what the validation's smallest gap is worth.
FINAL_CNN7 = [TUNE_CNN7[-4][:5] + (5,), TUNE_CNN7[-3][:5] + (5,), FINAL_CNN5[0], FINAL_CNN5[1]]
# stage ``final-cnn8`` (``benchmarks/results/spiketrain_cnn_accuracy8.json``): the paper's CNN on MNIST-10k at 2
# epochs per seed (its rows of record are 1 epoch), both rules with ``final-cnn4``'s options, each deployed by the
# quantizer that classifies the validation split better (the straight one or the spike-matching scale search; the
# configs' ``"deploy"`` key), so that one command per seed gives the deployed row.
FINAL_CNN8 = [
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, HM2-BP papers' MSE, cosine 2e-3, deploy chosen "
     "on validation", "mnist10k", "tune/mnist10k_cnn_hm2bp_mse_cos_neurons_ss.json", "hm2bp", 2, 3),
    ("mnist10k CNN 15c5-p2-40c5-p2-300-10 T50, per-unit calibration, BPTT Adam 2e-3 constant, deploy chosen on "
     "validation", "mnist10k", "tune/mnist10k_cnn_neurons_ss.json", "bptt", 2, 3),
]
# issue 8, round 13: is HM2-BP's gap to BPTT on the CNNs depth or conv/pool? Stage ``depth13``
# (``benchmarks/results/spiketrain_depth13.json``), 15 epochs, compared on validation: the digits MLP rows' options
# on 1-3 hidden layers, uncalibrated (the MLP rows' setting) and calibrated to rate 0.1 (the CNNs' start), 5 seeds for
# the calibrated 128-wide nets; the CNN's HM2-BP options on the calibrated MLPs; the digits CNN with strided convs in
# place of the pools (3 hidden spiking layers, the same map sizes); HM2-BP variants on the digits CNN
# (``pre_derivative: "uniform"``, no ``count_bounds``, no calibration, calibration to rate 0.3).
_MLP = "digits MLP 64-{}-10 T60{}"
DEPTH13 = [
    row for width, stem in (("128", "128"), ("128-128", "128x2"), ("128-128-128", "128x3"))
    for row in ((_MLP.format(width, ", HM2-BP MLP options"), "digits",
                 "digits_mlp128_hm2bp.json" if stem == "128" else f"tune/digits_mlp{stem}_hm2bp.json", "hm2bp", 15, 3),
                (_MLP.format(width, ", BPTT"), "digits",
                 "digits_mlp128.json" if stem == "128" else f"tune/digits_mlp{stem}.json", "bptt", 15, 3),
                (_MLP.format(width, ", calibrated 0.1, HM2-BP MLP options"), "digits",
                 f"tune/digits_mlp{stem}_cal_hm2bp.json", "hm2bp", 15, 5),
                (_MLP.format(width, ", calibrated 0.1, BPTT"), "digits", f"tune/digits_mlp{stem}_cal.json", "bptt", 15, 5))
] + [
    (_MLP.format("300-300", ", calibrated 0.1, HM2-BP MLP options"), "digits", "tune/digits_mlp300x2_cal_hm2bp.json",
     "hm2bp", 15, 3),
    (_MLP.format("300-300", ", calibrated 0.1, BPTT"), "digits", "tune/digits_mlp300x2_cal.json", "bptt", 15, 3),
    (_MLP.format("128", ", calibrated 0.1, HM2-BP CNN options"), "digits",
     "tune/digits_mlp128_cal_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 3),
    (_MLP.format("128-128-128", ", calibrated 0.1, HM2-BP CNN options"), "digits",
     "tune/digits_mlp128x3_cal_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 3),
    # the hidden-rate term (``rate_penalty`` 0.3, the value tried on the CNNs) on the calibrated MLPs: on HM2-BP's
    # trained calibrated MLPs the hidden rates drift from 0.1 to 0.3-0.6, deeper layers most; 1 on 3 layers, seeds 0-2
    *[(_MLP.format(width, f", calibrated 0.1, HM2-BP MLP options, rate_penalty {rp}"), "digits",
       f"tune/digits_mlp{stem}_cal_hm2bp_rp{rp}.json", "hm2bp", 15, n)
      for width, stem, rp, n in (("128", "128", "0.3", 5), ("128-128", "128x2", "0.3", 5),
                                 ("128-128-128", "128x3", "0.3", 5), ("128-128-128", "128x3", "1", 3),
                                 ("300-300", "300x2", "0.3", 3))],
    # the term from the uncalibrated start (the MLP rows' setting), 3 seeds
    (_MLP.format("128", ", HM2-BP MLP options, rate_penalty 0.3"), "digits", "tune/digits_mlp128_hm2bp_rp0.3.json",
     "hm2bp", 15, 3),
    (_MLP.format("128-128-128", ", HM2-BP MLP options, rate_penalty 0.3"), "digits",
     "tune/digits_mlp128x3_hm2bp_rp0.3.json", "hm2bp", 15, 3),
    ("digits CNN 15c4s2-40c3-300-10 T60 (strided, no pools), HM2-BP current options, rate_penalty 0.3", "digits",
     "tune/digits_cnn_strided_hm2bp_mse_cos2e-3_rp0.3.json", "hm2bp", 15, 3),
    # the MLPs' count cross-entropy with the rate term on the CNN (the cross-entropy drifted there; the term holds the
    # MLPs' rates): cosine from 2e-3 and Adam 5e-3 constant
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP count cross-entropy, cosine 2e-3, rate_penalty 0.3", "digits",
     "tune/digits_cnn_hm2bp_task_cos2e-3_rp0.3.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP count cross-entropy, Adam 5e-3, rate_penalty 0.3", "digits",
     "tune/digits_cnn_hm2bp_task_rp0.3.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP current options", "digits", "tune/digits_cnn_hm2bp_mse_cos2e-3.json",
     "hm2bp", 15, 5),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, BPTT", "digits", "digits_cnn.json", "bptt", 15, 5),
    ("digits CNN 15c4s2-40c3-300-10 T60 (strided, no pools), HM2-BP current options", "digits",
     "tune/digits_cnn_strided_hm2bp_mse_cos2e-3.json", "hm2bp", 15, 5),
    ("digits CNN 15c4s2-40c3-300-10 T60 (strided, no pools), BPTT", "digits", "tune/digits_cnn_strided.json", "bptt",
     15, 5),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP pre_derivative uniform", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_preuniform.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP without count_bounds", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_nobounds.json", "hm2bp", 15, 3),
    ("digits CNN 15c3-p2-40c2-p2-300-10 T60, HM2-BP uncalibrated", "digits",
     "tune/digits_cnn_hm2bp_mse_cos2e-3_nocal.json", "hm2bp", 15, 3),
    ("digits CNN 15c4s2-40c3-300-10 T60 (strided), HM2-BP uncalibrated", "digits",
     "tune/digits_cnn_strided_hm2bp_mse_cos2e-3_nocal.json", "hm2bp", 15, 3),
]
# Braille with time-binned input (data option ``bins`` K: each of the 24 channels split into K channels, one per
# sub-window of the 256 steps, ``snn2hw.models.braille.time_bins``), both rules on the same input, 24K-R128-27.
# The input layer's weight_gain is sqrt(K) (2, 2.83, 4) so that the initial hidden rate matches the 24-channel
# network's (0.076 per step; with gain 1 it falls to 0.038 / 0.018 / 0.006 at K 4 / 8 / 16). Stage ``tune-bins``
# (``benchmarks/results/strsbp_braille_bins_tuning.json``): seed 0, 20 epochs, compared on validation accuracy;
# ST-RSBP with the current 24-channel choice (papers' loss, ``windows: 4``, lr 2e-3) and without windows.
# BPTT also at lr 2e-3 (the ``_lr2e-3`` configs hold no rule options: with ``bptt`` they are its recipe at 2e-3), since
# its 5e-3 recipe was chosen on the 24-channel input.
TUNE_BINS = [
    ("braille", rule, f"tune/braille_rec128_bins{k}{suffix}.json", 20)
    for k in (8, 4, 16) for rule, suffix in (("strsbp", "_w4_lr2e-3"), ("bptt", ""), ("strsbp", "_lr2e-3"),
                                             ("bptt", "_lr2e-3"))]
# ... and the 24-channel network's input gain (1: a quieter start, see above) for both rules (BPTT at its recipe's
# 5e-3; ST-RSBP with and without windows)
TUNE_BINS += [("braille", rule, f"tune/braille_rec128_bins{k}_gain1{suffix}.json", 20)
              for k in (8, 4, 16) for rule, suffix in (("bptt", ""), ("strsbp", "_w4_lr2e-3"), ("strsbp", "_lr2e-3"))]
# stage ``final-bins`` (``benchmarks/results/strsbp_braille_bins_accuracy.json``): 3 seeds x 20 epochs, both rules on the
# encoding chosen on validation by ``tune-bins`` (seed 0): the K with the best mean of the two rules' best validation
# accuracies, ties to the smaller K. With the input gain 1 both rules reached 99.54 % (one error in 216) at K 8, ST-RSBP
# 99.54 and BPTT 99.07 % at K 4 (the sqrt(K) gain: at most 97.22 / 98.61 %): K 8 chosen, each rule with its best
# options there (ST-RSBP: papers' loss, windows 4, lr 2e-3; BPTT: its recipe, lr 5e-3). K 4, the runner-up, with
# the same options, as a second pair of rows. Seed 0 of each row is its tuning run (the same command, read back).
FINAL_BINS = [
    ("braille 24x8-R128-27 T256, bins 8, ST-RSBP papers' loss, windows 4, lr 2e-3 (chosen on validation)", "braille",
     "tune/braille_rec128_bins8_gain1_w4_lr2e-3.json", "strsbp", 20, 3),
    ("braille 24x8-R128-27 T256, bins 8, BPTT (reference)", "braille", "tune/braille_rec128_bins8_gain1.json", "bptt",
     20, 3),
    ("braille 24x4-R128-27 T256, bins 4, ST-RSBP papers' loss, windows 4, lr 2e-3 (runner-up)", "braille",
     "tune/braille_rec128_bins4_gain1_w4_lr2e-3.json", "strsbp", 20, 3),
    ("braille 24x4-R128-27 T256, bins 4, BPTT (reference, runner-up)", "braille", "tune/braille_rec128_bins4_gain1.json",
     "bptt", 20, 3),
]
# HM2-BP (feed-forward) on the same encodings: 24K-128-27, the 24-channel input (K 1) as its reference, both rules at
# lr 5e-3 and 2e-3 (HM2-BP with the papers' loss), stage ``tune-bins-hm2bp``
# (``benchmarks/results/hm2bp_braille_bins_tuning.json``), seed 0, 20 epochs, validation
TUNE_BINS_HM2BP = [("braille", rule, f"tune/braille_ff128{'' if k == 1 else f'_bins{k}'}{lr}.json", 20)
                   for k in (4, 1, 8) for rule in ("hm2bp", "bptt") for lr in ("_lr2e-3", "")]
# stage ``final-bins-hm2bp`` (``benchmarks/results/hm2bp_braille_bins_accuracy.json``): the K chosen by the same rule
# on ``tune-bins-hm2bp`` (K 8: HM2-BP 98.61, BPTT 100.00 % validation, both at lr 2e-3; K 4: 95.83 / 99.54; K 1: 77.31 /
# 95.37), each rule at its best learning rate, and the 24-channel input (K 1) as the reference, 3 seeds x 20 epochs
FINAL_BINS_HM2BP = [
    ("braille 24x8-128-27 T256 (feed-forward), bins 8, HM2-BP papers' loss, lr 2e-3 (chosen on validation)", "braille",
     "tune/braille_ff128_bins8_lr2e-3.json", "hm2bp", 20, 3),
    ("braille 24x8-128-27 T256 (feed-forward), bins 8, BPTT lr 2e-3 (reference)", "braille",
     "tune/braille_ff128_bins8_lr2e-3.json", "bptt", 20, 3),
    ("braille 24-128-27 T256 (feed-forward), 24 channels, HM2-BP papers' loss, lr 5e-3", "braille",
     "tune/braille_ff128.json", "hm2bp", 20, 3),
    ("braille 24-128-27 T256 (feed-forward), 24 channels, BPTT lr 5e-3 (reference)", "braille",
     "tune/braille_ff128.json", "bptt", 20, 3),
]
# issue 8, round 13: ST-RSBP against BPTT on Braille with bins 8, candidates ranked on validation over 3 seeds (one
# seed's validation saturates at 1 error in 216). Stage ``tune-bins3`` (``benchmarks/results/strsbp_braille_bins_tuning3.json``):
# seeds 0-2 of every candidate, seed-major (all candidates' seed 0 first), ``--jobs`` runs at once. Selection rule (fixed
# before any result, ``rank_candidates`` / ``choose_setting``): fewest validation errors over the 3 seeds at the kept
# (best-epoch) checkpoint; ties by the mean validation accuracy of the last 5 epochs; then by the mean best-epoch
# validation loss (same loss only), then the cheaper candidate (its position in the plan). The network and epoch budget
# are chosen for both rules together (the best mean of the two rules' best scores), then each rule's best candidate on
# them. Options (windows 2/8, lr 1e-3/5e-3, the task's loss; BPTT lr 2e-3) on R128 at 20 epochs; the network and budget
# candidates (R256, bins 16, 30 epochs) with each rule's incumbent options. The incumbents' seeds 0-2 are round 12's
# ``final-bins`` runs (``TUNE_BINS3_REUSE``, bins 16's seed 0 its ``tune-bins`` runs), read from their JSON, not re-run.
_W4 = "tune/braille_rec128_bins8_gain1_w4_lr2e-3.json"
_BPTT8 = "tune/braille_rec128_bins8_gain1.json"
TUNE_BINS3 = [
    ("braille", "strsbp", _W4, 20),
    ("braille", "bptt", _BPTT8, 20),
    ("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w8_lr2e-3.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w2_lr2e-3.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w4_lr5e-3.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w4_lr1e-3.json", 20),
    ("braille", "strsbp", "tune/braille_rec128_bins8_gain1_taskloss_w4_lr2e-3.json", 20),
    ("braille", "bptt", "tune/braille_rec128_bins8_gain1_lr2e-3.json", 20),  # no rule options: BPTT at lr 2e-3
    ("braille", "strsbp", _W4, 30),
    ("braille", "bptt", _BPTT8, 30),
    ("braille", "strsbp", "tune/braille_rec128_bins16_gain1_w4_lr2e-3.json", 20),
    ("braille", "bptt", "tune/braille_rec128_bins16_gain1.json", 20),
]
# Not in the plan: hidden 256 (24x8-R256-27). ST-RSBP's R128 runs already fit
# the training split (99.9 %, round 12), so width is not what it lacks, and R256 costs it about twice per epoch; the
# round's 2 shared cores (load 6-9) left no room for it. Left for a later round.
TUNE_BINS3_SEEDS = [0, 1, 2]
# seeds 1-2 only for candidates whose seed-0 validation is at most this many errors (of 216) below the rule's best seed 0
TUNE_BINS3_PRUNE = 2
TUNE_BINS3_REUSE = {(_W4, "strsbp", 20): ("strsbp_braille_bins_accuracy.json", [0, 1, 2]),
                    (_BPTT8, "bptt", 20): ("strsbp_braille_bins_accuracy.json", [0, 1, 2]),
                    # seed 0 of bins 16: round 12's ``tune-bins`` runs
                    ("tune/braille_rec128_bins16_gain1_w4_lr2e-3.json", "strsbp", 20): ("strsbp_braille_bins_tuning.json", [0]),
                    ("tune/braille_rec128_bins16_gain1.json", "bptt", 20): ("strsbp_braille_bins_tuning.json", [0])}
# stage ``final-bins3`` (``benchmarks/results/strsbp_braille_bins_accuracy3.json``): ``tune-bins3``'s choice, 5 seeds x
# 20 epochs, test split and deployed accuracy. Network and budget: 24x8-R128-27, 20 epochs (the only setting where both
# rules had eligible candidates besides bins 16, whose best mean was lower). ST-RSBP: the incumbent (papers' loss,
# windows 4, lr 2e-3; mean validation 99.23 %, windows 8 98.92 %; windows 2, lr 1e-3 / 5e-3, the task's loss and 30
# epochs pruned after seed 0). BPTT: lr 2e-3 (99.69 % against its 5e-3 recipe's 99.38 % and 30 epochs' lower mean). Seeds
# 0-2 are the tuning runs (ST-RSBP's: round 12's, read from their JSON); round 12's BPTT at 5e-3 is listed with its 3 seeds.
FINAL_BINS3 = [
    ("braille 24x8-R128-27 T256, bins 8, ST-RSBP papers' loss, windows 4, lr 2e-3 (chosen on validation over 3 seeds)",
     "braille", _W4, "strsbp", 20, 5),
    ("braille 24x8-R128-27 T256, bins 8, BPTT lr 2e-3 (chosen on validation over 3 seeds)", "braille",
     "tune/braille_rec128_bins8_gain1_lr2e-3.json", "bptt", 20, 5),
    ("braille 24x8-R128-27 T256, bins 8, BPTT lr 5e-3 (round 12's reference)", "braille", _BPTT8, "bptt", 20, 3),
]
# stage ``tune-bins3-pivot`` (``benchmarks/results/strsbp_braille_bins_tuning3_pivot.json``), exploratory, run after
# ``final-bins3`` (not one of ``tune-bins3``'s candidates, not chosen by it): ST-RSBP's training collapsed in 2 of 6 runs
# (the 30-epoch tuning run at epoch 11: training accuracy 94 -> 74 %; final seed 3 at epoch 15: 91 -> 72 %, training
# loss rising while the learning rate fell), with the rule's error amplified by 1 / (1 - S) up to 1 / min_pivot = 10.
# ``min_pivot`` 0.5 caps that amplification at 2; seeds 0-4 at 20 epochs (validation, and test for the report).
TUNE_BINS3_PIVOT = [("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w4_lr2e-3_pivot0.5.json", 20)]
TUNE_BINS3_PIVOT_SEEDS = [3, 0, 1, 2, 4]  # seed 3 first: the collapsed final seed
# stage ``tune-bins3-clip`` (``benchmarks/results/strsbp_braille_bins_tuning3_clip.json``), exploratory as above: the
# global gradient norm clipped to 1 (trainer ``grad_clip``, before Adam: a burst of large rule errors cannot dominate
# Adam's moments; the norms of the rule's updates were not logged), seeds 3 (the collapsed one), 0, 1, 2, 4, 20 epochs.
TUNE_BINS3_CLIP = [("braille", "strsbp", "tune/braille_rec128_bins8_gain1_w4_lr2e-3_clip1.json", 20)]
# stage ``tune-bins3-stab`` (``benchmarks/results/strsbp_braille_bins_stabiliser13.json``), round 13's protocol for a
# stabiliser of ST-RSBP, written before its runs: no clip (the chosen options), ``grad_clip`` 1 and 3, chosen by the
# mean best-epoch validation accuracy over seeds 5-9, which no final row uses; the chosen one's test rows are its
# seeds 0-4 (``final-bins3`` / ``tune-bins3-clip``). BPTT gets no stabiliser candidates (none of its 11 runs collapsed).
TUNE_BINS3_STAB = [("braille", "strsbp", f"tune/braille_rec128_bins8_gain1_w4_lr2e-3{s}.json", 20)
                   for s in ("", "_clip1", "_clip3")]
TUNE_BINS3_STAB_SEEDS = [5, 6, 7, 8, 9]
KEEP = ("seed", "float_val_accuracy", "float_test_accuracy", "deployed_test_accuracy", "rule_neuron_test_accuracy",
        "time_per_epoch_s", "peak_memory_mb", "best_epoch")


RUN_LOCK = "running.pid"  # in a run's out dir while a process of this benchmark runs it: the pid of that process


def _wait_for_other(out: Path, poll_s: float = 10.0) -> bool:
    """Wait while another live process holds the run (``RUN_LOCK``, no results.json yet); True when it finished
    with a results.json, False when nobody held it or its holder died (a stale lock is ignored)."""
    import time

    lock, waited = out / RUN_LOCK, False
    while lock.is_file() and not (out / "results.json").is_file():
        try:
            os.kill(int(lock.read_text()), 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            return False
        time.sleep(poll_s)
        waited = True
    return waited and (out / "results.json").is_file()


def run(task: str, rule: str, config: str, epochs: int, seed: int, rerun: bool = False,
        collect: bool = False) -> dict | None:
    """One ``snn2hw train`` run (or its stored results) under ``out/bench_accuracy/``; with ``collect``, only
    stored results (None when there are none)."""
    out = ROOT / "out" / "bench_accuracy" / f"{task}-{Path(config).stem}-{rule}-e{epochs}-s{seed}"
    cmd = command(task, rule, config, epochs, seed, str(out.relative_to(ROOT)))
    load = os.getloadavg()[0]
    if collect and not (out / "results.json").is_file():
        return None
    if not rerun and _wait_for_other(out):
        pass  # another process ran it (its results.json is there now)
    elif rerun or not (out / "results.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_LOCK).write_text(str(os.getpid()))
        try:
            proc = subprocess.run([sys.executable, "-m", "snn2hw.cli", *cmd[1:]], cwd=ROOT,
                                  env={**os.environ, **ENV}, capture_output=True, text=True)
        finally:
            (out / RUN_LOCK).unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    r = json.loads((out / "results.json").read_text())
    keep = {k: r.get(k) for k in KEEP}
    start = (r.get("environment") or {}).get("loadavg", [load])[0]
    keep.update(command=" ".join(cmd), loadavg_at_end=start, under_load=start > 1.5,
                rule_options=r.get("rule"), train_accuracy_last=(r.get("history") or [{}])[-1].get("accuracy"),
                val_history=[h.get("val_accuracy") for h in r.get("history") or []],
                val_loss_history=[h.get("val_loss") for h in r.get("history") or []])
    return keep


def tune(rerun: bool, plan: list = TUNE, name: str = "spiketrain_tuning", only: str | None = None,
         collect: bool = False) -> None:
    env = environment()
    rows = []
    for task, rule, config, epochs in plan:
        if only is not None and only not in config:
            continue
        r = run(task, rule, config, epochs, 0, rerun, collect)
        if r is None:
            continue
        rows.append({"label": f"{task} {Path(config).stem}", "task": task, "config": config, "rule": rule,
                     "epochs": epochs, "seeds": [0], "runs": [r], "summary": summarize([r])})
        print(f"{task:8s} {rule:6s} {config:40s} val {100 * r['float_val_accuracy']:.2f}  "
              f"train(last epoch) {100 * (r['train_accuracy_last'] or 0):.1f}", flush=True)
        if not collect:
            _write(ROOT / "benchmarks" / "results" / f"{name}.json", name, env, rows, None)
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if collect and rows and not _fewer_runs_than_stored(path, rows):
        _write(path, name, env, rows, None)
    for task in dict.fromkeys(r["task"] for r in rows):
        ranked = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["runs"][0]["float_val_accuracy"])
        print(f"\n{task}, ranked by validation accuracy (seed 0):")
        for r in ranked:
            print(f"  {r['rule']:6s} {r['config']:40s} val {100 * r['runs'][0]['float_val_accuracy']:.2f}")


def _stored_runs(name: str, config: str, rule: str, epochs: int, seeds: list) -> list:
    """Runs of ``config``/``rule``/``epochs`` for ``seeds`` stored in ``benchmarks/results/NAME``."""
    data = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    runs = [dict(r, reused_from=name) for row in data["rows"] if row["config"] == config and row["rule"] == rule
            and row["epochs"] == epochs for r in row["runs"] if r["seed"] in seeds]
    if sorted(r["seed"] for r in runs) != sorted(seeds):
        raise RuntimeError(f"{name}: runs of {config} {rule} e{epochs} seeds {seeds} not all stored")
    return runs


def _fewer_runs_than_stored(path: Path, rows: list) -> bool:
    """``--collect`` tabulates the runs it finds under ``out/``: in a checkout without them (a fresh clone, another
    worktree) it would replace a results file with an emptier one. True (and a message) when ``path`` holds more runs
    than ``rows``; the caller then writes nothing."""
    if not path.is_file():
        return False
    stored = sum(len(r.get("runs") or []) for r in json.loads(path.read_text()).get("rows", []))
    found = sum(len(r.get("runs") or []) for r in rows)
    if found < stored:
        print(f"--collect found {found} runs, {path.relative_to(ROOT)} holds {stored}: left as it is "
              f"(the runs' directories are under out/bench_accuracy/ where they were made)")
        return True
    return False


def final(only: str | None, seeds: int | None, rerun: bool, collect: bool = False, plan_rows: list = FINAL,
          name: str = "spiketrain_accuracy", reuse: dict | None = None) -> None:
    env = environment()
    plan = [{"label": l, "task": t, "config": c, "rule": r, "epochs": e, "seeds": list(range(seeds or n)), "runs": []}
            for l, t, c, r, e, n in plan_rows if only is None or only in l]
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    for row in plan:
        stored = (reuse or {}).get((row["config"], row["rule"], row["epochs"]))
        if stored:
            row["runs"] = _stored_runs(stored[0], row["config"], row["rule"], row["epochs"],
                                       [k for k in stored[1] if k in row["seeds"]])
    for seed in range(max((len(p["seeds"]) for p in plan), default=0)):
        for row in plan:  # rules interleaved seed by seed
            if seed < len(row["seeds"]) and all(r["seed"] != seed for r in row["runs"]):
                r = run(row["task"], row["rule"], row["config"], row["epochs"], seed, rerun, collect)
                if r is None:
                    continue
                row["runs"].append(r)
                row["summary"] = summarize(row["runs"])
                print(f"{row['label']:28s} {row['rule']:7s} seed {seed}: float {100 * r['float_test_accuracy']:.2f} "
                      f"deployed {100 * (r['deployed_test_accuracy'] or float('nan')):.2f}", flush=True)
                if not collect:
                    _write(path, name, env, plan, None)
    for row in plan:
        if row["runs"]:
            row["summary"] = summarize(row["runs"])
    if collect and _fewer_runs_than_stored(path, plan):
        return
    _write(path, name, env, plan, None)
    print(table([row for row in plan if row["runs"]]))


def candidate_score(runs: list, seeds: list, last: int = 5) -> dict | None:
    """The selection statistics of one candidate from its runs (validation only): None unless every seed of
    ``seeds`` is there. ``errors_rate``: 1 - mean best-epoch validation accuracy; ``val_last``: mean over seeds of the
    validation accuracy averaged over the last ``last`` epochs; ``val_loss``: mean best-epoch validation loss (None
    when a run has no loss history)."""
    by_seed = {r["seed"]: r for r in runs}
    if any(k not in by_seed for k in seeds):
        return None
    rs = [by_seed[k] for k in seeds]
    val = [r["float_val_accuracy"] for r in rs]
    tails = [r["val_history"][-last:] for r in rs]
    losses = [(r.get("val_loss_history") or [None] * (r["best_epoch"] + 1))[r["best_epoch"]] for r in rs]
    return {"val_mean": sum(val) / len(val), "val_by_seed": val,
            "val_last": sum(sum(t) / len(t) for t in tails) / len(tails),
            "val_loss": None if None in losses else sum(losses) / len(losses)}


def rank_candidates(rows: list, seeds: list) -> list:
    """The eligible rows of one rule (every seed run), best first, by the selection rule of ``tune-bins3``: higher mean
    best-epoch validation accuracy, then higher mean last-5-epoch validation accuracy; rows tied on both are ordered by
    lower mean best-epoch validation loss when they share one loss and all stored it, else by their order in the plan
    (the incumbent or cheaper one first). Each returned row carries its ``score``."""
    from itertools import groupby

    scored = [(i, row, candidate_score(row["runs"], seeds)) for i, row in enumerate(rows)]
    # validation accuracies are multiples of 1/216: rounded, equal error counts compare equal
    level = lambda t: (-round(t[2]["val_mean"], 9), -round(t[2]["val_last"], 9))  # noqa: E731
    scored = sorted((t for t in scored if t[2] is not None), key=lambda t: (level(t), t[0]))
    out = []
    for _, group in groupby(scored, key=level):
        group = list(group)
        if (len({t[1].get("loss") for t in group}) == 1 and all(t[2]["val_loss"] is not None for t in group)):
            group.sort(key=lambda t: (t[2]["val_loss"], t[0]))
        out += [dict(row, score=sc) for _, row, sc in group]
    return out


def choose_setting(rows: list, seeds: list) -> dict:
    """The network and epoch budget (``row["setting"]``) for both rules: the setting whose mean of the two rules' best
    mean validation accuracies is highest (ties: the same mean of their last-5-epoch accuracies, then the earlier
    setting in the plan), and each rule's best row there. Settings where a rule has no eligible row are skipped."""
    rules = sorted({row["rule"] for row in rows})
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    best = []
    for pos, setting in enumerate(settings):
        tops = [rank_candidates([r for r in rows if r["rule"] == rule and r["setting"] == setting], seeds)
                for rule in rules]
        if any(not t for t in tops):
            continue
        mean = sum(t[0]["score"]["val_mean"] for t in tops) / len(tops)
        tail = sum(t[0]["score"]["val_last"] for t in tops) / len(tops)
        best.append(((-round(mean, 9), -round(tail, 9), pos), setting, {rule: t[0] for rule, t in zip(rules, tops)}))
    if not best:
        raise RuntimeError("no setting has every rule's seeds " + str(seeds))
    best.sort(key=lambda t: t[0])
    return {"setting": best[0][1], "rows": best[0][2], "mean_val": -best[0][0][0],
            "ranking": [{"setting": s, "mean_val": -k[0], "mean_val_last": -k[1]} for k, s, _ in best]}


def _setting(config: str, epochs: int) -> str:
    cfg = json.loads((ROOT / "benchmarks" / "configs" / config).read_text())
    return f"hidden {cfg['model']['hidden']}, bins {cfg['data'].get('bins', 1)}, {epochs} epochs"


def prune_first_seed(rows: list, seed: int, errors: int, n_val: int) -> list:
    """The rows that go on to the later seeds: those whose validation accuracy on ``seed`` is at most ``errors``
    validation samples (of ``n_val``) below the best of the same rule on that seed; rows without that seed's run are
    dropped (a stage cut short)."""
    first = {id(row): next((r["float_val_accuracy"] for r in row["runs"] if r["seed"] == seed), None) for row in rows}
    best = {}
    for row in rows:
        if first[id(row)] is not None:
            best[row["rule"]] = max(best.get(row["rule"], 0.0), first[id(row)])
    return [row for row in rows if first[id(row)] is not None
            and round((best[row["rule"]] - first[id(row)]) * n_val) <= errors]


def tune_seeds(plan: list, seeds: list, name: str, only: str | None, rerun: bool, collect: bool, jobs: int,
               reuse: dict, prune_errors: int, n_val: int) -> None:
    """Seed ``seeds[0]`` of every candidate of ``plan`` (``jobs`` runs at once), then the other seeds (seed-major) of
    the candidates ``prune_first_seed`` keeps; stored runs of ``reuse`` read back. Writes
    ``benchmarks/results/NAME.json`` with the rows, each rule's ranking and the chosen setting."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    env = environment()
    rows = []
    for task, rule, config, epochs in plan:
        if only is not None and only not in config:
            continue
        cfg = json.loads((ROOT / "benchmarks" / "configs" / config).read_text())
        row = {"label": f"{task} {Path(config).stem} e{epochs}", "task": task, "config": config, "rule": rule,
               "epochs": epochs, "setting": _setting(config, epochs),
               "loss": (cfg.get("rule_options") or {}).get("loss", "rule default"), "seeds": seeds, "runs": []}
        stored = reuse.get((config, rule, epochs))
        if stored:
            row["runs"] = _stored_runs(stored[0], config, rule, epochs, [k for k in stored[1] if k in seeds])
        rows.append(row)
    lock = threading.Lock()
    path = ROOT / "benchmarks" / "results" / f"{name}.json"

    def one(row, seed):
        r = run(row["task"], row["rule"], row["config"], row["epochs"], seed, rerun, collect)
        if r is None:
            return
        with lock:
            row["runs"] = sorted(row["runs"] + [r], key=lambda x: x["seed"])
            print(f"{row['rule']:6s} {row['config']:52s} e{row['epochs']} seed {seed}: val "
                  f"{100 * r['float_val_accuracy']:.2f} (best epoch {r['best_epoch']})", flush=True)
            if not collect:
                _write(path, name, env, rows, None)

    def batch(work):
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f in [pool.submit(one, row, seed) for row, seed in work]:
                f.result()

    batch([(row, seeds[0]) for row in rows if all(r["seed"] != seeds[0] for r in row["runs"])])
    kept = prune_first_seed(rows, seeds[0], prune_errors, n_val)
    for row in rows:
        row["pruned_after_first_seed"] = row not in kept
    batch([(row, seed) for seed in seeds[1:] for row in kept if all(r["seed"] != seed for r in row["runs"])])
    for row in rows:
        row["summary"] = summarize(row["runs"]) if row["runs"] else None
        row["score"] = candidate_score(row["runs"], seeds) if row["runs"] else None
    result = {"seeds": seeds, "rankings": {}, "choice": None}
    for rule in dict.fromkeys(r["rule"] for r in rows):
        ranked = rank_candidates([r for r in rows if r["rule"] == rule], seeds)
        result["rankings"][rule] = [{"config": r["config"], "epochs": r["epochs"], **r["score"]} for r in ranked]
        print(f"\n{rule}, ranked on validation over seeds {seeds}:")
        for r in ranked:
            sc = r["score"]
            print(f"  {r['config']:52s} e{r['epochs']}  val mean {100 * sc['val_mean']:.2f} "
                  f"({' / '.join(f'{100 * v:.2f}' for v in sc['val_by_seed'])})  last-5 {100 * sc['val_last']:.2f}")
    try:
        ch = choose_setting(rows, seeds)
        result["choice"] = {"setting": ch["setting"], "mean_val": ch["mean_val"], "ranking": ch["ranking"],
                            "rows": {k: {"config": v["config"], "epochs": v["epochs"]} for k, v in ch["rows"].items()}}
        print(f"\nchosen: {ch['setting']}: " + ", ".join(f"{k} {v['config']} e{v['epochs']}"
                                                          for k, v in ch["rows"].items()))
    except RuntimeError as e:
        print(f"\nno choice yet: {e}")
    if collect and _fewer_runs_than_stored(path, rows):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "environment": {**env, "loadavg_end": list(os.getloadavg())},
                               "rows": rows, "selection": result}, indent=1, default=str) + "\n")


def calib_start(rerun: bool, collect: bool = False) -> None:
    """Stage ``calib-cnn4``: the validation accuracy after the first ``CALIB_CNN4_SAMPLES`` images per
    (seed, calibration fold), from ``benchmarks/diag_cnn_calib_start.py`` in fresh single-threaded processes."""
    rows = []
    for seed, fold in CALIB_CNN4:
        path = ROOT / "out" / "calib_start" / f"bptt-s{seed}-{fold}.json"
        cmd = ["python", "benchmarks/diag_cnn_calib_start.py", "--config", f"benchmarks/configs/{CALIB_CNN4_CONFIG}",
               "--rule", "bptt", "--seed", str(seed), "--samples", str(CALIB_CNN4_SAMPLES), "--fold", fold,
               "--json", str(path.relative_to(ROOT))]
        if collect and not path.is_file():
            continue
        if rerun or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env={**os.environ, **ENV},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(path.read_text())
        rows.append({**r, "command": " ".join(cmd), "under_load": r["loadavg"][0] > 1.5})
        print(f"seed {seed}  fold {fold:8s} validation {100 * r['val_accuracy']:.1f} %  "
              f"(after {r['samples']} images)", flush=True)
    out = ROOT / "benchmarks" / "results" / "spiketrain_cnn_calib_start.json"
    out.write_text(json.dumps({"benchmark": "spiketrain_cnn_calib_start", "environment": environment(),
                               "rows": rows}, indent=1, default=str) + "\n")


def merge_rows(src: str, dst: str) -> None:
    """Copy the rows of ``benchmarks/results/SRC.json`` into ``DST.json`` (a row of the same label, rule and
    epochs replaced, others kept), so that one file holds a task's rows from several stages."""
    res = ROOT / "benchmarks" / "results"
    new = json.loads((res / f"{src}.json").read_text())
    path = res / f"{dst}.json"
    old = json.loads(path.read_text()) if path.is_file() else {"benchmark": dst, "rows": []}
    key = lambda r: (r["label"], r["rule"], r["epochs"])  # noqa: E731
    added = {key(r) for r in new["rows"] if r["runs"]}
    old["rows"] = [r for r in old["rows"] if key(r) not in added] + [r for r in new["rows"] if r["runs"]]
    old.setdefault("environments", {})[src] = new["environment"]
    path.write_text(json.dumps(old, indent=1, default=str) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["tune", "tune-strsbp", "tune-strsbp20", "tune-mnist", "final", "final-strsbp",
                                      "final-strsbp20", "final-strsbp40", "final-mnist", "tune-cnn", "final-cnn", "tune-cnn2", "final-cnn2",
                                      "final-cnn3", "calib-cnn4", "final-cnn4", "final-cnn4-e1",
                                      "tune-cnn5", "tune-cnn5-paper", "final-cnn5", "final-cnn5-paper",
                                      "tune-cnn6", "final-cnn6", "tune-cnn6-paper", "tune-cnn7", "final-cnn7", "final-cnn8",
                                      "depth13", "tune-mnist-e3", "final-mnist-e3", "final-mnist-e6", "tune-bins",
                                      "tune-bins-hm2bp", "final-bins", "final-bins-hm2bp", "tune-bins3", "final-bins3",
                                      "tune-bins3-pivot", "tune-bins3-clip", "tune-bins3-stab"])
    ap.add_argument("--only", default=None, help="final: rows whose label contains this text; tune stages: "
                    "configs whose path contains it")
    ap.add_argument("--seeds", type=int, default=None, help="final: seeds per row (default: the plan's)")
    ap.add_argument("--rerun", action="store_true", help="re-run runs whose results.json exists")
    ap.add_argument("--collect", action="store_true", help="final, tune-strsbp20: run nothing, tabulate the stored "
                    "runs")
    ap.add_argument("--jobs", type=int, default=1, help="tune-bins3: runs at once (each single-threaded)")
    a = ap.parse_args(argv)
    if a.stage == "tune":
        tune(a.rerun, only=a.only)
    elif a.stage == "tune-strsbp":
        tune(a.rerun, TUNE_STRSBP, "strsbp_braille_tuning", a.only)
    elif a.stage == "tune-strsbp20":
        tune(a.rerun, TUNE_STRSBP20, "strsbp_braille_tuning_e20", a.only, a.collect)
    elif a.stage == "tune-bins":
        tune(a.rerun, TUNE_BINS, "strsbp_braille_bins_tuning", a.only, a.collect)
    elif a.stage == "tune-bins3":
        tune_seeds(TUNE_BINS3, TUNE_BINS3_SEEDS, "strsbp_braille_bins_tuning3", a.only, a.rerun, a.collect, a.jobs,
                   TUNE_BINS3_REUSE, TUNE_BINS3_PRUNE, 216)
    elif a.stage == "tune-bins3-pivot":
        tune_seeds(TUNE_BINS3_PIVOT, TUNE_BINS3_PIVOT_SEEDS, "strsbp_braille_bins_tuning3_pivot", a.only, a.rerun,
                   a.collect, a.jobs, {}, TUNE_BINS3_PRUNE, 216)
    elif a.stage == "tune-bins3-clip":
        tune_seeds(TUNE_BINS3_CLIP, TUNE_BINS3_PIVOT_SEEDS, "strsbp_braille_bins_tuning3_clip", a.only, a.rerun,
                   a.collect, a.jobs, {}, TUNE_BINS3_PRUNE, 216)
    elif a.stage == "tune-bins3-stab":  # no seed-0 cut: every candidate runs every seed
        tune_seeds(TUNE_BINS3_STAB, TUNE_BINS3_STAB_SEEDS, "strsbp_braille_bins_stabiliser13", a.only, a.rerun,
                   a.collect, a.jobs, {}, 216, 216)
    elif a.stage == "final-bins3":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_BINS3, "strsbp_braille_bins_accuracy3", TUNE_BINS3_REUSE)
    elif a.stage == "tune-bins-hm2bp":
        tune(a.rerun, TUNE_BINS_HM2BP, "hm2bp_braille_bins_tuning", a.only, a.collect)
    elif a.stage == "final-bins":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_BINS, "strsbp_braille_bins_accuracy")
    elif a.stage == "final-bins-hm2bp":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_BINS_HM2BP, "hm2bp_braille_bins_accuracy")
    elif a.stage == "final-strsbp20":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_STRSBP20, "strsbp_braille_accuracy_e20")
    elif a.stage == "final-strsbp40":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_STRSBP40, "strsbp_braille_accuracy_e40")
    elif a.stage == "tune-mnist":
        tune(a.rerun, TUNE_MNIST, "spiketrain_mnist10k_tuning", a.only)
    elif a.stage == "tune-mnist-e3":
        tune(a.rerun, TUNE_MNIST_E3, "spiketrain_mnist10k_tuning_e3", a.only, a.collect)
    elif a.stage == "final-mnist-e3":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_MNIST_E3, "spiketrain_mnist10k_accuracy_e3")
        if a.collect and a.only is None:  # the whole stage tabulated: its rows also go to the MNIST-10k file
            merge_rows("spiketrain_mnist10k_accuracy_e3", "spiketrain_mnist10k_accuracy")
    elif a.stage == "final-mnist-e6":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_MNIST_E6, "spiketrain_mnist10k_accuracy_e6")
        if a.collect and a.only is None:
            merge_rows("spiketrain_mnist10k_accuracy_e6", "spiketrain_mnist10k_accuracy")
    elif a.stage == "final-mnist":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_MNIST, "spiketrain_mnist10k_accuracy")
    elif a.stage == "tune-cnn":
        tune(a.rerun, TUNE_CNN, "spiketrain_cnn_tuning", a.only, a.collect)
    elif a.stage == "final-cnn":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN, "spiketrain_cnn_accuracy")
    elif a.stage == "tune-cnn2":
        tune(a.rerun, TUNE_CNN2, "spiketrain_cnn_tuning2", a.only, a.collect)
    elif a.stage == "final-cnn2":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN2, "spiketrain_cnn_accuracy2")
    elif a.stage == "final-cnn3":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN3, "spiketrain_cnn_accuracy3")
    elif a.stage == "calib-cnn4":
        calib_start(a.rerun, a.collect)
    elif a.stage == "final-cnn4":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN4, "spiketrain_cnn_accuracy4")
    elif a.stage == "final-cnn4-e1":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN4_E1, "spiketrain_cnn_accuracy4_e1")
    elif a.stage == "tune-cnn5":
        final(a.only, a.seeds, a.rerun, a.collect, TUNE_CNN5, "spiketrain_cnn_tuning5")
    elif a.stage == "final-cnn5":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN5, "spiketrain_cnn_accuracy5")
    elif a.stage == "final-cnn5-paper":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN5_PAPER, "spiketrain_cnn_accuracy5_paper")
    elif a.stage == "tune-cnn5-paper":
        final(a.only, a.seeds, a.rerun, a.collect, TUNE_CNN5_PAPER, "spiketrain_cnn_tuning5_paper")
    elif a.stage == "tune-cnn6":
        final(a.only, a.seeds, a.rerun, a.collect, TUNE_CNN6, "spiketrain_cnn_tuning6", REUSE_CNN6)
    elif a.stage == "final-cnn6":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN6, "spiketrain_cnn_accuracy6", REUSE_CNN6)
    elif a.stage == "tune-cnn6-paper":
        final(a.only, a.seeds, a.rerun, a.collect, TUNE_CNN6_PAPER, "spiketrain_cnn_tuning6_paper", REUSE_CNN6_PAPER)
    elif a.stage == "tune-cnn7":
        final(a.only, a.seeds, a.rerun, a.collect, TUNE_CNN7, "spiketrain_cnn_tuning7", REUSE_CNN7)
    elif a.stage == "final-cnn7":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN7, "spiketrain_cnn_accuracy7", REUSE_CNN7)
    elif a.stage == "depth13":
        final(a.only, a.seeds, a.rerun, a.collect, DEPTH13, "spiketrain_depth13")
    elif a.stage == "final-cnn8":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_CNN8, "spiketrain_cnn_accuracy8")
    elif a.stage == "final-strsbp":
        final(a.only, a.seeds, a.rerun, a.collect, FINAL_STRSBP, "strsbp_braille_accuracy", REUSE_STRSBP)
    else:
        final(a.only, a.seeds, a.rerun, a.collect)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
