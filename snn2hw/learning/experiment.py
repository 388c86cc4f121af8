"""One training run of a zoo task with a learning rule, chosen on validation and deployed on the simulator.

``train_task`` is what ``snn2hw train`` runs: it builds the task's model from a model spec, trains it
with the rule through ``Trainer`` (best epoch by validation accuracy, never by test), writes the
checkpoint (the trainer's format: ``snn2hw export`` and ``compile`` take it), compiles the network and
classifies the test split on the bit-accurate simulator, and writes ``results.json``.

A config file (JSON) may hold ``model`` (the spec, ``snn2hw.models.tasks``), ``data`` (task data
options, e.g. ``steps``), ``trainer`` (``TrainerConfig`` fields), ``rule_options`` and ``deploy`` (how
the network is quantized for the simulator: ``PTQConfig`` fields of ``snn2hw.compiler.ptq``, plus
``calibration_samples``, the number of training samples the calibration runs on); anything else is an
error naming the file and the key. Without ``deploy`` the straight quantizer deploys (the integers QAT uses).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from snn2hw.artefact import atomic_write_bytes

__all__ = ["ExperimentConfigError", "read_config", "train_task", "deployed_accuracy", "PeakMemory"]

CONFIG_KEYS = {"model", "data", "trainer", "rule_options", "deploy"}
_RESERVED_TRAINER = {"rule", "rule_options", "checkpoint_dir", "log_dir", "save_best"}


class ExperimentConfigError(ValueError):
    """A config file that is missing, not JSON, or holds unknown keys or values."""


def read_config(path: str | os.PathLike | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ExperimentConfigError(f"{p}: no such config file")
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentConfigError(f"{p}: not a JSON file ({exc})") from None
    if not isinstance(cfg, dict):
        raise ExperimentConfigError(f"{p}: the config must be a JSON object with keys {sorted(CONFIG_KEYS)}")
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise ExperimentConfigError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    for k in CONFIG_KEYS & set(cfg):
        if not isinstance(cfg[k], dict):
            raise ExperimentConfigError(f"{p}: '{k}' must be a JSON object")
    from snn2hw.train.trainer import TrainerConfig

    known = {f.name for f in fields(TrainerConfig)} - _RESERVED_TRAINER
    bad = set(cfg.get("trainer", {})) - known
    if bad:
        raise ExperimentConfigError(f"{p}: 'trainer': unknown or reserved field(s) {sorted(bad)}; known: {sorted(known)}")
    _check_trainer_types(cfg.get("trainer", {}), p)
    if "deploy" in cfg:
        _deploy_options(cfg["deploy"], p)
    cfg["_path"] = str(p)
    return cfg


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "tuple": (list,),
               "dict": (dict,), "None": (type(None),)}


def _check_trainer_types(trainer: dict, where) -> None:
    """Each ``trainer`` value of a config file has its ``TrainerConfig`` field's JSON type ("lr": "fast" and
    "batch_size": "8" are refused here, naming the field, instead of failing inside torch)."""
    from snn2hw.train.trainer import TrainerConfig

    kinds = {f.name: str(f.type) for f in fields(TrainerConfig)}
    for key, value in trainer.items():
        names = [n.strip() for n in kinds[key].split("|")]
        ok = tuple(t for n in names for t in _JSON_TYPES.get(n, (object,)))
        if (isinstance(value, bool) and "bool" not in names) or not isinstance(value, ok):
            raise ExperimentConfigError(f"{where}: 'trainer': {key} must be {' or '.join(names)}, got {value!r}")


def _deploy_options(deploy: dict, where="config") -> tuple:
    """(PTQConfig or None, calibration samples) from a config's ``deploy`` object."""
    import dataclasses

    from snn2hw.compiler.ptq import SETTING_KEYS, PTQConfig
    from snn2hw.quantize import QuantizationError

    deploy = dict(deploy)
    n = deploy.pop("calibration_samples", 256)
    bad = set(deploy) - SETTING_KEYS
    if bad:
        raise ExperimentConfigError(f"{where}: 'deploy': unknown field(s) {sorted(bad)}; known: "
                                    f"{sorted(SETTING_KEYS | {'calibration_samples'})}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ExperimentConfigError(f"{where}: 'deploy': calibration_samples must be a positive integer, got {n!r}")
    if not deploy:
        return None, n
    try:
        return dataclasses.replace(PTQConfig(), **deploy), n
    except (TypeError, QuantizationError) as exc:
        raise ExperimentConfigError(f"{where}: 'deploy': {exc}") from None


class PeakMemory:
    """Peak memory of a block: CUDA's max allocated bytes on a GPU; on the CPU the peak resident set
    above the level at entry, sampled from /proc/self/statm every ``interval`` seconds (Linux)."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_above_start"

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._rss()
            self._stop = threading.Event()
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_bytes = int(self._peak - self._base)
        return False


class _EpochTimer:
    """Training time per epoch without the validation pass: from the epoch's start to its last step."""

    def __init__(self):
        self.train_s: list[float] = []

    def on_fit_start(self, trainer):
        self._t0 = self._last = time.perf_counter()

    def on_step_end(self, trainer, info):
        self._last = time.perf_counter()

    def on_epoch_end(self, trainer, row):
        self.train_s.append(self._last - self._t0)
        self._t0 = time.perf_counter()


def _batches(x, lo, hi):
    return x.spikes(lo, hi) if hasattr(x, "spikes") else x[lo:hi]


def _float_accuracy(model, x, y, batch=256, device=None) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(y), batch):
            xb = _batches(x, lo, min(lo + batch, len(y))).to(device)
            correct += int((model(xb).sum(1).argmax(1).cpu() == y[lo:lo + batch]).sum())
    return correct / len(y)


