"""Trainer: optimizers/schedules, logging, determinism and exact resume after a kill."""
import csv
import math

import pytest
import torch

from snn2hw.nn.layers import SpikingSequential
from snn2hw.train.checkpoint import (CheckpointError, load_checkpoint, read_training_checkpoint,
                                     save_checkpoint, save_training_checkpoint)
from snn2hw.train.losses import count_cross_entropy, rate_penalty
from snn2hw.train.trainer import Callback, Trainer, TrainerConfig


@pytest.fixture(scope="module")
def data():
    """A small separable spiking task: class c drives input block c at a high rate."""
    g = torch.Generator().manual_seed(0)
    n, steps, classes = 96, 10, 3
    y = torch.arange(n) % classes
    p = torch.full((n, 12), 0.05)
    for c in range(classes):
        p[y == c, 4 * c : 4 * c + 4] = 0.6
    x = torch.bernoulli(p.unsqueeze(1).expand(n, steps, 12), generator=g)
    return x[:72], y[:72], x[72:], y[72:]


def make_model(seed=0):
    torch.manual_seed(seed)
    return SpikingSequential.build([12, 16, 3], du=0.3, dv=0.2, weight_gain=3.0)


def cfg(tmp_path=None, **kw):
    base = dict(epochs=3, batch_size=10, lr=1e-2, scheduler="cosine", progress=False)
    if tmp_path is not None:
        base.update(checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"))
    base.update(kw)
    return TrainerConfig(**base)


def equal_states(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def strip_time(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


class KillAt(Callback):
    """Simulates the process dying right after optimizer step ``step`` (or after epoch ``epoch``)."""

    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def on_step_end(self, trainer, info):
        if info["step"] == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt(f"killed after epoch {self.epoch}")


def test_training_learns(data):
    x, y, xv, yv = data
    model = make_model()
    h = Trainer(model, cfg(epochs=6, optimizer="adam")).fit((x, y), (xv, yv))
    assert len(h) == 6 and [r["epoch"] for r in h] == list(range(6))
    assert h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["val_accuracy"] > 0.8  # chance is 1/3


@pytest.mark.parametrize("kill", [dict(step=12), dict(step=8), dict(epoch=0)])
def test_resume_after_kill_is_exact(tmp_path, data, kill):
    """8 batches per epoch, checkpoints every 5 steps: step 12 dies 2 steps after the mid-epoch
    checkpoint at 10 (those steps are redone), step 8 right at the end of epoch 0's last batch,
    before the epoch-end checkpoint (so the whole epoch's last 3 steps are redone)."""
    x, y, xv, yv = data
    ref = make_model()
    h_ref = Trainer(ref, cfg(tmp_path / "ref", checkpoint_every_steps=5)).fit((x, y), (xv, yv))

    run = cfg(tmp_path / "run", checkpoint_every_steps=5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), run, callbacks=[KillAt(**kill)]).fit((x, y), (xv, yv))
    assert (tmp_path / "run" / "ckpt" / "last.pt").is_file()

    # A fresh process would build a fresh model (different init: the checkpoint must overwrite it).
    resumed = make_model(seed=123)
    h = Trainer(resumed, run).fit((x, y), (xv, yv), resume=True)
    assert equal_states(ref, resumed)
    assert strip_time(h) == strip_time(h_ref)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["val_accuracy"]) == h_ref[-1]["val_accuracy"]


def test_resume_cosine_steps_is_exact(tmp_path, data):
    """A per-step schedule resumed mid-epoch (after the checkpoint at step 10) continues at the same rate."""
    x, y, xv, yv = data
    ref = make_model()
    h_ref = Trainer(ref, cfg(tmp_path / "ref", scheduler="cosine_steps", checkpoint_every_steps=5)).fit((x, y), (xv, yv))
    run = cfg(tmp_path / "run", scheduler="cosine_steps", checkpoint_every_steps=5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), run, callbacks=[KillAt(step=12)]).fit((x, y), (xv, yv))
    resumed = make_model(seed=123)
    h = Trainer(resumed, run).fit((x, y), (xv, yv), resume=True)
    assert equal_states(ref, resumed)
    assert strip_time(h) == strip_time(h_ref)
    assert len({r["lr"] for r in h}) == len(h)  # the rate moved within every epoch


