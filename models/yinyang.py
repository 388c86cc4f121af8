"""The Yin-Yang classification task (Kriener, Göltz & Petrovici 2021), generated from its published recipe.

Points ``(x, y)`` are drawn uniformly in the square ``[0, 2 r_big]**2`` and kept when they lie inside the
big circle (radius ``r_big = 0.5`` around ``(r_big, r_big)``); each is labelled yin (0), yang (1) or dot
(2) by the symbol's geometry (two small circles of radius ``r_small = 0.1`` at ``(r_big/2, r_big)`` and
``(3 r_big/2, r_big)``). Classes are balanced by drawing points for class ``i % 3`` in turn (rejecting
points of other classes). The published splits use 5000 training points (seed 42), 1000 validation (41)
and 1000 test (40); ``load()`` returns exactly those sizes and seeds (the random stream is numpy's
``RandomState``, as in the recipe, though the sample order of the original code is not reproduced).
Reference: a 4-30-3 ANN reaches 97.6 +- 1.5% test accuracy.

Spike encoding for time-to-first-spike networks (the usual one for this task): features
``(x, y, 1 - x, 1 - y)`` (values in [0, 1]) each become one input spike at step
``round(value * (input_steps - 1))``, plus a fifth, bias input that spikes at step 0. Training on these
integer spike times and deploying with them are therefore the same network on the same inputs.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["R_SMALL", "R_BIG", "which_class", "make", "encode", "load", "INPUTS", "CLASSES"]

R_SMALL, R_BIG = 0.1, 0.5
INPUTS = 5  # x, y, 1 - x, 1 - y, bias
CLASSES = ("yin", "yang", "dot")
SPLITS = {"train": (5000, 42), "val": (1000, 41), "test": (1000, 40)}


def which_class(x: np.ndarray, y: np.ndarray, r_small: float = R_SMALL, r_big: float = R_BIG) -> np.ndarray:
    """Class of each point inside the big circle: 0 yin, 1 yang, 2 dot."""
    d_right = np.hypot(x - 1.5 * r_big, y - r_big)
    d_left = np.hypot(x - 0.5 * r_big, y - r_big)
    yin = (d_right <= r_small) | ((d_left > r_small) & (d_left <= 0.5 * r_big)) | ((y > r_big) & (d_right > 0.5 * r_big))
    dot = (d_right < r_small) | (d_left < r_small)
    return np.where(dot, 2, np.where(yin, 0, 1))


def make(n: int, seed: int, r_small: float = R_SMALL, r_big: float = R_BIG) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (n, 2) in [0, 2 r_big]^2 and their labels (n,), classes balanced in turn."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.RandomState(seed)
    pts = np.empty((n, 2))
    labels = np.arange(n) % 3
    for i in range(n):
        while True:
            x, y = rng.rand(2) * 2 * r_big
            if np.hypot(x - r_big, y - r_big) > r_big:
                continue
            if which_class(np.array(x), np.array(y), r_small, r_big) == labels[i]:
                pts[i] = (x, y)
                break
    return pts, labels


def encode(points: np.ndarray, input_steps: int = 30, steps: int = 64, r_big: float = R_BIG) -> torch.Tensor:
    """(n, 2) points -> (n, steps, 5) float 0/1 spikes: one spike per feature at its encoded step."""
    if steps < input_steps:
        raise ValueError(f"steps ({steps}) must cover the input window ({input_steps})")
    xy = np.asarray(points, dtype=np.float64) / (2 * r_big)
    feats = np.concatenate([xy, 1.0 - xy], axis=1)
    times = np.rint(np.clip(feats, 0.0, 1.0) * (input_steps - 1)).astype(np.int64)
    n = len(points)
    x = torch.zeros(n, steps, INPUTS)
    rows = np.repeat(np.arange(n), 4)
    x[rows, times.reshape(-1), np.tile(np.arange(4), n)] = 1.0
    x[:, 0, 4] = 1.0
    return x


def load(split: str, input_steps: int = 30, steps: int = 64, size: int | None = None):
    """(x spikes (n, steps, 5), labels (n,) int64) of a published split ("train", "val" or "test");
    ``size`` takes the first ``size`` points of it."""
    if split not in SPLITS:
        raise ValueError(f"unknown Yin-Yang split {split!r}; use one of {sorted(SPLITS)}")
    n, seed = SPLITS[split]
    pts, labels = make(n if size is None else int(size), seed)
    return encode(pts, input_steps, steps), torch.from_numpy(labels).long()
