"""A compact trainer for spike-count classifiers (surrogate-gradient BPTT)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    count_scale: float = 1.0  # logits = count_scale * spike counts
    progress: bool = True


def count_logits(spikes: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return spikes.sum(dim=1) * scale


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            counts = model(x[i : i + batch_size]).sum(dim=1)
            correct += int((counts.argmax(dim=1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig = TrainConfig(),
                     x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None) -> list[dict]:
    """Train with cross-entropy on output spike counts. ``x``: (samples, steps, features) spikes."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1))
    history = []
    bar = tqdm(range(config.epochs), desc="train", disable=not config.progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            logits = count_logits(model(x[idx]), config.count_scale)
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        sched.step()
        row = {"epoch": epoch, "loss": total / n}
        if x_val is not None:
            row["val_accuracy"] = accuracy(model, x_val, y_val)
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
    return history
