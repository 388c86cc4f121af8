"""The model zoo's tasks by name: data with a fixed train/val/test split, a model spec, training defaults.

``snn2hw train --task NAME --rule RULE`` and the benchmarks build everything from here, and any
learning rule registered in ``snn2hw.learning`` can train any task whose model is a ``SpikingSequential``.

=========  =======================================================  ====================================
task       data and fixed split                                     default model (``model`` spec)
=========  =======================================================  ====================================
digits     scikit-learn digits; its 1,437/360 train/test split,     64-128-10, regular-rate input
           the last 20 % of train (stratified, seed 0) validates:   over ``steps`` (default 60)
           1,149 / 288 / 360
braille    Braille letters (``../shared/data/braille``); its        24-R128-27 (recurrent hidden),
           1,080/270 split, 20 % of train (stratified, seed 0)      256 steps of sigma-delta events;
           validates: 864 / 216 / 270                               ``bins`` K (default 1) splits each
                                                                    channel into K time-bin channels:
                                                                    24K inputs (``braille.time_bins``)
mnist10k   the MNIST test set (``../shared/data/mnist-10k``),       784-800-10, regular-rate input
           images 0-6999 / 7000-7999 / 8000-9999                    (``max_rate`` 0.2) over ``steps``
                                                                    (default 100), encoded per batch
=========  =======================================================  ====================================

A model spec (the ``model`` object of a config file) is either ``{"layers": [...]}``, a
``SpikingSequential`` config used as is, or the short form::

    {"hidden": [800], "recurrent": false, "conv": [[15, 5], "p2", [40, 5], "p2"],
     "neuron": {"du": 0.2, "dv": 0.1, "v_th": 1.0}, "weight_gain": 1.0, "output_gain": 1.0,
     "rec_gain": 0.2, "rec_weight_scale": 0.05, "pool_v_th": 2.0}

``conv`` entries are ``[channels, kernel]`` (a ``ConvLIF``, stride 1, no padding), ``[channels, kernel, stride]``
(the same with a stride up to the kernel: a conv that downsamples in place of a pool) or ``"pK"`` (a KxK
``SumPoolLIF``); ``recurrent`` is one flag for all hidden dense layers or a list with one per layer. ``pool_v_th`` is
the pools' threshold before calibration: the trainer's calibration (``calibrate_rate``, on for conv/pool networks by
default) sets every spiking layer's threshold, pools included, so on a calibrated network it changes only the
surrogate's width relative to the pools' threshold (which calibration keeps at its initial ratio), i.e. BPTT's
gradient, not the forward network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from snn2hw.encode import regular_rate
from snn2hw.nn.conv import ConvLIF, Flatten, SumPoolLIF
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

__all__ = ["Task", "TaskConfigError", "TASKS", "get_task", "build_model", "EncodedImages", "default_rule_options"]


class TaskConfigError(ValueError):
    """An unknown task, or a model/data spec with an unknown key or a bad value."""


class EncodedImages(torch.utils.data.Dataset):
    """Intensities (n, features) in [0, 1] rate-coded per item with ``regular_rate`` (deterministic, so the
    simulator sees exactly the trained network's input): T x 784 floats per image are built on demand
    rather than held for the whole set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int, max_rate: float):
        self.x, self.y, self.steps, self.max_rate = x, y, int(steps), float(max_rate)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return regular_rate(self.x[i:i + 1] * self.max_rate, self.steps)[0], self.y[i]

    def spikes(self, lo: int, hi: int) -> torch.Tensor:
        return regular_rate(self.x[lo:hi] * self.max_rate, self.steps)


@dataclass(frozen=True)
class Task:
    name: str
    classes: int
    inputs: int
    input_shape: tuple  # (C, H, W) for conv specs
    description: str
    data_defaults: dict
    model_defaults: dict
    trainer_defaults: dict
    loader: Callable[[dict], dict] = field(repr=False)
    count_scale: float = 0.1  # BPTT's count cross-entropy: logits = count_scale * counts
    # the input width for given data options, where they change it (else ``inputs``); raises TaskConfigError
    width: Callable[[dict], int] | None = field(default=None, repr=False)

    def options(self, data: dict | None = None) -> dict:
        """The data options over the defaults, checked (unknown keys, steps, and the width's options)."""
        opts = {**self.data_defaults, **(data or {})}
        unknown = set(opts) - set(self.data_defaults)
        if unknown:
            raise TaskConfigError(f"task {self.name!r}: unknown data option(s) {sorted(unknown)}; "
                                  f"known: {sorted(self.data_defaults)}")
        steps = opts.get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise TaskConfigError(f"task {self.name!r}: steps must be an integer >= 2, got {steps!r}")
        if self.width is not None:
            self.width(opts)
        return opts

    def load(self, data: dict | None = None) -> dict:
        """{"train": (x, y), "val": (x, y), "test": (x, y)}; x spike tensors or ``EncodedImages``."""
        return self.loader(self.options(data))

    def input_size(self, data: dict | None = None) -> int:
        """The number of input channels with these data options (the model's input width)."""
        return self.inputs if self.width is None else self.width(self.options(data))

    def steps(self, data: dict | None = None) -> int:
        return int({**self.data_defaults, **(data or {})}["steps"])

    def loss_fn(self, output, y):
        from snn2hw.train.losses import count_cross_entropy
        from snn2hw.train.trainer import final_output

        return count_cross_entropy(final_output(output), y, scale=self.count_scale)


