"""scikit-learn's handwritten digits (1,797 8x8 images, shipped inside scikit-learn) as a spiking task.

Fixed split: stratified 80/20 with ``random_state=0`` (1,437 train / 360 test). Pixels (0..16) are
rate-coded deterministically over ``STEPS`` steps, so every backend sees identical spikes.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from snn2hw.encode import regular_rate
from snn2hw.nn.layers import SpikingSequential
from snn2hw.train.classifier import TrainConfig

STEPS = 24
SIZES = [64, 128, 10]
SPLIT_SEED = 0


def load(steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); x are spike trains (samples, steps, 64) in float32."""
    data = load_digits()
    x = data.data.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, random_state=SPLIT_SEED, stratify=data.target)
    enc = lambda a: regular_rate(torch.from_numpy(a), steps)  # noqa: E731
    return enc(x_tr), torch.from_numpy(y_tr).long(), enc(x_te), torch.from_numpy(y_te).long()


def build_model(seed: int = 0) -> SpikingSequential:
    torch.manual_seed(seed)
    return SpikingSequential.build(SIZES, du=0.25, dv=0.1, v_th=1.0, surrogate="fast_sigmoid",
                                   surrogate_scale=10.0, weight_gain=3.0)


def train_config(epochs: int = 40, seed: int = 0) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, seed=seed, count_scale=0.5)
