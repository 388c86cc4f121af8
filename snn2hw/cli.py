"""``snn2hw`` command line: thin wrappers over library calls a Python user can make too.

Every failure a user can cause (missing or wrong file, corrupt NIR, unsupported node, hardware limit)
is reported as one line ``snn2hw: error: ...`` with exit status 2; outputs are written atomically.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

EXIT_USAGE = 2


def _errors() -> tuple[type[BaseException], ...]:
    from snn2hw.artefact import ArtefactError
    from snn2hw.backends.base import BackendError
    from snn2hw.compiler import DesignRuleError
    from snn2hw.ir import GraphError
    from snn2hw.nir_io import NIRError
    from snn2hw.quantize import QuantizationError
    from snn2hw.train.checkpoint import CheckpointError

    return (ArtefactError, BackendError, DesignRuleError, GraphError, NIRError, QuantizationError,
            CheckpointError, InputFileError)


class InputFileError(ValueError):
    """An input file for ``snn2hw run`` is missing or malformed."""


def _load_inputs(path: Path, graph) -> dict[str, np.ndarray] | np.ndarray:
    if not path.is_file():
        raise InputFileError(f"{path}: no such input file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a .npy/.npz array file ({exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            try:
                arrays = {k: data[k] for k in data.files}
            except (ValueError, OSError, EOFError) as exc:
                raise InputFileError(f"{path}: not a .npy/.npz array file ({exc})") from None
        if len(arrays) == 1 and len(graph.inputs) == 1:
            return next(iter(arrays.values()))
        names = sorted(i.name for i in graph.inputs)
        if set(arrays) != set(names):
            raise InputFileError(f"{path}: holds arrays {sorted(arrays)[:8]}, expected one per input {names}")
        return arrays
    return data


def cmd_demo(args) -> int:
    from snn2hw.pipeline import run_demo

    run_demo(args.out, epochs=args.epochs, use_lava=not args.no_lava, seed=args.seed, progress=not args.quiet)
    return 0


def cmd_export(args) -> int:
    from snn2hw import nir_io
    from snn2hw.train.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    nir_io.write(model.to_ir(args.dt), args.output)
    print(f"wrote {args.output} (dt = {args.dt} s)")
    return 0


def cmd_compile(args) -> int:
    from snn2hw import artefact, nir_io
    from snn2hw.compiler import CoreLimits, compile_graph
    from snn2hw.quantize import QuantConfig

    graph = nir_io.read(args.nir, dt=args.dt)
    art = compile_graph(
        graph, QuantConfig(num_weight_bits=args.weight_bits, threshold_target=args.threshold_target),
        CoreLimits(neurons_per_core=args.neurons_per_core), provenance={"source": str(args.nir), "dt": args.dt},
    )
    artefact.save(art, args.output)
    r = art.resources
    print(f"wrote {args.output}: {r['neurons']} neurons, {r['synapses']} synapses, {r['cores']} cores")
    return 0


def cmd_run(args) -> int:
    from snn2hw import artefact
    from snn2hw.artefact import atomic_write_bytes
    from snn2hw.backends import get_backend

    art = artefact.load(args.artefact)
    inputs = _load_inputs(Path(args.inputs), art.graph)
    result = get_backend(args.backend)(art, inputs, record=args.record, record_state=args.record_state)
    arrays = {f"spikes/{k}": v for k, v in result.spikes.items()}
    arrays.update({f"counts/{k}": v.sum(axis=1) for k, v in result.spikes.items()})
    arrays.update({f"u/{k}": v for k, v in result.u.items()})
    arrays.update({f"v/{k}": v for k, v in result.v.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(args.output, lambda f: f.write(buf.getvalue()))
    for name, spikes in result.spikes.items():
        print(f"{name}: {spikes.shape[0]} samples x {spikes.shape[1]} steps, {int(spikes.sum())} spikes")
    if result.events:
        print("events: " + json.dumps(result.events))
    print(f"wrote {args.output}")
    return 0


def cmd_info(args) -> int:
    from snn2hw import artefact

    art = artefact.load(args.artefact)
    g = art.graph
    print(json.dumps({"inputs": [i.name for i in g.inputs], "outputs": list(g.outputs),
                      "resources": art.resources, "provenance": art.provenance}, indent=2, default=str))
    return 0


def cmd_train(args) -> int:
    import torch

    from snn2hw.learning import LearningRuleError
    from snn2hw.learning.experiment import ExperimentConfigError, read_config, train_task
    from snn2hw.models.tasks import TaskConfigError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        r = train_task(args.task, args.rule, read_config(args.config), epochs=args.epochs, seed=args.seed, out=args.out,
                       device=args.device, deploy=not args.no_deploy, progress=not args.quiet)
    except (LearningRuleError, ExperimentConfigError, TaskConfigError) as exc:
        where = f"{args.config}: " if args.config and not str(exc).startswith(str(args.config)) else ""
        print(f"snn2hw: error: {where}{exc}", file=sys.stderr)
        return EXIT_USAGE
    shown = {k: r[k] for k in ("float_val_accuracy", "float_test_accuracy", "deployed_test_accuracy",
                               "rule_neuron_test_accuracy", "time_per_epoch_s", "peak_memory_mb") if k in r}
    print(json.dumps({"task": r["task"], "rule": r["rule"]["name"], "seed": r["seed"], **shown}))
    print(f"wrote {args.out}/results.json and {r['checkpoint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snn2hw", description="Train spiking networks and deploy them bit-exactly to Loihi 2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the whole pipeline on scikit-learn digits: train, export, compile, run on sim and Lava")
    d.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    d.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-lava", action="store_true", help="skip the Lava backend")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("export", help="checkpoint -> NIR file")
    e.add_argument("checkpoint", help="snn2hw checkpoint (.ckpt)")
    e.add_argument("-o", "--output", required=True, help="output .nir file")
    e.add_argument("--dt", type=float, required=True, help="seconds per time step (NIR stores no dt)")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("compile", help="NIR file -> quantized, design-rule-checked artefact")
    c.add_argument("nir", help="input .nir file")
    c.add_argument("-o", "--output", required=True, help="output artefact (.npz)")
    c.add_argument("--dt", type=float, required=True, help="seconds per time step used to read time constants")
    c.add_argument("--weight-bits", type=int, default=8, help="weight mantissa bits, 1..8 (default 8)")
    c.add_argument("--threshold-target", type=int, default=1024, help="integer threshold the scaling aims for (default 1024)")
    c.add_argument("--neurons-per-core", type=int, default=8192, help="per-core neuron limit used for mapping")
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run an artefact on input spikes")
    r.add_argument("artefact", help="compiled artefact (.npz)")
    r.add_argument("inputs", help=".npy (batch, steps, size) for one input, or .npz keyed by input name")
    r.add_argument("-o", "--output", required=True, help="output .npz (spikes/<pop>, counts/<pop>, u/<pop>, v/<pop>)")
    r.add_argument("--backend", choices=("sim", "lava"), default="sim")
    r.add_argument("--record", action="append", default=[], metavar="POP", help="also record spikes of POP")
    r.add_argument("--record-state", action="append", default=[], metavar="POP", help="record u and v of POP")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("train", help="train a model-zoo task with a learning rule, then deploy it on the simulator")
    t.add_argument("--task", required=True, help="digits | braille | mnist10k (snn2hw.models.tasks)")
    t.add_argument("--rule", default="bptt", help="a learning rule of snn2hw.learning (bptt, hm2bp, strsbp, ...)")
    t.add_argument("--config", default=None, help="JSON: {model, data, trainer, rule_options}")
    t.add_argument("--epochs", type=int, default=None, help="override the task's/config's epochs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    t.add_argument("--no-deploy", action="store_true", help="skip compiling and the simulator run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--out", required=True, help="folder for model.ckpt, results.json, ckpt/ and logs/")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="print an artefact's resources and provenance")
    i.add_argument("artefact")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _errors() as exc:
        print(f"snn2hw: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"snn2hw: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("snn2hw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