def default_rule_options(rule: str, steps: int) -> dict:
    """Spike-count targets of HM2-BP/ST-RSBP for a window of ``steps``: 30 % and 5 % of the steps and a
    margin of 5 % (HM2-BP's 35/5/5 over 400 steps were for a neuron with a refractory period)."""
    if rule in ("hm2bp", "strsbp"):
        return {"target_true": round(0.3 * steps), "target_false": round(0.05 * steps),
                "margin": max(1, round(0.05 * steps))}
    return {}


def _split_train(x, y, seed=0, fraction=0.2):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y.numpy())
    tr, va = np.sort(tr), np.sort(va)
    return (x[tr], y[tr]), (x[va], y[va])


def _load_digits(opts: dict) -> dict:
    from snn2hw.models import digits

    x_tr, y_tr, x_te, y_te = digits.load(int(opts["steps"]))
    train, val = _split_train(x_tr, y_tr)
    return {"train": train, "val": val, "test": (x_te, y_te)}


def _braille_width(opts: dict) -> int:
    from snn2hw.models import braille

    try:
        return 2 * braille.TAXELS * braille.check_bins(opts["bins"], int(opts["steps"]))
    except braille.BrailleOptionError as exc:
        raise TaskConfigError(f"task 'braille': data option {exc}") from None


def _load_braille(opts: dict) -> dict:
    from snn2hw.models import braille

    x_tr, y_tr, x_te, y_te = braille.load(opts.get("path"), steps=int(opts["steps"]), bins=opts["bins"])
    train, val = _split_train(x_tr, y_tr)
    return {"train": train, "val": val, "test": (x_te, y_te)}


def _load_mnist10k(opts: dict) -> dict:
    from snn2hw.models import mnist10k

    out = {}
    for split in ("train", "val", "test"):
        x, y = mnist10k.load(split, opts.get("path"))
        out[split] = EncodedImages(x, y, int(opts["steps"]), float(opts["max_rate"]))
    return out


