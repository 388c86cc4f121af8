"""What a trained conv/pool network's read-out does on the validation split (issue 8): accuracy, ties at the top
count, the label neuron's count, the largest wrong count, and each spiking layer's mean rate and silent units.

    python benchmarks/diag_cnn_readout.py --task mnist10k --config benchmarks/configs/mnist10k_cnn.json \\
        out/bench_accuracy/mnist10k-mnist10k_cnn_hm2bp_mse_cos_neurons-hm2bp-e1-s0/model.ckpt \\
        out/bench_accuracy/mnist10k-mnist10k_cnn_neurons-bptt-e1-s0/model.ckpt

Float model only (the checkpoint as trained); reads the validation split, never the test split. The read-out
predicts the first of the outputs with the most spikes (``argmax``), so a tie at the top is a coin the
network did not decide.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from snn2hw.models.tasks import get_task
from snn2hw.learning.experiment import read_config
from snn2hw.train.checkpoint import load_checkpoint
from snn2hw.train.trainer import _Data


def readout_stats(model, data, batch: int = 250) -> dict:
    data = _Data(data)
    counts, labels, rates = [], [], None
    with torch.no_grad():
        for s in range(0, len(data), batch):
            x, yb, *_ = data.get(torch.arange(s, min(s + batch, len(data))), torch.device("cpu"))
            labels.append(yb)
            outs = model(x, return_all=True)
            counts.append(outs[-1].sum(1))
            r = [(o.float().mean(1)) for o, layer in zip(outs, model.layers) if hasattr(layer, "threshold")]
            per = [(float(t.mean()) * len(t), (t.sum(0))) for t in r]
            rates = per if rates is None else [(a + b, c + d) for (a, c), (b, d) in zip(rates, per)]
    c = torch.cat(counts)
    y = torch.cat(labels)
    n = len(y)
    top = c.max(1).values
    label = c.gather(1, y[:, None]).squeeze(1)
    wrong = c.clone()
    wrong.scatter_(1, y[:, None], -1.0)
    wrong_max = wrong.max(1).values
    ties = (c == top[:, None]).sum(1) > 1
    pred = c.argmax(1)
    return {
        "accuracy": float((pred == y).float().mean()),
        "tie_at_top": float(ties.float().mean()),
        "tie_at_top_with_label": float((ties & (label == top)).float().mean()),
        "all_outputs_silent": float((top == 0).float().mean()),
        "label_silent": float((label == 0).float().mean()),
        "label_count_mean": float(label.mean()),
        "max_wrong_count_mean": float(wrong_max.mean()),
        "margin_label_minus_wrong_mean": float((label - wrong_max).mean()),
        "layer_rate": [round(a / n, 4) for a, _ in rates],
        "layer_silent_units": [round(float((s == 0).float().mean()), 3) for _, s in rates],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--task", default="mnist10k")
    ap.add_argument("--config", required=True, help="the runs' config (its data options: steps, rates)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    val = get_task(a.task).load(read_config(a.config).get("data"))["val"]
    for path in a.checkpoints:
        model = load_checkpoint(path).eval()
        row = {"checkpoint": path, **readout_stats(model, val)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "loadavg": list(os.getloadavg())}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
