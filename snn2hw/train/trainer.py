"""A general trainer for spiking networks: optimizers, schedules, logging, exact resume, data parallelism.

``Trainer(model, config, loss_fn=...).fit((x, y), val=(x_val, y_val))`` trains ``model`` on in-memory
tensors (or any map-style ``torch.utils.data.Dataset``) with a learning rule from ``snn2hw.learning``
(surrogate-gradient BPTT by default; ``Trainer(..., rule="hm2bp")`` or ``TrainerConfig(rule=...)``).

Exact resume. A checkpoint (``checkpoint_dir/last.pt``) is written at the end of every epoch and,
with ``checkpoint_every_steps``, every N optimizer steps. It holds everything the rest of the run
depends on: weights, optimizer and scheduler state, the epoch's shuffled order and the position in
it, the shuffling generator, the torch/CUDA/numpy/python RNG states (of every rank), the running
sums of the epoch's metrics and the metric history. A run killed at any point and resumed from its
last checkpoint with ``fit(..., resume=True)`` therefore ends with exactly the same weights as an
uninterrupted run on the same device and thread count. Everything is stored as tensors and plain
containers, so checkpoints load with ``torch.load(weights_only=True)`` (see ``checkpoint.py``).

Data parallelism. Under ``torchrun`` (after ``snn2hw.train.distributed.setup()``) each rank takes
its share of every global batch of ``batch_size`` samples and gradients are summed across ranks; see
``snn2hw.train.distributed`` for why that reproduces the single-process update. This requires
``loss_fn`` to return a mean over the samples of its batch (all losses in ``snn2hw.train.losses``
with their default ``reduction="mean"`` do; batch-level regularisers such as ``rate_penalty`` are
then computed per shard, a close but not exact match).
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from snn2hw.artefact import atomic_write_bytes
from snn2hw.learning import LearningRule, make_rule
from snn2hw.train import distributed as D
from snn2hw.train.checkpoint import (CheckpointError, read_training_checkpoint, save_checkpoint,
                                     save_training_checkpoint)
from snn2hw.train.losses import count_cross_entropy, spike_counts

__all__ = ["TrainerConfig", "Trainer", "Callback", "final_output", "predict_counts", "TRAINING_STATE_VERSION"]

TRAINING_STATE_VERSION = 1
OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")
SCHEDULERS = ("none", "cosine", "cosine_steps", "step")


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64  # the global batch: split across ranks when distributed
    optimizer: str = "adam"  # adam | adamw | adamax | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)  # adam, adamw, adamax
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    scheduler: str = "none"  # none | cosine (to min_lr over `epochs`) | step (x gamma every step_size epochs)
    #   | cosine_steps (to min_lr over every optimizer step of the run: decays within an epoch, for runs of 1-2 epochs)
    min_lr: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    grad_clip: float | None = None  # max global gradient norm
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only) during fit
    checkpoint_dir: str | None = None  # last.pt (+ best.pt) here; None: no checkpoints
    checkpoint_every_steps: int | None = None  # also checkpoint every N optimizer steps
    save_best: str | None = "val_accuracy"  # history column for best.pt ("...loss": lower is better)
    log_dir: str | None = None  # metrics.csv (+ TensorBoard events when installed) here
    tensorboard: bool = True
    progress: bool = True
    device: str | None = None  # None: the model's device
    eval_batch_size: int = 256
    rule: str = "bptt"  # learning rule by name (snn2hw.learning.available_rules()); see Trainer(rule=...)
    rule_options: dict = field(default_factory=dict)  # keyword options of that rule
    # Data-driven init of a fresh run (snn2hw.nn.calibrate): each spiking layer's threshold set on the first
    # training batch so it fires at this rate. "auto": 0.1 for networks with conv/pool layers, None otherwise.
    calibrate_rate: float | str | None = "auto"
    # How calibration reaches the layers (snn2hw.nn.calibrate.FOLDS): "none" one threshold per layer; "output"
    # the read-out through its weights (threshold kept); "neurons" also a weight factor per unit, so that every
    # unit fires at the rate (docs/training.md, the calibrated start of conv/pool networks)
    calibrate_fold: str = "none"


def final_output(output: Any) -> torch.Tensor:
    """The network's output layer: the last element when the model returned all layers (a list)."""
    return output[-1] if isinstance(output, (list, tuple)) else output