TASKS: dict[str, Task] = {
    "digits": Task("digits", 10, 64, (1, 8, 8), "scikit-learn digits, 1149/288/360 train/val/test",
                   {"steps": 60}, {"hidden": [128], "neuron": {"du": 0.25, "dv": 0.1, "v_th": 1.0},
                                   "weight_gain": 3.0, "output_gain": 1.0},
                   {"epochs": 30, "batch_size": 32, "lr": 5e-3, "optimizer": "adam"}, _load_digits),
    "braille": Task("braille", 27, 24, (1, 1, 24), "Braille letters, 864/216/270 train/val/test",
                    {"steps": 256, "bins": 1, "path": None},
                    {"hidden": [128], "recurrent": True, "neuron": {"du": 0.2, "dv": 0.1, "v_th": 1.0},
                     "weight_gain": 1.0, "output_gain": 0.5, "rec_gain": 0.2, "rec_weight_scale": 0.05},
                    {"epochs": 40, "batch_size": 32, "lr": 5e-3, "optimizer": "adam", "scheduler": "cosine"},
                    _load_braille, width=_braille_width),
    "mnist10k": Task("mnist10k", 10, 784, (1, 28, 28), "MNIST test set, 7000/1000/2000 train/val/test",
                     {"steps": 100, "max_rate": 0.2, "path": None},
                     {"hidden": [800], "neuron": {"du": 0.25, "dv": 0.1, "v_th": 1.0}, "weight_gain": 3.0,
                      "output_gain": 1.0},
                     {"epochs": 10, "batch_size": 64, "lr": 2e-3, "optimizer": "adam"}, _load_mnist10k),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskConfigError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


_SPEC_KEYS = {"layers", "hidden", "recurrent", "conv", "neuron", "weight_gain", "output_gain", "rec_gain",
              "rec_weight_scale", "pool_v_th"}


def build_model(task: Task, spec: dict | None = None, seed: int = 0, data: dict | None = None) -> SpikingSequential:
    """The task's network from a model spec (merged over the task's defaults; see the module docstring), for
    input of the task's data options ``data`` (their input width, e.g. braille's ``bins``)."""
    spec = dict(spec or {})
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise TaskConfigError(f"model spec: unknown key(s) {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    torch.manual_seed(seed)
    if "layers" in spec:
        try:
            model = SpikingSequential.from_config({"layers": spec["layers"]})
        except (TypeError, ValueError, KeyError) as exc:
            raise TaskConfigError(f"model spec 'layers': {exc}") from None
        _check_layers_fit_task(model, task, data)
        return model
    try:
        return _short_form(task, spec, data)
    except TaskConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a value the layers refuse (v_th <= 0, "a" for a size, ...)
        raise TaskConfigError(f"model spec: {exc}") from None


def _check_layers_fit_task(model: SpikingSequential, task: Task, data: dict | None) -> None:
    """A ``"layers"`` spec states its widths itself: they must be the task's (the input width follows the data
    options, e.g. braille's ``bins``), or training fails later inside a matrix product."""
    sized = [layer for layer in model.layers if hasattr(layer, "in_features")]
    if not sized:
        return
    n_in, n_out = int(sized[0].in_features), int(sized[-1].out_features)
    want = task.input_size(data)
    if n_in != want:
        opts = {k: v for k, v in (data or {}).items() if k != "path"}
        raise TaskConfigError(f"model spec 'layers': the first layer takes {n_in} inputs, but task {task.name!r}"
                              f"{' with data options ' + str(opts) if opts else ''} gives {want}")
    if n_out < task.classes:
        raise TaskConfigError(f"model spec 'layers': the last layer has {n_out} outputs, fewer than the "
                              f"{task.classes} classes of task {task.name!r}")


def _short_form(task: Task, spec: dict, data: dict | None) -> SpikingSequential:
    s = {**task.model_defaults, **spec}
    neuron = {"du": 0.2, "dv": 0.1, "v_th": 1.0, **dict(s.get("neuron") or {})}
    if set(neuron) - {"du", "dv", "v_th", "bias"}:
        raise TaskConfigError(f"model spec 'neuron': unknown key(s) {sorted(set(neuron) - {'du', 'dv', 'v_th', 'bias'})}")
    hidden = [int(h) for h in s.get("hidden", [])]
    rec = s.get("recurrent", False)
    rec = list(rec) if isinstance(rec, (list, tuple)) else [bool(rec)] * len(hidden)
    if len(rec) != len(hidden):
        raise TaskConfigError(f"model spec: 'recurrent' has {len(rec)} flags for {len(hidden)} hidden layers")
    gain = float(s.get("weight_gain", 1.0))
    layers: list = []
    n = task.input_size(data)
    # a width changed by the data options is a flat row of channels
    shape = tuple(task.input_shape) if n == task.inputs else (1, 1, n)
    for item in s.get("conv") or []:
        if isinstance(item, str) and item.startswith("p") and item[1:].isdigit():
            pool = SumPoolLIF(shape, int(item[1:]), du=neuron["du"], dv=neuron["dv"],
                              v_th=float(s.get("pool_v_th", 1.0)))
            layers.append(pool)
            shape = pool.out_shape
        elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in item):
                raise TaskConfigError(f"model spec 'conv': entry {item!r} must hold integers >= 1 "
                                      "([channels, kernel] or [channels, kernel, stride])")
            # a third number is the stride: a conv that also downsamples, in place of a pool layer
            stride = int(item[2]) if len(item) == 3 else 1
            if stride > int(item[1]):
                raise TaskConfigError(f"model spec 'conv': entry {item!r} has stride {stride} > kernel {item[1]} "
                                      "(inputs between the windows would be skipped)")
            conv = ConvLIF(shape, int(item[0]), int(item[1]), stride=stride, weight_gain=gain, **neuron)
            layers.append(conv)
            shape = conv.out_shape
        else:
            raise TaskConfigError(f"model spec 'conv': entry {item!r} is neither [channels, kernel], "
                                  "[channels, kernel, stride] nor 'pK'")
        n = int(np.prod(shape))
    if s.get("conv"):
        layers.append(Flatten())
    for h, r in zip(hidden, rec):
        if h < 1:
            raise TaskConfigError(f"model spec: hidden size must be >= 1, got {h}")
        if r:
            layers.append(RecurrentLIFDense(n, h, weight_gain=gain, rec_gain=float(s.get("rec_gain", 0.2)),
                                            rec_weight_scale=float(s.get("rec_weight_scale", 1.0)), **neuron))
        else:
            layers.append(LIFDense(n, h, weight_gain=gain, **neuron))
        n = h
    layers.append(LIFDense(n, task.classes, weight_gain=float(s.get("output_gain", 1.0)), **neuron))
    return SpikingSequential(layers)
