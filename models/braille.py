"""Braille letters read by a 12-taxel tactile fingertip, as a 27-class spiking task.

Data: ``tutorial5_braille_spiking_data.pkl.gz`` from the SpyTorch tutorials (CC BY 4.0), recorded by
Müller-Cleve et al., "Braille letter reading: a benchmark for spatio-temporal pattern recognition on
neuromorphic hardware" (Frontiers in Neuroscience, 2022). 1,350 recordings: 27 letters (A-Z, Space)
x 50 repetitions, each 76-77 samples x 12 taxel readings (0-255). The file is not shipped with
snn2hw; ``find_data`` looks for it (explicit path, ``$SNN2HW_BRAILLE``, ``../shared/data/braille``
next to the repository).

Safety: the file is a pickle, so it is read with a restricted unpickler that can build numpy arrays
and nothing else (``pickle.load`` would run whatever code the file names), from a size-limited
gzip stream, and its structure is checked before use.

Fixed split: per letter, the 50 repetitions are shuffled with ``SPLIT_SEED`` and 40 go to training,
10 to test: 1,080 / 270 samples, stratified, as in SpyTorch's tutorial.

Encoding: each recording is resampled linearly to ``STEPS`` steps (recordings differ by one sample
and the network needs several steps per sensor sample to integrate), then sigma-delta modulated per
taxel with threshold ``THRESHOLD`` (in raw sensor units) into ON (reading rose) and OFF (reading
fell; the taxels read 255 at rest and drop under pressure) channels: 24 binary input channels (``snn2hw.encode.sigma_delta``, ``output="split"``).

Time bins (``bins = K``, default 1 = the encoding above): each of the 24 channels is split into K channels,
channel ``c * K + k`` carrying channel c's events only during the k-th of K equal sub-windows of the
steps (step t belongs to sub-window ``t * K // steps``; sizes differ by at most one step when K does
not divide the steps) and silent elsewhere: 24 * K channels, the same events. The task lives in spike
timing, so this hands timing to rules that see only spike counts per input channel (a linear probe on
the 24 channels' counts reaches 47 % validation, on 8 time bins 96 %).
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from snn2hw.encode import resample, sigma_delta
from snn2hw.nn import layers as L
from snn2hw.nn.layers import LIFDense, SpikingSequential
from snn2hw.train.trainer import TrainerConfig

FILENAME = "tutorial5_braille_spiking_data.pkl.gz"
ENV_VAR = "SNN2HW_BRAILLE"
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("Space",)
TAXELS = 12
STEPS = 256  # the NIR paper's length
THRESHOLD = 1.0
SPLIT_SEED = 0
TRAIN_FRACTION = 0.8
HIDDEN = 128
REC_GAIN = 0.2
REC_WEIGHT_SCALE = 0.05
QAT_LR = 1e-3
# The decompressed file is ~10 MB; anything far larger is not this data set (or is a gzip bomb).
MAX_DECOMPRESSED_BYTES = 64 << 20
_ALLOWED_GLOBALS = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")})


class BrailleDataError(ValueError):
    """The Braille file is missing, too large, or not the expected structure."""


class BrailleOptionError(ValueError):
    """A bad encoding option (``bins``), naming the option and its limits."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global.

    An array's pickle names exactly three globals (``_reconstruct``, ``ndarray``, ``dtype``); allowing
    only those means the file cannot make us import or call anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from the Braille file")


def find_data(path: str | os.PathLike | None = None) -> Path:
    """The data file: ``path`` (the file or its folder), else ``$SNN2HW_BRAILLE``, else
    ``../shared/data/braille`` beside the repository. Raises ``FileNotFoundError`` naming where it looked."""
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    else:
        repo = Path(__file__).resolve().parent.parent
        candidates.append(repo.parent / "shared" / "data" / "braille")
    for c in candidates:
        f = c / FILENAME if c.is_dir() else c
        if f.is_file():
            return f
    raise FileNotFoundError(
        f"Braille data not found (looked at {', '.join(str(c) for c in candidates)}); download {FILENAME} from "
        f"the SpyTorch tutorials (github.com/fzenke/spytorch, notebooks/data/) and pass its path or set ${ENV_VAR}")