def predict_counts(output: Any) -> torch.Tensor:
    """Class predictions: the output neuron with the most spikes (or the largest logit for 2-D outputs)."""
    return spike_counts(final_output(output)).argmax(dim=1)


def _default_loss(output: Any, y: torch.Tensor) -> torch.Tensor:
    return count_cross_entropy(final_output(output), y)


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_calibration_options(c: "TrainerConfig") -> None:
    from snn2hw.nn.calibrate import FOLDS

    if c.calibrate_fold not in FOLDS:
        raise ValueError(f"calibrate_fold must be one of {FOLDS}, got {c.calibrate_fold!r}")
    rate = c.calibrate_rate
    number = isinstance(rate, (int, float)) and not isinstance(rate, bool)
    if not (rate is None or rate == "auto" or (number and 0.0 < rate < 1.0)):
        raise ValueError(f"calibrate_rate must be a rate in (0, 1), 'auto' or None, got {rate!r}")


class Callback:
    """Hooks the trainer calls (override what you need). Raising from a hook aborts ``fit``."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", info: dict) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...


class _Data:
    """Batches from tensors (x, y, ...) or a map-style Dataset, by index tensors."""

    def __init__(self, data):
        if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
            n = len(data[0])
            if any(len(t) != n for t in data):
                raise ValueError(f"tensors of different lengths: {[len(t) for t in data]}")
            self.tensors, self.dataset, self.n = tuple(data), None, n
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.tensors, self.dataset, self.n = None, data, len(data)
        else:
            raise TypeError("data must be a tuple of tensors (x, y) or a map-style Dataset")
        if self.n == 0:
            raise ValueError("empty data")

    def __len__(self) -> int:
        return self.n

    def get(self, idx: torch.Tensor, device: torch.device) -> tuple:
        if self.tensors is not None:
            parts = tuple(t[idx] for t in self.tensors)
        else:
            from torch.utils.data import default_collate

            parts = tuple(default_collate([self.dataset[int(i)] for i in idx]))
        return tuple(p.to(device, non_blocking=True) if isinstance(p, torch.Tensor) else p for p in parts)


# --- RNG state as weights_only-loadable containers ---------------------------------------------------
def _capture_rng() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Trains ``model`` with ``loss_fn(output, y) -> scalar`` (default: cross-entropy on output spike counts).

    * ``forward_kwargs`` go to every ``model(x, **forward_kwargs)`` call; e.g. ``{"return_all": True}``
      hands the loss every layer's spikes for activity regularisers (``final_output`` picks the last).
    * ``predict_fn(output) -> class indices`` gives the accuracy columns; by default the most active
      output neuron, used only when the targets are 1-D integer labels. Pass ``predict_fn=False`` to
      skip accuracy.
    * ``callbacks``: ``Callback`` objects (anything with some of its methods).

    After ``fit``: ``history`` (one dict per epoch: epoch, step, lr, loss, accuracy, val_loss,
    val_accuracy, time_s), ``epoch`` (epochs completed), ``global_step``.
    """

    def __init__(self, model: nn.Module, config: TrainerConfig | None = None,
                 loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                 predict_fn: Callable[[Any], torch.Tensor] | None | bool = None,
                 forward_kwargs: dict | None = None, callbacks: Sequence[Callback] = (),
                 rule: LearningRule | str | None = None):
        self.model = model
        self.config = config or TrainerConfig()
        c = self.config
        # The learning rule computes each batch's gradients; the trainer does everything around it.
        self.rule = make_rule(rule) if rule is not None else make_rule(c.rule, **dict(c.rule_options))
        if c.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {c.optimizer!r}; use one of {OPTIMIZERS}")
        if c.scheduler.lower() not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {c.scheduler!r}; use one of {SCHEDULERS}")
        if c.batch_size < 1 or c.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")
        if c.checkpoint_every_steps is not None and c.checkpoint_every_steps < 1:
            raise ValueError("checkpoint_every_steps must be >= 1 or None")
        if c.eval_batch_size < 1 or c.step_size < 1:
            raise ValueError(f"eval_batch_size and step_size must be >= 1, got {c.eval_batch_size}, {c.step_size}")
        if c.grad_clip is not None and not c.grad_clip > 0:  # a negative norm flips the gradients' sign in torch
            raise ValueError(f"grad_clip must be > 0 or None, got {c.grad_clip!r}")
        if not (_finite_number(c.lr) and c.lr > 0):  # lr 0 would train nothing
            raise ValueError(f"lr must be a finite number > 0, got {c.lr!r}")
        if not (_finite_number(c.min_lr) and 0 <= c.min_lr <= c.lr):
            raise ValueError(f"min_lr (the schedules' end) must lie in [0, lr = {c.lr}], got {c.min_lr!r}")
        if not (_finite_number(c.gamma) and 0 < c.gamma <= 1):
            raise ValueError(f"gamma (the step schedule's factor) must lie in (0, 1], got {c.gamma!r}")
        if len(tuple(c.betas)) != 2:  # torch indexes betas[1] (IndexError for one value)
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {c.betas!r}")
        _check_calibration_options(c)  # here, not at fit's first step: a bad config is refused before any work
        self.loss_fn = loss_fn or _default_loss
        self.predict_fn = predict_counts if predict_fn is None or predict_fn is True else predict_fn
        self.forward_kwargs = dict(forward_kwargs or {})
        self.callbacks = list(callbacks)
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.position = 0  # batches completed within the current epoch
        self.global_step = 0
        self.best: float | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._order: torch.Tensor | None = None
        self._accum = [0.0, 0.0, 0.0, 0.0]  # loss * n, correct, n, n with labels
        self._generator = torch.Generator()
        self._tb = None

    # -- construction ----------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.config.device is not None:
            return torch.device(self.config.device)
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        name = c.optimizer.lower()
        if name == "adam":
            return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if name == "adamax":
            return torch.optim.Adamax(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)

    def _make_scheduler(self, optimizer, n_batches: int = 1):
        c = self.config
        name = c.scheduler.lower()
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(c.epochs, 1), eta_min=c.min_lr)
        if name == "cosine_steps":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(c.epochs * n_batches, 1),
                                                              eta_min=c.min_lr)
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.step_size, gamma=c.gamma)
        return None

    # -- checkpoint state ------------------------------------------------------------------------------
    def _fingerprint(self, n_train: int, world_size: int) -> dict:
        # What must match for a resumed run to see the same batches.
        c = self.config
        return {"n_train": int(n_train), "batch_size": c.batch_size, "world_size": world_size, "seed": c.seed,
                "shuffle": c.shuffle, "drop_last": c.drop_last, "optimizer": c.optimizer.lower(),
                "scheduler": c.scheduler.lower(), "rule": self.rule.name}

    def training_state(self, n_train: int, rng_per_rank: list) -> dict:
        """The resumable state as tensors and plain containers (what ``last.pt`` stores)."""
        rank, world_size = D.world()
        return {
            "version": TRAINING_STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "global_step": self.global_step,
            "order": None if self._order is None else self._order.clone(),
            "accum": torch.tensor(self._accum, dtype=torch.float64),
            "generator": self._generator.get_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rule": self.rule.state_dict(),
            "rng": rng_per_rank,
            "history": [dict(r) for r in self.history],
            "best": self.best,
            "fingerprint": self._fingerprint(n_train, world_size),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
        }

    def _load_training_state(self, path: Path, n_train: int, device: torch.device) -> None:
        state_dict, st = read_training_checkpoint(path)
        rank, world_size = D.world()
        if st.get("version") != TRAINING_STATE_VERSION:
            raise CheckpointError(f"{path}: training state version {st.get('version')} is not supported")
        expected = self._fingerprint(n_train, world_size)
        if st.get("fingerprint") != expected:
            diff = {k: (st.get("fingerprint", {}).get(k), v) for k, v in expected.items()
                    if st.get("fingerprint", {}).get(k) != v}
            raise CheckpointError(f"{path}: cannot resume, the run differs from the checkpoint's (saved, now): {diff}")
        try:
            self.model.load_state_dict(state_dict)
            self.optimizer.load_state_dict(st["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(st["scheduler"])
            self._generator.set_state(st["generator"])
            self.rule.load_state_dict(st.get("rule") or {})
            rng = st["rng"]
            _restore_rng(rng[rank] if rank < len(rng) else rng[0])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: training state does not match this model/optimizer "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        self.model.to(device)
        self.epoch, self.position, self.global_step = int(st["epoch"]), int(st["position"]), int(st["global_step"])
        self._order = st["order"]
        self._accum = [float(v) for v in st["accum"].tolist()]
        self.history = [dict(r) for r in st["history"]]
        self.best = st["best"]

    def save(self, path: str | os.PathLike, n_train: int) -> None:
        """Write the resumable state (collective under torchrun: every rank must call it; rank 0 writes)."""
        rng = D.all_gather_objects(_capture_rng())
        if D.is_main_process():
            save_training_checkpoint(self.model, path, self.training_state(n_train, rng))

    # -- logging ---------------------------------------------------------------------------------------
    def _write_logs(self) -> None:
        c = self.config
        if c.log_dir is None or not D.is_main_process():
            return
        log_dir = Path(c.log_dir)
        columns: list[str] = []
        for row in self.history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        w.writerows(self.history)
        # Rewritten whole from the history (which checkpoints carry), so a resumed run's CSV has each
        # epoch exactly once.
        atomic_write_bytes(log_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))
        if self._tb is not None and self.history:
            row = self.history[-1]
            for k, v in row.items():
                if k not in ("epoch",) and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k, v, row["epoch"])
            self._tb.flush()

    def _open_tensorboard(self) -> None:
        c = self.config
        if c.log_dir is None or not c.tensorboard or not D.is_main_process():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: CSV only, by design
            return
        # purge_step drops events a killed run logged past its last checkpoint.
        self._tb = SummaryWriter(str(Path(c.log_dir) / "tensorboard"), purge_step=self.epoch)

    # -- evaluation ------------------------------------------------------------------------------------
    def _has_labels(self, y: torch.Tensor) -> bool:
        return self.predict_fn is not False and isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()

    def evaluate(self, data, batch_size: int | None = None) -> dict:
        """Mean loss (and accuracy, for labels) over ``data``; sharded across ranks under torchrun."""
        data = data if isinstance(data, _Data) else _Data(data)
        device = self._device()
        rank, world_size = D.world()
        bs = batch_size or self.config.eval_batch_size
        was_training = self.model.training
        self.model.eval()
        sums = [0.0, 0.0, 0.0, 0.0]
        with torch.no_grad():
            for start in range(0, len(data), bs):
                idx = torch.arange(start, min(start + bs, len(data)), device="cpu")[rank::world_size]  # host indices
                if len(idx) == 0:
                    continue
                x, y, *_ = data.get(idx, device)
                out = self.model(x, **self.forward_kwargs)
                sums[0] += float(self.loss_fn(out, y)) * len(idx)
                sums[2] += len(idx)
                if self._has_labels(y):
                    sums[1] += float((self.predict_fn(out) == y).sum())
                    sums[3] += len(idx)
        if D.is_distributed():
            t = D.all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=device))
            sums = t.tolist()
        self.model.train(was_training)
        result = {"loss": sums[0] / max(sums[2], 1)}
        if sums[3] > 0:
            result["accuracy"] = sums[1] / sums[3]
        return result

    # -- training --------------------------------------------------------------------------------------
    def _calibrate(self, data: "_Data", device: torch.device) -> None:
        """``calibrate_rate``: thresholds from the first ``batch_size`` training samples (the same on every
        rank, so data-parallel replicas stay identical); the report is kept in ``self.calibration``."""
        from snn2hw.nn.calibrate import calibrate_thresholds, calibration_rate

        _check_calibration_options(self.config)
        rate = calibration_rate(self.config.calibrate_rate, self.model)
        self.calibration = []
        if rate is None:
            return
        x, *_ = data.get(torch.arange(min(len(data), self.config.batch_size)), device)
        self.calibration = calibrate_thresholds(self.model, x, rate, fold=self.config.calibrate_fold)

    def fit(self, train, val=None, resume: bool | str | os.PathLike = False) -> list[dict]:
        """Train for ``config.epochs`` epochs (in total, counting those a resumed checkpoint already did).

        ``train``/``val``: tuples of tensors (x, y) or map-style Datasets. ``resume=True`` continues from
        ``checkpoint_dir/last.pt`` when it exists (and starts fresh otherwise); a path resumes from that
        file. Returns the history.
        """
        c = self.config
        data = _Data(train)
        val_data = None if val is None else _Data(val)
        device = self._device()
        rank, world_size = D.world()
        ckpt_dir = Path(c.checkpoint_dir) if c.checkpoint_dir else None

        self.model.to(device)
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler(self.optimizer, self._n_batches(len(data)))

        resume_path = None
        if resume is True:
            if ckpt_dir is None:
                raise ValueError("resume=True needs config.checkpoint_dir")
            resume_path = ckpt_dir / "last.pt" if (ckpt_dir / "last.pt").is_file() else None
        elif resume:
            resume_path = Path(resume)
            if not resume_path.is_file():
                raise CheckpointError(f"{resume_path}: no such checkpoint file")

        prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if c.deterministic:
            if device.type == "cuda":
                # cuBLAS is deterministic only with a fixed workspace; read when cuBLAS initialises.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            if resume_path is None:  # a resumed model keeps the thresholds its run calibrated
                self._calibrate(data, device)
            # The rule builds its own state (feedback matrices, tables) from its own seed, before a
            # resumed checkpoint overwrites that state with the saved one.
            self.rule.setup(self.model)
            if resume_path is not None:
                self._load_training_state(resume_path, len(data), device)
            else:
                self.history, self.epoch, self.position, self.global_step, self.best = [], 0, 0, 0, None
                self._order, self._accum = None, [0.0, 0.0, 0.0, 0.0]
                # Ranks draw the same shuffles (one global order) but different dropout-style noise.
                self._generator = torch.Generator().manual_seed(c.seed)
                _seed_everything(c.seed + rank)
                D.broadcast_module(self.model)
            self._open_tensorboard()
            for cb in self.callbacks:
                getattr(cb, "on_fit_start", lambda t: None)(self)
            while self.epoch < c.epochs:
                self._run_epoch(data, val_data, device, ckpt_dir)
            for cb in self.callbacks:
                getattr(cb, "on_fit_end", lambda t: None)(self)
        finally:
            torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        return self.history

    def _n_batches(self, n: int) -> int:
        b = self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def _run_epoch(self, data: _Data, val_data: _Data | None, device: torch.device, ckpt_dir: Path | None) -> None:
        c = self.config
        rank, world_size = D.world()
        n_batches = self._n_batches(len(data))
        if self.position == 0 or self._order is None:
            # The order comes from a generator of our own (never the global RNG), so it depends only on
            # the seed and the epoch count, and its state is checkpointed with the position in it.
            self._order = (torch.randperm(len(data), generator=self._generator, device="cpu") if c.shuffle
                           else torch.arange(len(data), device="cpu"))  # host indices, whatever the default device
            self._accum = [0.0, 0.0, 0.0, 0.0]
            self.position = 0
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None and c.scheduler.lower() == "cosine_steps":
            # the rate at the epoch's first step, also when resumed mid-epoch (the closed form of the schedule)
            k, n = self.global_step - self.position, self.scheduler.T_max
            lr = c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * k / n))
        params = [p for p in self.model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        self.model.train()
        bar = tqdm(total=n_batches, initial=self.position, desc=f"epoch {self.epoch + 1}/{c.epochs}",
                   disable=not c.progress or rank != 0, leave=False, dynamic_ncols=True)
        try:
            while self.position < n_batches:
                b = self.position
                idx = self._order[b * c.batch_size : (b + 1) * c.batch_size]
                local = idx[rank::world_size]
                self.optimizer.zero_grad(set_to_none=True)
                stats = [0.0, 0.0, 0.0, 0.0]
                if len(local) > 0:
                    x, y, *_ = data.get(local, device)
                    # A rank's mean loss weighted by its share of the global batch: the summed
                    # gradients are then the global batch's mean gradient.
                    scale = len(local) / len(idx)
                    result = self.rule.compute_gradients(self.model, x, y, self.loss_fn, self.forward_kwargs, scale)
                    out, loss = result.output, result.loss
                    stats[0], stats[2] = float(loss) * len(local), float(len(local))
                    if self._has_labels(y):
                        with torch.no_grad():
                            stats[1] = float((self.predict_fn(out) == y).sum())
                        stats[3] = float(len(local))
                if world_size > 1:
                    D.all_reduce_gradients(params)
                    stats = D.all_reduce_sum(torch.tensor(stats, dtype=torch.float64, device=device)).tolist()
                if c.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, c.grad_clip)
                self.optimizer.step()
                if self.scheduler is not None and c.scheduler.lower() == "cosine_steps":
                    self.scheduler.step()
                self._accum = [a + s for a, s in zip(self._accum, stats)]
                self.position += 1
                self.global_step += 1
                bar.update(1)
                step_loss = stats[0] / max(stats[2], 1.0)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                if (ckpt_dir is not None and c.checkpoint_every_steps
                        and self.global_step % c.checkpoint_every_steps == 0 and self.position < n_batches):
                    self.save(ckpt_dir / "last.pt", len(data))
                info = {"epoch": self.epoch, "batch": b, "step": self.global_step, "loss": step_loss}
                for cb in self.callbacks:
                    getattr(cb, "on_step_end", lambda t, i: None)(self, info)
        finally:
            bar.close()

        row: dict = {"epoch": self.epoch, "step": self.global_step, "lr": lr,
                     "loss": self._accum[0] / max(self._accum[2], 1.0)}
        if self._accum[3] > 0:
            row["accuracy"] = self._accum[1] / self._accum[3]
        if self.scheduler is not None and c.scheduler.lower() != "cosine_steps":
            self.scheduler.step()
        if val_data is not None:
            for k, v in self.evaluate(val_data).items():
                row[f"val_{k}"] = v
        row["time_s"] = time.perf_counter() - t0
        self.history.append(row)
        self.epoch += 1
        self.position = 0
        self._order = None
        self._accum = [0.0, 0.0, 0.0, 0.0]

        improved = False
        if c.save_best and c.save_best in row:
            v = row[c.save_best]
            lower_better = "loss" in c.save_best
            if self.best is None or (v < self.best if lower_better else v > self.best):
                self.best, improved = float(v), True
        if ckpt_dir is not None:
            self.save(ckpt_dir / "last.pt", len(data))
            if improved and D.is_main_process() and callable(getattr(self.model, "config", None)):
                save_checkpoint(self.model, ckpt_dir / "best.pt", extra={"epoch": row["epoch"], c.save_best: row[c.save_best]})
        self._write_logs()
        if rank == 0 and c.progress:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "time_s"}
            tqdm.write(f"epoch {self.epoch}/{c.epochs} {shown}")
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda t, r: None)(self, row)
