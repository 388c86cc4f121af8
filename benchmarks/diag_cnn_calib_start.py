"""The start of training after calibration (issue 8): validation accuracy after the first N training samples.

    python benchmarks/diag_cnn_calib_start.py --config benchmarks/configs/mnist10k_cnn.json --rule bptt \\
        --seed 1 --samples 1280 --fold output

Builds the task's model as ``snn2hw train`` does (``train_task``), trains one pass over the first
``--samples`` images of the training split (the trainer's own shuffling, seed ``--seed``) with
``TrainerConfig.calibrate_fold`` = ``--fold``, and prints and writes (``--json``) the read-out's
calibration and the accuracy on the whole validation split. Chooses the calibration on validation at a
fraction of an epoch's cost; the test split is never read.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from snn2hw.learning import make_rule
from snn2hw.learning.experiment import read_config
from snn2hw.models.tasks import build_model, default_rule_options, get_task
from snn2hw.train.trainer import Trainer, TrainerConfig, _Data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist10k")
    ap.add_argument("--config", required=True)
    ap.add_argument("--rule", default="bptt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1280)
    ap.add_argument("--fold", default="none")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = read_config(a.config)
    t = get_task(a.task)
    data = t.load(config.get("data"))
    steps = t.steps(config.get("data"))
    rule_options = {**default_rule_options(a.rule, steps), **config.get("rule_options", {})}
    model = build_model(t, config.get("model"), a.seed)
    tcfg = {**t.trainer_defaults, **config.get("trainer", {}), "epochs": 1, "calibrate_fold": a.fold}
    tcfg.pop("scheduler", None)  # a fraction of an epoch: the schedule's start is its constant lr
    cfg = TrainerConfig(**tcfg, seed=a.seed, rule=a.rule, rule_options=rule_options, progress=False,
                        save_best=None)
    trainer = Trainer(model, cfg, rule=make_rule(a.rule, **rule_options), loss_fn=t.loss_fn)
    tr = _Data(data["train"])
    x, y, *_ = tr.get(torch.arange(min(a.samples, len(tr))), torch.device("cpu"))
    t0 = time.process_time()
    trainer.fit((x, y))
    val = trainer.evaluate(data["val"])
    out = {"task": a.task, "config": a.config, "rule": a.rule, "seed": a.seed, "samples": int(len(y)),
           "fold": a.fold, "val_accuracy": val.get("accuracy"), "val_loss": val.get("loss"),
           "calibration": [vars(c) for c in trainer.calibration], "cpu_s": time.process_time() - t0,
           "loadavg": list(os.getloadavg())}
    print(json.dumps({k: v for k, v in out.items() if k != "calibration"}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