def read_recordings(path: str | os.PathLike | None = None) -> list[dict]:
    """The validated list of recordings: dicts with ``letter`` (str), ``repetition`` (int) and
    ``taxel_data`` (float64 array, steps x 12)."""
    f = find_data(path)
    with gzip.open(f, "rb") as gz:
        raw = gz.read(MAX_DECOMPRESSED_BYTES + 1)
    if len(raw) > MAX_DECOMPRESSED_BYTES:
        raise BrailleDataError(f"{f}: decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes; not the Braille data")
    try:
        data = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise BrailleDataError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None
    return _validate(data, f)


def _validate(data, f) -> list[dict]:
    if not isinstance(data, list) or not data:
        raise BrailleDataError(f"{f}: expected a non-empty list of recordings, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "letter" not in rec or "taxel_data" not in rec:
            raise BrailleDataError(f"{f}: recording {i} is not a dict with 'letter' and 'taxel_data'")
        letter, taxels = rec["letter"], rec["taxel_data"]
        if letter not in LETTERS:
            raise BrailleDataError(f"{f}: recording {i} has unknown letter {letter!r}")
        if (not isinstance(taxels, np.ndarray) or taxels.ndim != 2 or taxels.shape[1] != TAXELS
                or taxels.shape[0] < 2 or taxels.dtype.kind not in "fiu" or not np.isfinite(taxels).all()):
            raise BrailleDataError(f"{f}: recording {i} taxel_data is not a finite numeric (steps, {TAXELS}) array")
        rep = rec.get("repetition", i)
        if not isinstance(rep, (int, np.integer)):
            raise BrailleDataError(f"{f}: recording {i} has a non-integer repetition")
        out.append({"letter": letter, "repetition": int(rep), "taxel_data": taxels.astype(np.float64)})
    return out


def split_indices(records: list[dict], seed: int = SPLIT_SEED,
                  train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) record indices: per letter, its recordings (ordered by repetition) are shuffled with
    ``seed`` and the first ``round(train_fraction * n)`` train."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for letter in LETTERS:
        idx = sorted((i for i, r in enumerate(records) if r["letter"] == letter), key=lambda i: records[i]["repetition"])
        if not idx:
            continue
        perm = [idx[j] for j in rng.permutation(len(idx))]
        k = int(round(train_fraction * len(idx)))
        train += perm[:k]
        test += perm[k:]
    return np.array(sorted(train)), np.array(sorted(test))


def check_bins(bins, steps: int | None) -> int:
    """``bins`` as an int, or ``BrailleOptionError`` unless it is an integer from 1 to ``steps`` (every
    sub-window must hold at least one step; ``steps=None``: no upper limit)."""
    limit = "" if steps is None else f" to steps ({steps})"
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise BrailleOptionError(f"bins must be an integer from 1{limit}, got {bins!r}")
    if bins < 1 or (steps is not None and bins > steps):
        raise BrailleOptionError(f"bins must be from 1{limit}, got {bins}")
    return int(bins)


def time_bins(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(samples, steps, C) -> (samples, steps, C * bins): channel ``c * bins + k`` carries channel c's events
    during the steps t with ``t * bins // steps == k`` and is silent elsewhere. ``bins = 1`` returns ``x``."""
    n, steps, c = x.shape
    bins = check_bins(bins, steps)
    if bins == 1:
        return x
    which = torch.arange(steps) * bins // steps  # the sub-window of each step
    mask = torch.nn.functional.one_hot(which, bins).to(x.dtype)  # (steps, bins)
    return (x.unsqueeze(-1) * mask[None, :, None, :]).reshape(n, steps, c * bins)


def encode(records: list[dict], steps: int = STEPS, threshold: float = THRESHOLD, bins: int = 1) -> torch.Tensor:
    """Spike trains (samples, steps, 24 * bins): ON events in channels 0-11, OFF events in 12-23, each split
    into ``bins`` time-bin channels (``time_bins``) when ``bins > 1``."""
    bins = check_bins(bins, steps)
    series = torch.stack([resample(torch.from_numpy(r["taxel_data"]).float().unsqueeze(0), steps)[0] for r in records])
    return time_bins(sigma_delta(series, threshold, output="split", max_events=1), bins)


def validation_split(y: torch.Tensor, fraction: float = 0.2, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into the training split: per letter, a fixed ``fraction`` of its training
    recordings is held out (864 / 216 of 1,080), so that hyper-parameters are chosen without the test set.
    Works for any class labels ``y`` (``benchmarks/bench_online_rules.py`` uses it for every task)."""
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        va.append(idx[:k])
        tr.append(idx[k:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def labels(records: list[dict]) -> torch.Tensor:
    return torch.tensor([LETTERS.index(r["letter"]) for r in records], dtype=torch.long)


def load(path: str | os.PathLike | None = None, steps: int = STEPS, threshold: float = THRESHOLD,
         bins: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): spike trains (samples, steps, 24 * bins) float32 and letter indices."""
    bins = check_bins(bins, steps)  # before reading the file
    records = read_recordings(path)
    tr, te = split_indices(records)
    rec_tr, rec_te = [records[i] for i in tr], [records[i] for i in te]
    return (encode(rec_tr, steps, threshold, bins), labels(rec_tr), encode(rec_te, steps, threshold, bins),
            labels(rec_te))


def build_model(seed: int = 0, hidden: int = HIDDEN, recurrent: bool = True, bins: int = 1) -> SpikingSequential:
    """24 * ``bins`` inputs -> ``hidden`` recurrent CUBA-LIF -> 27 CUBA-LIF outputs (the class is the most active output).

    The hidden layer is a ``RecurrentLIFDense`` (all-to-all recurrent projection, one-step hop like the
    input one), as in the published recurrent Braille network; ``recurrent=False`` gives the
    feed-forward variant. The hidden layer is built in ``_hidden_layer``.
    """
    bins = check_bins(bins, None)
    torch.manual_seed(seed)
    # A small output gain: with 256 steps, outputs driven at full gain fire ~40 of 256 steps from the
    # start and the count softmax saturates; at 0.5 they start near 10-20 spikes.
    return SpikingSequential([_hidden_layer(2 * TAXELS * bins, hidden, recurrent),
                              LIFDense(hidden, len(LETTERS), du=0.2, dv=0.1, v_th=1.0, weight_gain=0.5)])


def _hidden_layer(n_in: int, n_out: int, recurrent: bool):
    # Decays of 0.2 (current) and 0.1 (voltage), time constants ~5 and ~10 steps, integrate events over
    # a few resampled sensor samples; with ~0.05 input events per channel and step, gain 1 gives a
    # hidden rate near 0.08 spikes per step (slower decays or larger gains saturated it).
    kwargs = dict(du=0.2, dv=0.1, v_th=1.0, weight_gain=1.0)
    if not recurrent:
        return LIFDense(n_in, n_out, **kwargs)
    # Recurrent weights start small (rec_gain 0.2) and move 20x slower under Adam (rec_weight_scale
    # 0.05): at the feed-forward rate the n**2 recurrent weights, whose gradients are correlated, drove
    # the layer into runaway excitation within the first epoch.
    return L.RecurrentLIFDense(n_in, n_out, rec_gain=REC_GAIN, rec_weight_scale=REC_WEIGHT_SCALE, **kwargs)


def train_config(epochs: int = 40, seed: int = 0, **overrides) -> TrainerConfig:
    """The training recipe: Adam 5e-3, batch 32, cosine schedule (chosen on short runs of this split;
    SpyTorch's Adamax 1e-2 did worse with this feed-forward network)."""
    cfg = dict(epochs=epochs, batch_size=32, optimizer="adam", lr=5e-3, scheduler="cosine", seed=seed)
    cfg.update(overrides)
    return TrainerConfig(**cfg)


def loss_fn(output, y):
    """Cross-entropy on output spike counts; counts over 256 steps are large, so they are scaled down
    (logits = 0.1 * counts: a 10-spike lead means e:1 odds)."""
    from snn2hw.train.losses import count_cross_entropy

    return count_cross_entropy(output, y, scale=0.1)


def train(epochs: int = 40, seed: int = 0, data: str | None = None, checkpoint_dir: str | None = None,
          log_dir: str | None = None, progress: bool = True, resume: bool = False, hidden: int = HIDDEN,
          recurrent: bool = True, rule: str = "bptt", rule_options: dict | None = None,
          validation: bool = False, **overrides) -> tuple[SpikingSequential, list[dict]]:
    """Train ``build_model`` on the fixed split with learning rule ``rule`` (``snn2hw.learning``; the same
    recipe for every rule, with ``overrides`` of ``train_config``, e.g. ``lr``); returns the model and the
    history. ``val_*`` in the history is the test set, for the curve only (nothing is chosen on it), or,
    with ``validation=True``, the held-out 216 of ``validation_split`` while the model trains on the other
    864 (the mode for choosing hyper-parameters)."""
    from snn2hw.train.trainer import Trainer

    train_data, val_data = _fit_split(load(data), validation)
    model = build_model(seed, hidden, recurrent)
    cfg = train_config(epochs, seed, checkpoint_dir=checkpoint_dir, log_dir=log_dir, progress=progress, rule=rule,
                       rule_options=dict(rule_options or {}), **overrides)
    history = Trainer(model, cfg, loss_fn=loss_fn).fit(train_data, val_data, resume=resume)
    return model, history


def _fit_split(data: tuple, validation: bool) -> tuple[tuple, tuple]:
    """((x, y) to train on, (x, y) to evaluate on): (train, test), or (train minus validation, validation)."""
    x_tr, y_tr, x_te, y_te = data
    if not validation:
        return (x_tr, y_tr), (x_te, y_te)
    tr, va = validation_split(y_tr)
    return (x_tr[tr], y_tr[tr]), (x_tr[va], y_tr[va])


def predict(model: SpikingSequential, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Class predictions of the model as it is (float or QAT mode): the most active output neuron."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).sum(dim=1).argmax(dim=1) for i in range(0, len(x), batch_size)])


def deployed_predict(model: SpikingSequential, x: torch.Tensor) -> torch.Tensor:
    """Compile the model (``compile_graph(model.to_ir())``) and classify ``x`` on the bit-accurate simulator."""
    from snn2hw.backends import sim
    from snn2hw.compiler import compile_graph

    artefact = compile_graph(model.to_ir())
    res = sim.run(artefact, x.numpy().astype(np.int64), count_events=False)
    counts = torch.from_numpy(res.spikes[artefact.graph.outputs[0]].astype(np.int64)).sum(dim=1)
    return counts.argmax(dim=1)


def float_qat_deploy(model: SpikingSequential, train_data: tuple, test_data: tuple, qat_epochs: int = 3,
                     seed: int = 0, progress: bool = False, checkpoint_dir: str | None = None,
                     quant_config=None) -> dict:
    """The deployment chain after float training: float test accuracy, QAT fine-tuning (``qat_epochs`` of
    the Trainer at ``QAT_LR``), QAT accuracy, compile, simulator accuracy. Leaves ``model`` in QAT mode.

    Returns accuracies, the number of test samples whose QAT and deployed predictions differ (0 when the
    chain is exact) and timings.
    """
    import time

    from snn2hw.quantize import QuantConfig
    from snn2hw.train.trainer import Trainer

    x_te, y_te = test_data
    out = {"test_samples": len(y_te)}
    out["float_accuracy"] = float((predict(model, x_te) == y_te).float().mean())
    model.set_qat(quant_config or QuantConfig())
    out["qat_accuracy_before_finetune"] = float((predict(model, x_te) == y_te).float().mean())
    t0 = time.perf_counter()
    if qat_epochs > 0:
        cfg = train_config(qat_epochs, seed, lr=QAT_LR, progress=progress, checkpoint_dir=checkpoint_dir)
        Trainer(model, cfg, loss_fn=loss_fn).fit(train_data, test_data)
    out["qat_time_s"] = time.perf_counter() - t0
    qat_pred = predict(model, x_te)
    out["qat_accuracy"] = float((qat_pred == y_te).float().mean())
    t0 = time.perf_counter()
    dep_pred = deployed_predict(model, x_te)
    out["deploy_time_s"] = time.perf_counter() - t0
    out["deployed_accuracy"] = float((dep_pred == y_te).float().mean())
    out["qat_deployed_prediction_mismatches"] = int((dep_pred != qat_pred).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(description="train the Braille classifier on the fixed 1080/270 split, fine-tune "
                                             "it quantization-aware and run the compiled network on the simulator")
    ap.add_argument("--epochs", type=int, default=40, help="float training epochs")
    ap.add_argument("--qat-epochs", type=int, default=3, help="quantization-aware fine-tuning epochs (0: none)")
    ap.add_argument("--hidden", type=int, default=HIDDEN)
    ap.add_argument("--feedforward", action="store_true", help="a feed-forward hidden layer instead of a recurrent one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rule", default="bptt", help="learning rule of the float training (snn2hw.learning: bptt, fa, "
                                                   "dfa, eprop, decolle, ...); QAT fine-tuning always uses bptt")
    ap.add_argument("--rule-options", default="{}", help="JSON object of the rule's options")
    ap.add_argument("--validation", action="store_true",
                    help="train on 864 of the 1,080 training recordings and report float and deployed accuracy on "
                         "the other 216 (choosing hyper-parameters); no test recording is evaluated")
    ap.add_argument("--lr", type=float, default=None, help="learning rate of the float training (default: the recipe's 5e-3)")
    ap.add_argument("--weight-decay", type=float, default=None, help="weight decay (default 0)")
    ap.add_argument("--optimizer", default=None, choices=("adam", "adamw", "adamax", "sgd"),
                    help="optimizer of the float training (default: the recipe's adam; adamw decouples weight decay)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--data", default=None, help=f"path to {FILENAME} or its folder")
    ap.add_argument("--out", default=None, help="checkpoints, metrics.csv and results.json go here")
    ap.add_argument("--resume", action="store_true", help="resume the float training from --out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ckpt = None if a.out is None else str(Path(a.out) / "ckpt")
    logs = None if a.out is None else str(Path(a.out) / "logs")
    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("lr", a.lr), ("weight_decay", a.weight_decay), ("optimizer", a.optimizer))
                 if v is not None}
    model, history = train(a.epochs, a.seed, a.data, ckpt, logs, progress=True, resume=a.resume, hidden=a.hidden,
                           recurrent=not a.feedforward, rule=a.rule, rule_options=json.loads(a.rule_options),
                           validation=a.validation, **overrides)
    train_s = time.perf_counter() - t0
    last = history[-1]
    split = "validation" if a.validation else "test"
    result = {"rule": a.rule, "rule_options": json.loads(a.rule_options), "recurrent": not a.feedforward, "hidden": a.hidden, "epochs": a.epochs, "qat_epochs": a.qat_epochs,
              "seed": a.seed, "recipe_overrides": overrides, "evaluated_on": split,
              f"{split}_accuracy_final": last["val_accuracy"],
              f"{split}_accuracy_by_epoch": [r["val_accuracy"] for r in history],
              "train_accuracy_final": last.get("accuracy"), "float_train_time_s": train_s,
              "epoch_time_s": [r["time_s"] for r in history], "loadavg_end": list(os.getloadavg())}
    if a.out is not None:
        from snn2hw.train.checkpoint import save_checkpoint

        save_checkpoint(model, Path(a.out) / "float.pt")
    train_data, eval_data = _fit_split(load(a.data), a.validation)
    result.update(float_qat_deploy(model, train_data, eval_data, a.qat_epochs, a.seed, progress=True,
                                   checkpoint_dir=None if a.out is None else str(Path(a.out) / "qat_ckpt")))
    result["total_time_s"] = time.perf_counter() - t0
    import resource

    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, data included
    if a.out is not None:
        from snn2hw.train.checkpoint import save_checkpoint

        save_checkpoint(model, Path(a.out) / "qat.pt")
        (Path(a.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
