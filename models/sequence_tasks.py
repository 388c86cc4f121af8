"""Tasks of the exact-gradient rules, by name, for ``snn2hw train`` (next to ``snn2hw.models.tasks``).

=============  ===============================================  ==========================================
task           data (generated; fixed seeds per split)          model, rules, score
=============  ===============================================  ==========================================
delayed_xor    Huh & Sejnowski's delayed-memory XOR             ``GatedQIF`` 3-40(recurrent)-1; rule
               (``snn2hw.models.delayed_xor``): 512 / 256 /     ``gated``; accuracy (sign of the mean output
               512 trials, seeds 100 / 101 / 102                in the response window), masked MSE
pc_ae          predictive-coding auto-encoder                   ``GatedQIF`` 4-64(recurrent)-2; rule
               (``snn2hw.models.pc_autoencoder``): 256 / 128 /  ``gated``; NMSE of the reconstruction
               256 trials of 200 steps, seeds 200 / 201 / 202   (1 = predicting zero)
yinyang        Yin-Yang (``snn2hw.models.yinyang``): the        5-60-3 CUBA-LIF; rule ``spike-time``
               published 5000 / 1000 / 1000 split (options      (``single_spike`` network, first-spike
               ``train``/``val``/``test``: the first N points)  decoding) or ``bptt`` (spike counts)
=============  ===============================================  ==========================================

A ``SequenceTask`` has what ``snn2hw.learning.experiment.train_task`` reads from a ``Task`` (``load``,
``steps``, defaults) plus ``setup(rule, model_spec, seed, data)``, which returns the rule-specific recipe: the
model, loss, decoder, the history column that picks the best epoch, and the float and deployed scores.

Deployment: a ``GatedQIF`` has no exact Loihi-2 form (quadratic neuron, graded gate), so the deployed
figure of ``delayed_xor`` and ``pc_ae`` is that of its closest LIF network (``GatedQIF.to_lif_network``,
with its linear read-out refitted on the training trials, ``gated_deploy.refit_readout``; compiled and run
on the bit-accurate simulator), reported with ``deployment.exact = false``; Yin-Yang
networks deploy exactly as trained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from snn2hw.models import tasks as _tasks
from snn2hw.models.tasks import TaskConfigError

__all__ = ["SequenceTask", "Setup", "SEQUENCE_TASKS", "get_task", "available_tasks"]

LIF_MAPPING_NOTE = ("GatedQIF has no exact Loihi-2 mapping (a quadratic neuron and a graded gate); the deployed "
                    "figure is the closest LIF network's (GatedQIF.to_lif_network(), read-out refitted on the "
                    "training trials), compiled and run on the bit-accurate simulator (docs/learning-rules-gated.md)")


@dataclass
class Setup:
    """One task x rule recipe: what ``train_task`` trains and how it scores the result."""

    model: torch.nn.Module
    loss_fn: Callable | None  # None: the trainer's default (count cross-entropy)
    predict_fn: Callable | bool | None  # False: no accuracy column (regression targets)
    save_best: str  # history column that chooses the kept epoch ("...loss": lower is better)
    evaluate: Callable[[torch.nn.Module, Any, Any, str], dict]  # (model, x, y, split) -> {"float_<split>_...": v}
    # (model, x_test, y_test, (x_train, y_train)) -> ({"deployed_test_...": v, "deployment": {...}}, network run)
    deploy: Callable[[torch.nn.Module, Any, Any, tuple], tuple[dict, torch.nn.Module | None]]
    rule_options: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SequenceTask:
    name: str
    description: str
    data_defaults: dict
    model_defaults: dict
    trainer_defaults: dict
    loader: Callable[[dict], dict] = field(repr=False)
    recipe: Callable[["SequenceTask", str, dict, int, dict], Setup] = field(repr=False)
    steps_of: Callable[[dict], int] = field(repr=False)
    classes: int = 0

    def _opts(self, data: dict | None) -> dict:
        opts = {**self.data_defaults, **(data or {})}
        unknown = set(opts) - set(self.data_defaults)
        if unknown:
            raise TaskConfigError(f"task {self.name!r}: unknown data option(s) {sorted(unknown)}; "
                                  f"known: {sorted(self.data_defaults)}")
        return opts

    def load(self, data: dict | None = None) -> dict:
        """{"train": (x, y), "val": (x, y), "test": (x, y)}."""
        try:
            return self.loader(self._opts(data))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TaskConfigError):
                raise
            raise TaskConfigError(f"task {self.name!r}: bad data option(s): {exc}") from None

    def steps(self, data: dict | None = None) -> int:
        return int(self.steps_of(self._opts(data)))

    def setup(self, rule: str, spec: dict | None = None, seed: int = 0, data: dict | None = None) -> Setup:
        """The model (seeded by ``seed``) and its training/scoring recipe for ``rule``; ``data``: the data
        options the model must fit (e.g. the signal's dimension)."""
        spec = dict(spec or {})
        unknown = set(spec) - set(self.model_defaults)
        if unknown:
            raise TaskConfigError(f"task {self.name!r}: unknown model key(s) {sorted(unknown)}; "
                                  f"known: {sorted(self.model_defaults)}")
        torch.manual_seed(seed)
        return self.recipe(self, rule, {**self.model_defaults, **spec}, seed, self._opts(data))


# --- shared pieces ---------------------------------------------------------------------------------------
def _batched(model, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[lo:lo + batch]) for lo in range(0, len(x), batch)])


