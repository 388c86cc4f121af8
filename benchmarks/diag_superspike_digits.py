"""Why SuperSpike trails BPTT on digits: one training run on the validation split's training part, then the
validation accuracy and what the output looks like (samples with no output spike at all, ties at the top
count, output neurons that never fire, hidden neurons that never fire).

``--van-rossum`` trains the rule (BPTT) on SuperSpike's own loss instead of the task's count cross-entropy:
the van Rossum distance (``tau``) to the label raster (``target_interval``, ``target_offset``), which
separates the loss from the rule. Appends one JSON row per run to ``--out``.

    python benchmarks/diag_superspike_digits.py superspike 0 0.02 20 --options '{"target_interval": 3}'
    python benchmarks/diag_superspike_digits.py bptt 0 0.005 20 --options '{"target_interval": 3}' --van-rossum
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rule")
    ap.add_argument("seed", type=int)
    ap.add_argument("lr", type=float)
    ap.add_argument("epochs", type=int)
    ap.add_argument("--options", default="{}", help="rule options (JSON); with --van-rossum the loss's target options")
    ap.add_argument("--van-rossum", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "superspike_digits_diagnosis.json"))
    a = ap.parse_args(argv)
    import torch

    import bench_online_rules as B
    from snn2hw.learning.superspike import label_raster
    from snn2hw.train.losses import van_rossum_distance
    from snn2hw.train.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    task = B.load_task("digits")
    opts = json.loads(a.options)
    ro = {**B.rule_options("superspike", task), **opts} if a.rule == "superspike" or a.van_rossum else dict(opts)
    loss = task["loss"]
    if a.van_rossum:
        iv, off, tau = ro.pop("target_interval"), ro.pop("target_offset"), ro.pop("tau", 10.0)
        loss = lambda o, y: van_rossum_distance(o, label_raster(y, o.shape[1], o.shape[2], iv, off, o.dtype), tau=tau)  # noqa: E731
    model = task["build"](a.seed)
    cfg = TrainerConfig(epochs=a.epochs, batch_size=task["batch"], lr=a.lr, optimizer="adam", scheduler="cosine",
                        seed=a.seed, progress=False, tensorboard=False, rule=a.rule, rule_options=ro)
    t0 = time.time()
    hist = Trainer(model, cfg, loss_fn=loss).fit(task["train"])
    x, y = task["val"]
    model.eval()
    with torch.no_grad():
        hidden, out = model(x, return_all=True)
    c = out.sum(1)
    top = c.max(1, keepdim=True).values
    row = {"command": " ".join(["diag_superspike_digits.py"] + (argv if argv is not None else sys.argv[1:])),
           "rule": a.rule, "options": opts, "loss": "van Rossum to the label raster" if a.van_rossum else "count cross-entropy"
           if a.rule != "superspike" else "van Rossum (the rule's)", "seed": a.seed, "lr": a.lr, "epochs": a.epochs,
           "train_s": round(time.time() - t0, 1), "load_after": os.getloadavg()[0],
           "loss_by_epoch": [round(r["loss"], 3) for r in hist],
           "val_accuracy": float((c.argmax(1) == y).float().mean()),
           "val_no_output_spike": float((c.sum(1) == 0).float().mean()),
           "val_tied_top": float(((c == top).sum(1) > 1).float().mean()),
           "outputs_never_firing": int((c.sum(0) == 0).sum()),
           "hidden_never_firing": int((hidden.sum((0, 1)) == 0).sum()), "hidden_rate": float(hidden.mean())}
    path = Path(a.out)
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