def test_resume_needs_restored_state(tmp_path, data):
    """Resuming without the saved state (fresh optimizer, order from the start) does not reproduce the
    run, so the exactness above is not an accident of the task."""
    x, y, _, _ = data
    ref = make_model()
    Trainer(ref, cfg(tmp_path / "ref")).fit((x, y))
    run = cfg(tmp_path / "run", checkpoint_every_steps=5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), run, callbacks=[KillAt(step=12)]).fit((x, y))
    state_dict, _ = read_training_checkpoint(tmp_path / "run" / "ckpt" / "last.pt")
    naive = make_model()
    naive.load_state_dict(state_dict)
    Trainer(naive, cfg(epochs=2)).fit((x, y))
    assert not equal_states(ref, naive)


def test_checkpoint_is_weights_only_and_loadable(tmp_path, data):
    x, y, xv, yv = data
    model = make_model()
    Trainer(model, cfg(tmp_path, epochs=1)).fit((x, y), (xv, yv))
    path = tmp_path / "ckpt" / "last.pt"
    payload = torch.load(path, weights_only=True)  # raises if anything needs unpickling beyond tensors
    st = payload["extra"]["training_state"]
    assert st["epoch"] == 1 and st["global_step"] == 8 and "optimizer" in st and "rng" in st
    rebuilt = load_checkpoint(path)  # also a plain model checkpoint
    assert equal_states(rebuilt, model)
    assert (tmp_path / "ckpt" / "best.pt").is_file()


def test_resume_refuses_a_different_run(tmp_path, data):
    x, y, _, _ = data
    Trainer(make_model(), cfg(tmp_path, epochs=1)).fit((x, y))
    with pytest.raises(CheckpointError, match="batch_size"):
        Trainer(make_model(), cfg(tmp_path, epochs=2, batch_size=12)).fit((x, y), resume=True)
    with pytest.raises(CheckpointError):
        Trainer(make_model(), cfg(tmp_path)).fit((x, y), resume=tmp_path / "missing.pt")
    save_checkpoint(make_model(), tmp_path / "plain.pt")  # a model checkpoint has no training state
    with pytest.raises(CheckpointError, match="training state"):
        Trainer(make_model(), cfg(tmp_path)).fit((x, y), resume=tmp_path / "plain.pt")


def test_resume_true_without_checkpoint_starts_fresh(tmp_path, data):
    x, y, _, _ = data
    a, b = make_model(), make_model()
    Trainer(a, cfg(tmp_path / "a", epochs=1)).fit((x, y), resume=True)
    Trainer(b, cfg(epochs=1)).fit((x, y))
    assert equal_states(a, b)


def test_seeded_determinism(data):
    x, y, _, _ = data
    a, b, c = make_model(), make_model(), make_model()
    Trainer(a, cfg(epochs=2, seed=1)).fit((x, y))
    Trainer(b, cfg(epochs=2, seed=1)).fit((x, y))
    Trainer(c, cfg(epochs=2, seed=2)).fit((x, y))  # another shuffle
    assert equal_states(a, b)
    assert not equal_states(a, c)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adamax", "sgd"])
def test_optimizers_reduce_loss(data, optimizer):
    x, y, _, _ = data
    lr = 0.2 if optimizer == "sgd" else 1e-2
    h = Trainer(make_model(), cfg(epochs=3, optimizer=optimizer, lr=lr, momentum=0.9 if optimizer == "sgd" else 0.0,
                                  scheduler="none")).fit((x, y))
    assert h[-1]["loss"] < h[0]["loss"]
    assert all(r["lr"] == lr for r in h)