def _gated_model(spec: dict, inputs: int, outputs: int):
    from snn2hw.nn.gated import GatedQIF

    try:
        return GatedQIF(inputs, int(spec["hidden"]), outputs, tau_v=float(spec["tau_v"]), tau_s=float(spec["tau_s"]),
                        delta=float(spec["delta"]), i0=float(spec["i0"]), input_gain=float(spec["input_gain"]),
                        rec_gain=float(spec["rec_gain"]), out_gain=float(spec["out_gain"]))
    except (TypeError, ValueError) as exc:
        raise TaskConfigError(f"model spec: {exc}") from None


def _deploy_gated(score: Callable[[torch.Tensor, torch.Tensor], dict]):
    """Deployment of a ``GatedQIF``: its LIF mapping, compiled and run on the simulator, scored by ``score``
    (read-out trace (n, T, out), targets) -> {"<metric>": v}. Two networks: the plain mapping
    (``deployed_mapping_test_<metric>``) and the mapping with its linear read-out refitted by least squares
    on the training trials (``refit_readout``; ``deployed_test_<metric>``, the one saved and reported)."""
    def deploy(model, x, y, train):
        from snn2hw.nn.gated_deploy import deployed_readout, refit_readout

        def on_sim(net):
            return torch.from_numpy(np.concatenate([deployed_readout(net, x[lo:lo + 256])
                                                    for lo in range(0, len(x), 256)])).float()

        mapped = model.to_lif_network()
        refit = refit_readout(mapped, *train, on="sim")
        out = {}
        for prefix, net in (("deployed_mapping_test", mapped), ("deployed_test", refit)):
            out.update({f"{prefix}_{k}": v for k, v in score(on_sim(net), y).items()})
        with torch.no_grad():
            out.update({f"mapped_float_test_{k}": v for k, v in score(_batched(mapped, x), y).items()})
        out["deployment"] = {"exact": False, "network": "GatedQIF.to_lif_network() (RecurrentLIFDense + LeakyReadout), "
                             "read-out refitted on the training trials (gated_deploy.refit_readout)",
                             "note": LIF_MAPPING_NOTE}
        return out, refit
    return deploy


def _gated_setup(task: SequenceTask, rule: str, spec: dict, inputs: int, outputs: int, loss, score) -> Setup:
    model = _gated_model(spec, inputs, outputs)

    def evaluate(m, x, y, split):
        return {f"float_{split}_{k}": v for k, v in score(_batched(m, x), y).items()}

    return Setup(model=model, loss_fn=loss, predict_fn=False, save_best="val_loss", evaluate=evaluate,
                 deploy=_deploy_gated(score))