def deployed_accuracy(model, x, y, batch: int = 250, ptq=None, calibration_inputs=None, artefact_out: list | None = None
                      ) -> float:
    """Compile ``model`` (quantize, design rules, mapping) and classify on the bit-accurate simulator.
    ``ptq``/``calibration_inputs`` as in ``compile_graph``; ``artefact_out`` (a list) receives the artefact."""
    from snn2hw.compiler import compile_graph

    art = compile_graph(model.to_ir(), ptq=ptq, calibration_inputs=calibration_inputs)
    if artefact_out is not None:
        artefact_out.append(art)
    return simulated_accuracy(art, x, y, batch)


def simulated_accuracy(art, x, y, batch: int = 250) -> float:
    """Accuracy of a compiled artefact on the bit-accurate simulator (most active output = the class)."""
    from snn2hw.backends import sim

    out = art.graph.outputs[0]
    prepared = sim.prepare(art)  # weights prepared once for all batches
    correct = 0
    for lo in range(0, len(y), batch):
        xb = _batches(x, lo, min(lo + batch, len(y))).numpy().astype(np.int64)
        res = sim.run(prepared, xb, count_events=False)
        correct += int((res.spikes[out].sum(axis=1).argmax(axis=1) == y[lo:lo + batch].numpy()).sum())
    return correct / len(y)


