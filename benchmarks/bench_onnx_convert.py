"""ANN-to-SNN conversion from ONNX: accuracy against the number of time steps.

For each task (scikit-learn digits: 1,437 train / 360 test, stratified, ``random_state=0``; MNIST-10k:
the fixed 7,000 / 1,000 / 2,000 split of ``snn2hw.models.mnist10k``, evaluated on its 2,000 test images)
and each network (an MLP and a small CNN with average pooling), in one run:

1. train the ANN with torch (Adam, cross-entropy; the epochs are in the JSON), export it with
   ``torch.onnx.export`` (to bytes, inside this script: nothing is downloaded);
2. ``snn2hw.onnx.convert`` it, calibrated on 512 training images (``--steps-calibration`` steps,
   99.9th-percentile normalisation, threshold balancing for Loihi 2's reset to zero);
3. report, for T in ``--steps``: the ANN's test accuracy; the converted SNN in float (PyTorch forward of
   the ``SpikingSequential``, class = arg-max of the read-out's v at the last step); the deployed network
   (``compile_graph`` -> 8-bit Loihi 2 fixed point -> ``snn2hw.backends.sim``, same read-out).
   Inputs are deterministic rate codes (``regular_rate``) of the pixel intensities.

Writes a table (stdout), ``benchmarks/results/onnx_convert.json`` and ``onnx_convert.png``.

    python benchmarks/bench_onnx_convert.py [--tasks digits mnist] [--steps 8 16 32 64] [--quick]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from snn2hw.backends import sim  # noqa: E402
from snn2hw.compiler import compile_graph  # noqa: E402
from snn2hw.onnx.convert import ConversionConfig, convert, encode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load_task(name: str):
    """(x_train (n, C, H, W) float32 in [0, 1], y_train, x_test, y_test)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
        return x_tr, y_tr, x_te, y_te
    from snn2hw.models import mnist10k

    x_tr, y_tr = mnist10k.load("train")
    x_te, y_te = mnist10k.load("test")
    return (x_tr.numpy().reshape(-1, 1, 28, 28), y_tr.numpy(), x_te.numpy().reshape(-1, 1, 28, 28), y_te.numpy())


def build(task: str, kind: str) -> torch.nn.Module:
    side = 8 if task == "digits" else 28
    if kind == "mlp":
        hidden = 128 if task == "digits" else 256
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(hidden, 10))
    if task == "digits":  # 8x8 -> 8x8x8 -> pool 4x4 -> 16x4x4 -> pool 2x2 -> 10
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(16 * 2 * 2, 10))
    # 28x28 -> 8x12x12 (5x5, stride 2) -> 16x10x10 (3x3) -> pool 5x5 -> 10
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 5 * 5, 10))


def train(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()


def to_onnx(net: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, buf, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def evaluate(task: str, kind: str, steps: list[int], cal_steps: int, epochs: int, quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te = load_task(task)
    if quick:
        x_te, y_te = x_te[:300], y_te[:300]
    t0 = time.perf_counter()
    net = build(task, kind)
    train(net, x_tr, y_tr, epochs)
    with torch.no_grad():
        ann_acc = float((net(torch.as_tensor(x_te)).argmax(1).numpy() == y_te).mean())
    model = to_onnx(net, torch.as_tensor(x_tr[:1]))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    snn, report = convert(model, x_tr[:512], ConversionConfig(steps=cal_steps))
    t_convert = time.perf_counter() - t0
    art = compile_graph(snn.to_ir())
    out = art.graph.outputs[0]
    rows = []
    for T in steps:
        spikes = encode(x_te, T)
        t0 = time.perf_counter()
        with torch.no_grad():
            v = torch.cat([snn(spikes[i:i + 250])[:, -1] for i in range(0, len(spikes), 250)])
        float_acc = float((v.argmax(1).numpy() == y_te).mean())
        t_float = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = sim.run(art, spikes.numpy().astype(np.int64), record_state=[out], count_events=False)
        sim_acc = float((res.v[out][:, -1].argmax(1) == y_te).mean())
        rows.append({"steps": T, "ann_accuracy": ann_acc, "snn_float_accuracy": float_acc,
                     "deployed_sim_accuracy": sim_acc, "float_s": time.perf_counter() - t0 + t_float})
        print(f"  {task:7s} {kind:4s} T={T:4d}  ANN {100 * ann_acc:6.2f}  SNN float {100 * float_acc:6.2f}  "
              f"deployed {100 * sim_acc:6.2f}", flush=True)
    return {"task": task, "network": kind, "epochs": epochs, "test_samples": int(len(y_te)),
            "layers": [type(m).__name__ for m in snn.layers], "resources": {k: art.resources[k] for k in
                                                                           ("neurons", "synapses", "cores")},
            "conversion": report.as_dict(), "calibration_steps": cal_steps, "train_s": t_train,
            "convert_s": t_convert, "rows": rows}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        t = [row["steps"] for row in r["rows"]]
        ax.axhline(100 * r["rows"][0]["ann_accuracy"], color="k", ls="--", label="ANN")
        ax.plot(t, [100 * row["snn_float_accuracy"] for row in r["rows"]], "o-", label="SNN float")
        ax.plot(t, [100 * row["deployed_sim_accuracy"] for row in r["rows"]], "s-", label="deployed (sim)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps")
        ax.set_title(f"{r['task']} {r['network']}")
        ax.set_ylim(max(0, min(100 * row["deployed_sim_accuracy"] for row in r["rows"]) - 5), 100)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    ap.add_argument("--networks", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    ap.add_argument("--steps", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    ap.add_argument("--steps-calibration", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="300 test images, few epochs")
    ap.add_argument("--out", default=str(RESULTS / "onnx_convert.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    epochs = {"digits": 3 if args.quick else 40, "mnist": 1 if args.quick else 8}
    results = [evaluate(t, k, args.steps, args.steps_calibration, epochs[t], args.quick)
               for t in args.tasks for k in args.networks]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "threads": args.threads,
            "machine": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "quick": args.quick,
            "note": "accuracies do not depend on machine load; times do (shared machine)"}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    plot(results, out.with_suffix(".png"))
    print("\n| task | network | T | ANN % | SNN float % | deployed (sim) % |\n|---|---|---|---|---|---|")
    for r in results:
        for row in r["rows"]:
            print(f"| {r['task']} | {r['network']} | {row['steps']} | {100 * row['ann_accuracy']:.2f} | "
                  f"{100 * row['snn_float_accuracy']:.2f} | {100 * row['deployed_sim_accuracy']:.2f} |")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