_GATED_SPEC = {"tau_v": 10.0, "tau_s": 10.0, "delta": 1.0, "i0": -0.05, "input_gain": 2.0, "rec_gain": 1.0,
               "out_gain": 1.0}


# --- delayed-memory XOR -----------------------------------------------------------------------------------
_XOR_SHAPE = ("pulse", "onset", "delay", "response", "go")


def _xor_kwargs(opts: dict) -> dict:
    return {k: tuple(opts[k]) if isinstance(opts[k], list) else opts[k] for k in _XOR_SHAPE}


def _load_xor(opts: dict) -> dict:
    from snn2hw.models import delayed_xor as X

    kw = _xor_kwargs(opts)
    return {split: X.make(int(opts[split]), seed=int(opts["seed"]) + i, **kw)
            for i, split in enumerate(("train", "val", "test"))}


def _xor_steps(opts: dict) -> int:
    from snn2hw.models import delayed_xor as X

    kw = _xor_kwargs(opts)
    return X.steps_needed(kw["onset"], kw["delay"], kw["response"], kw["go"])


def _xor_score(o, y) -> dict:
    from snn2hw.models import delayed_xor as X

    return {"accuracy": X.accuracy(o, y), "mse": float(X.masked_mse(o, y))}


def _xor_recipe(task, rule, spec, seed, data) -> Setup:
    from snn2hw.models import delayed_xor as X

    return _gated_setup(task, rule, spec, 3, 1, X.masked_mse, _xor_score)


# --- predictive-coding auto-encoder ----------------------------------------------------------------------
_PC_SHAPE = ("steps", "dims", "tau_x", "rate", "horizon", "warmup")


def _load_pc(opts: dict) -> dict:
    from snn2hw.models import pc_autoencoder as P

    kw = {k: opts[k] for k in _PC_SHAPE}
    return {split: P.make(int(opts[split]), seed=int(opts["seed"]) + i, **kw)
            for i, split in enumerate(("train", "val", "test"))}


def _pc_score(o, y) -> dict:
    from snn2hw.models import pc_autoencoder as P

    return {"nmse": P.nmse(o, y)}


def _pc_recipe(task, rule, spec, seed, data) -> Setup:
    from snn2hw.models import pc_autoencoder as P

    dims = int(data["dims"])
    setup = _gated_setup(task, rule, spec, 2 * dims, dims, P.masked_mse, _pc_score)
    inner = setup.evaluate

    def evaluate(m, x, y, split):  # the baselines of the split, next to the network's score
        out = inner(m, x, y, split)
        out[f"baseline_zero_{split}_nmse"] = 1.0  # predicting 0 (= the signal's mean): MSE / mean(y^2)
        return out

    setup.evaluate = evaluate
    return setup


# --- Yin-Yang ---------------------------------------------------------------------------------------------
def _load_yinyang(opts: dict) -> dict:
    from snn2hw.models import yinyang as Y

    kw = {"input_steps": int(opts["input_steps"]), "steps": int(opts["steps"])}
    return {split: Y.load(split, size=opts[split], **kw) for split in ("train", "val", "test")}


def _deployed_predictions(model, x: torch.Tensor, decode, batch: int = 500) -> torch.Tensor:
    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph

    art = compile_graph(model.to_ir())
    out = art.graph.outputs[0]
    preds = []
    for lo in range(0, len(x), batch):
        res = sim.run(art, x[lo:lo + batch].numpy().astype(np.int64), count_events=False)
        preds.append(decode(torch.from_numpy(res.spikes[out]).float()))
    return torch.cat(preds)