def train_task(task: str, rule: str = "bptt", config: dict | None = None, epochs: int | None = None,
               seed: int = 0, out: str | os.PathLike = "out/train", device: str | None = None,
               deploy: bool = True, progress: bool = False) -> dict:
    """Train, choose on validation, checkpoint, deploy on the simulator; returns (and writes) the results."""
    from snn2hw.learning import make_rule
    from snn2hw.models.sequence_tasks import get_task
    from snn2hw.models.tasks import build_model, default_rule_options
    from snn2hw.train.checkpoint import load_checkpoint, save_checkpoint
    from snn2hw.train.trainer import Trainer, TrainerConfig

    from snn2hw.learning import LearningRuleError
    from snn2hw.models.tasks import TaskConfigError

    config = dict(config or {})
    where = config.get("_path", "config")
    t = get_task(task)
    out = Path(out)
    data = t.load(config.get("data"))
    steps = t.steps(config.get("data"))
    # a task with its own recipe (snn2hw.models.sequence_tasks) builds its model, loss and scores
    setup = t.setup(rule, config.get("model"), seed, config.get("data")) if hasattr(t, "setup") else None
    rule_options = {**default_rule_options(rule, steps), **(setup.rule_options if setup else {}),
                    **config.get("rule_options", {})}
    rule_obj = make_rule(rule, **rule_options)
    model = setup.model if setup else build_model(t, config.get("model"), seed, config.get("data"))
    dev = torch.device(device) if device else torch.device("cpu")
    model.to(dev)
    tcfg = {**t.trainer_defaults, **(setup.trainer if setup else {}), **config.get("trainer", {})}
    if epochs is not None:
        tcfg["epochs"] = int(epochs)
    cfg = TrainerConfig(**tcfg, seed=seed, rule=rule, rule_options=rule_options, checkpoint_dir=str(out / "ckpt"),
                        log_dir=str(out / "logs"), save_best=setup.save_best if setup else "val_accuracy",
                        progress=progress, device=str(dev))
    timer = _EpochTimer()
    hooks = {"loss_fn": setup.loss_fn, "predict_fn": setup.predict_fn} if setup else {"loss_fn": t.loss_fn}
    # Everything a config can get wrong is refused before anything is written to ``out``: the trainer's own
    # checks, torch's checks of the optimizer's settings (lr, betas, momentum, weight decay) and the rule's
    # checks of the model (layer kinds, trainable parameters); ``fit`` repeats the rule's setup.
    try:
        trainer = Trainer(model, cfg, callbacks=[timer], rule=rule_obj, **hooks)
        trainer._make_optimizer()
    except (TypeError, ValueError) as exc:
        raise ExperimentConfigError(f"{where}: 'trainer': {exc}") from None
    rule_obj.setup(model)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with PeakMemory(dev) as mem:
            history = trainer.fit(data["train"], data["val"])
    except (LearningRuleError, ExperimentConfigError, TaskConfigError):
        # a refusal at the first batch (e.g. a window too short for the network): leave no half-written run
        if created and not (out / "ckpt" / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    best = out / "ckpt" / "best.pt"
    if best.is_file():  # the epoch with the best validation accuracy
        model = load_checkpoint(best).to(dev)
    x_val, y_val = _split_xy(data["val"])
    x_te, y_te = _split_xy(data["test"])
    results = {
        "task": task, "rule": rule_obj.describe(), "seed": seed, "epochs": cfg.epochs, "steps": steps,
        "data": dict(config.get("data") or {}),
        "model": model.config(), "model_spec": config.get("model") or t.model_defaults,
        "trainer": {k: v for k, v in tcfg.items()},
        **(_scores(setup, model, (x_val, y_val), (x_te, y_te), dev) if setup else {
            "float_val_accuracy": _float_accuracy(model, x_val, y_val, device=dev),
            "float_test_accuracy": _float_accuracy(model, x_te, y_te, device=dev)}),
        "best_epoch": _best_epoch(history, cfg.save_best),
        "calibration": [vars(c) for c in getattr(trainer, "calibration", [])],  # snn2hw.nn.calibrate
        "time_per_epoch_s": float(np.mean(timer.train_s)) if timer.train_s else None,
        "train_samples": len(_split_xy(data["train"])[1]),
        "peak_memory_mb": mem.peak_bytes / 2**20, "peak_memory_kind": mem.kind,
        "history": history,
    }
    if getattr(rule_obj, "t_ref", 0):  # the rule trained its original neuron: what it scores there
        results["rule_neuron_test_accuracy"] = _rule_accuracy(rule_obj, model, x_te, y_te, dev)
    ckpt = out / "model.ckpt"
    save_checkpoint(model.cpu(), ckpt, extra={"task": task, "rule": rule, "steps": steps, "seed": seed})
    if deploy:
        t0 = time.perf_counter()
        if setup:
            scores, deployed_net = setup.deploy(model.cpu(), x_te, y_te, _split_xy(data["train"]))
            results.update(scores)
            if deployed_net is not None:  # the network that ran on the simulator, for export/compile/run
                results["deployed_checkpoint"] = str(out / "deployed.ckpt")
                save_checkpoint(deployed_net.cpu(), out / "deployed.ckpt", extra={"task": task, "mapped_from": str(ckpt)})
        else:
            ptq, n_cal = _deploy_options(config.get("deploy", {}), config.get("_path", "config"))
            if ptq is None:
                results["deployed_test_accuracy"] = deployed_accuracy(model.cpu(), x_te, y_te)
            else:  # the configured quantizer or the straight one, whichever classifies validation better
                results.update(_deploy_chosen_on_validation(model.cpu(), ptq, n_cal, data, (x_val, y_val),
                                                            (x_te, y_te)))
        results["deploy_time_s"] = time.perf_counter() - t0
    results["checkpoint"] = str(ckpt)
    results["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                              "device": str(dev), "threads": torch.get_num_threads(),
                              "loadavg": list(os.getloadavg()), "argv": sys.argv}
    atomic_write_bytes(out / "results.json", lambda f: f.write(json.dumps(results, indent=2, default=str).encode()))
    return results


def _deploy_chosen_on_validation(model, ptq, n_cal: int, data, val, test) -> dict:
    """Compile with ``ptq`` (calibrated on the first ``n_cal`` training samples) and with the straight
    quantizer; deploy the one with the better validation accuracy on the simulator (ties: straight)."""
    from snn2hw.compiler import compile_graph

    x_tr = _split_xy(data["train"])[0]
    graph = model.to_ir()
    arts = {"straight": compile_graph(graph),
            "ptq": compile_graph(graph, ptq=ptq, calibration_inputs=_batches(x_tr, 0, n_cal).cpu().numpy())}
    val_acc = {k: simulated_accuracy(a, *val) for k, a in arts.items()}
    test_acc = {k: simulated_accuracy(a, *test) for k, a in arts.items()}
    chosen = "ptq" if val_acc["ptq"] > val_acc["straight"] else "straight"
    return {"deployed_test_accuracy": test_acc[chosen], "deployed_val_accuracy": val_acc[chosen],
            "deployed_straight_test_accuracy": test_acc["straight"], "deployed_ptq_test_accuracy": test_acc["ptq"],
            "deployed_straight_val_accuracy": val_acc["straight"], "deployed_ptq_val_accuracy": val_acc["ptq"],
            "deploy_quantization": {
                "chosen": chosen, "ptq": dict(arts["ptq"].provenance["quantizer"]), "calibration_samples": n_cal,
                "threshold_targets": {r["population"]: r["threshold_target"]
                                      for r in arts["ptq"].provenance["quantization"]}}}


def _scores(setup, model, val, test, device) -> dict:
    model = model.to(device)
    return {**setup.evaluate(model, val[0].to(device), val[1].to(device), "val"),
            **setup.evaluate(model, test[0].to(device), test[1].to(device), "test")}


def _best_epoch(history: list, column: str | None):
    rows = [i for i in range(len(history)) if column and history[i].get(column) is not None]
    if not rows:
        return None
    sign = 1.0 if column.endswith("loss") else -1.0
    return min(rows, key=lambda i: sign * history[i][column])


def _split_xy(d):
    if isinstance(d, tuple):
        return d
    return d, d.y


def _rule_accuracy(rule, model, x, y, device, batch=256) -> float:
    correct = 0
    for lo in range(0, len(y), batch):
        xb = _batches(x, lo, min(lo + batch, len(y))).to(device)
        correct += int((rule.predict(model, xb).cpu() == y[lo:lo + batch]).sum())
    return correct / len(y)