def test_schedules(data):
    x, y, _, _ = data
    h = Trainer(make_model(), cfg(epochs=4, lr=0.1, scheduler="cosine", min_lr=0.02)).fit((x, y))
    expected = [0.02 + 0.5 * (0.1 - 0.02) * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [r["lr"] for r in h] == pytest.approx(expected)
    # cosine_steps: over every optimizer step of the run, so the rate falls within an epoch too
    t = Trainer(make_model(), cfg(epochs=2, lr=0.1, scheduler="cosine_steps", min_lr=0.02))
    steps = 2 * t._n_batches(len(y))
    h = t.fit((x, y))
    expected = [0.02 + 0.5 * (0.1 - 0.02) * (1 + math.cos(math.pi * k / steps)) for k in (0, steps // 2)]
    assert [r["lr"] for r in h] == pytest.approx(expected)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    h = Trainer(make_model(), cfg(epochs=4, lr=0.1, scheduler="step", step_size=2, gamma=0.5)).fit((x, y))
    assert [r["lr"] for r in h] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    with pytest.raises(ValueError):
        Trainer(make_model(), cfg(scheduler="exp"))
    with pytest.raises(ValueError):
        Trainer(make_model(), cfg(optimizer="lbfgs"))


def test_dataset_input_matches_tensors(data):
    x, y, _, _ = data
    ds = torch.utils.data.TensorDataset(x, y)
    a, b = make_model(), make_model()
    Trainer(a, cfg(epochs=1)).fit((x, y))
    Trainer(b, cfg(epochs=1)).fit(ds)
    assert equal_states(a, b)


def test_regulariser_through_return_all(data):
    x, y, _, _ = data

    def loss(out, yb):
        hidden, final = out
        return count_cross_entropy(final, yb) + 10.0 * rate_penalty(hidden, upper=0.02)

    model = make_model()
    with torch.no_grad():
        before = model(x, return_all=True)[0].mean().item()
    Trainer(model, cfg(epochs=4), loss_fn=loss, forward_kwargs={"return_all": True}).fit((x, y))
    with torch.no_grad():
        after = model(x, return_all=True)[0].mean().item()
    assert after < before


def test_regression_targets_skip_accuracy(data):
    from snn2hw.train.losses import van_rossum_distance

    x, _, _, _ = data
    target = torch.zeros(len(x), x.shape[1], 3)
    target[:, 2::3, 0] = 1  # neuron 0 should fire every third step, the others stay silent
    model = make_model()
    h = Trainer(model, cfg(epochs=4), loss_fn=lambda o, t: van_rossum_distance(o, t, tau=3.0)).fit((x, target))
    assert "accuracy" not in h[0] and h[-1]["loss"] < h[0]["loss"]


def test_csv_log(tmp_path, data):
    x, y, xv, yv = data
    Trainer(make_model(), cfg(tmp_path, epochs=2)).fit((x, y), (xv, yv))
    with open(tmp_path / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert {"epoch", "step", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "time_s"} <= set(rows[0])


def test_deterministic_flag_restored(data):
    x, y, _, _ = data
    before = torch.are_deterministic_algorithms_enabled()
    Trainer(make_model(), cfg(epochs=1)).fit((x, y))
    assert torch.are_deterministic_algorithms_enabled() == before


def test_train_classifier_still_works(data):
    from snn2hw.train.classifier import TrainConfig, accuracy, train_classifier

    x, y, xv, yv = data
    model = make_model()
    h = train_classifier(model, x, y, TrainConfig(epochs=5, batch_size=10, lr=1e-2, progress=False), xv, yv)
    assert len(h) == 5 and h[-1]["loss"] < h[0]["loss"]
    assert accuracy(model, xv, yv) == h[-1]["val_accuracy"]


class _PlainNet(torch.nn.Module):
    """A module without config(): the trainer and its checkpoints must not need one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = make_model()

    def forward(self, x):
        return self.net(x)


def test_resume_model_without_config(tmp_path, data):
    x, y, _, _ = data
    ref = _PlainNet()
    Trainer(ref, cfg(epochs=2)).fit((x, y))
    run = cfg(tmp_path, epochs=2, checkpoint_every_steps=3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_PlainNet(), run, callbacks=[KillAt(step=10)]).fit((x, y))
    resumed = _PlainNet()
    Trainer(resumed, run).fit((x, y), resume=True)
    assert equal_states(ref, resumed)
    assert not (tmp_path / "ckpt" / "best.pt").exists()  # no validation set, no best
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ckpt" / "last.pt")  # cannot rebuild a model without a config


def test_training_checkpoint_roundtrip(tmp_path):
    model = make_model()
    state = {"epoch": 3, "order": torch.arange(5), "nested": {"a": [1, 2.5, None, "x"]}}
    save_training_checkpoint(model, tmp_path / "t.pt", state)
    sd, st = read_training_checkpoint(tmp_path / "t.pt")
    assert st["epoch"] == 3 and torch.equal(st["order"], torch.arange(5)) and st["nested"] == {"a": [1, 2.5, None, "x"]}
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