def _yinyang_recipe(task, rule, spec, seed, data) -> Setup:
    from snn2hw.learning.spike_time import first_spike_cross_entropy, predict_first_spike, single_spike
    from snn2hw.nn.layers import SpikingSequential
    from snn2hw.train.trainer import predict_counts

    hidden, du, dv = int(spec["hidden"]), float(spec["du"]), float(spec["dv"])
    if rule == "spike-time":
        model = SpikingSequential.build([5, hidden, 3], du=du, dv=dv, v_th=1.0)
        with torch.no_grad():  # each hidden neuron needs a few input spikes, each output a few hidden spikes
            model.layers[0].weight.normal_(0.06, 0.1)
            model.layers[1].weight.normal_(0.015, 0.03)
        model, loss, decode, lr = single_spike(model), first_spike_cross_entropy, predict_first_spike, 3e-3
    else:  # BPTT and the other surrogate rules: the same architecture, decoded by spike counts
        model = SpikingSequential.build([5, hidden, 3], du=du, dv=dv, v_th=1.0, weight_gain=float(spec["weight_gain"]))
        loss, decode, lr = None, predict_counts, 5e-3

    def evaluate(m, x, y, split):
        m.eval()
        with torch.no_grad():
            pred = torch.cat([decode(m(x[lo:lo + 500])) for lo in range(0, len(x), 500)])
        return {f"float_{split}_accuracy": float((pred == y).float().mean())}

    def deploy(m, x, y, train):
        acc = float((_deployed_predictions(m.cpu(), x, decode) == y).float().mean())
        return {"deployed_test_accuracy": acc, "deployment": {"exact": True, "decode": decode.__name__}}, None

    return Setup(model=model, loss_fn=loss, predict_fn=decode, save_best="val_accuracy", evaluate=evaluate,
                 deploy=deploy, trainer={"lr": lr})


SEQUENCE_TASKS: dict[str, SequenceTask] = {
    "delayed_xor": SequenceTask(
        "delayed_xor", "delayed-memory XOR (Huh & Sejnowski), 512/256/512 train/val/test trials",
        {"train": 512, "val": 256, "test": 512, "seed": 100, "pulse": 10, "onset": [5, 15], "delay": [25, 40],
         "response": 20, "go": 5},
        {"hidden": 40, **_GATED_SPEC},
        {"epochs": 8, "batch_size": 32, "lr": 1e-2, "grad_clip": 1.0, "optimizer": "adam"},
        _load_xor, _xor_recipe, _xor_steps),
    "pc_ae": SequenceTask(
        "pc_ae", "predictive-coding auto-encoder (Huh & Sejnowski), 256/128/256 trials of 200 steps",
        {"train": 256, "val": 128, "test": 256, "seed": 200, "steps": 200, "dims": 2, "tau_x": 15.0, "rate": 0.4,
         "horizon": 0, "warmup": 20},
        {"hidden": 64, **_GATED_SPEC, "tau_v": 5.0, "tau_s": 5.0, "input_gain": 4.0},
        {"epochs": 20, "batch_size": 32, "lr": 2e-2, "grad_clip": 1.0, "optimizer": "adam", "scheduler": "cosine"},
        _load_pc, _pc_recipe, lambda o: int(o["steps"])),
    "yinyang": SequenceTask(
        "yinyang", "Yin-Yang (Kriener et al. 2021 recipe), 5000/1000/1000 train/val/test",
        {"train": 5000, "val": 1000, "test": 1000, "steps": 64, "input_steps": 30},
        {"hidden": 60, "du": 0.1, "dv": 0.05, "weight_gain": 3.0},
        {"epochs": 15, "batch_size": 32, "optimizer": "adam", "scheduler": "cosine"},
        _load_yinyang, _yinyang_recipe, lambda o: int(o["steps"]), classes=3),
}


def available_tasks() -> list[str]:
    return sorted({**_tasks.TASKS, **SEQUENCE_TASKS})


def get_task(name: str):
    """A zoo task (``snn2hw.models.tasks``) or one of these, by name."""
    if name in SEQUENCE_TASKS:
        return SEQUENCE_TASKS[name]
    if name in _tasks.TASKS:
        return _tasks.TASKS[name]
    raise TaskConfigError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
