"""``snn2hw`` command line: thin wrappers over library calls a Python user can make too.

Every failure a user can cause (missing or wrong file, corrupt NIR, unsupported node, hardware limit)
is reported as one line ``snn2hw: error: ...`` with exit status 2; outputs are written atomically.
Exit statuses (docs/cli.md): 0 success, 1 an internal error (a bug: please report the traceback),
2 a user error (bad file, option or input; argparse usage errors too), 3 ``compare --fail-on-divergence``
found a divergence, 130 interrupted. ``--json`` (on every command) prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

EXIT_USAGE = 2
EXIT_DIVERGENCE = 3


def _errors() -> tuple[type[BaseException], ...]:
    from snn2hw.artefact import ArtefactError
    from snn2hw.backends.base import BackendError
    from snn2hw.compiler import DesignRuleError
    from snn2hw.compiler.resources import LimitError
    from snn2hw.compiler.sources import SourceError
    from snn2hw.ir import GraphError
    from snn2hw.nir_io import NIRError
    from snn2hw.quantize import QuantizationError
    from snn2hw.train.checkpoint import CheckpointError

    return (ArtefactError, BackendError, DesignRuleError, GraphError, NIRError, QuantizationError,
            CheckpointError, InputFileError, LimitError, SourceError, OptionError, *_onnx_errors())


def _onnx_errors() -> tuple[type[BaseException], ...]:
    from snn2hw.onnx import OnnxExportError
    from snn2hw.onnx.convert import ConversionError

    return (OnnxExportError, ConversionError)


class InputFileError(ValueError):
    """An input file for ``snn2hw run`` is missing or malformed."""


class OptionError(ValueError):
    """A command-line option has a value outside its allowed range."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _emit(args, payload: dict, text: str | None = None) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text`` (default: the JSON, indented)."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_json_default))
    else:
        print(text if text is not None else json.dumps(payload, indent=2, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


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

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    row = run_demo(args.out, epochs=args.epochs, use_lava=not args.no_lava, seed=args.seed,
                   progress=not (args.quiet or args.json), log=log)
    if args.json:
        _emit(args, row)
    return 0


def cmd_export(args) -> int:
    from snn2hw import nir_io
    from snn2hw.train.checkpoint import CheckpointError, load_checkpoint

    model = load_checkpoint(args.checkpoint)
    try:
        graph = model.to_ir(args.dt)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as exc:  # a config no IR fits
        raise CheckpointError(f"{args.checkpoint}: the checkpoint's model has no valid IR graph "
                              f"({type(exc).__name__}: {exc})") from None
    nir_io.write(graph, args.output)
    _emit(args, {"wrote": str(args.output), "dt": args.dt}, f"wrote {args.output} (dt = {args.dt} s)")
    return 0


def _compile_inputs(args):
    """(graph, kind, limits, ptq config, calibration inputs) from the shared compile/check options."""
    from snn2hw.compiler import CoreLimits, PTQConfig, load_config
    from snn2hw.compiler.resources import LimitError
    from snn2hw.compiler.sources import load_graph

    overrides = {}
    for item in args.limit:
        name, sep, value = item.partition("=")
        try:
            overrides[name.strip()] = int(value)
        except ValueError:
            raise LimitError(f"--limit {item!r}: expected NAME=INTEGER (e.g. neurons_per_core=4096)") from None
    if args.neurons_per_core is not None:
        overrides["neurons_per_core"] = args.neurons_per_core
    limits = CoreLimits().replace(**overrides)
    graph, kind = load_graph(args.input, args.dt, convention=getattr(args, "convention", None),
                             approximate=getattr(args, "approximate", False))
    ptq = PTQConfig(weight_bits=args.weight_bits, threshold_target=args.threshold_target) if args.ptq else \
        PTQConfig(search=False, bias_correction=False, weight_bits=args.weight_bits, threshold_target=args.threshold_target)
    if args.quant_config:
        ptq = load_config(args.quant_config, ptq)
    calibration = _load_inputs(Path(args.calibrate), graph) if getattr(args, "calibrate", None) else None
    return graph, kind, limits, ptq, calibration


def cmd_compile(args) -> int:
    from snn2hw import artefact
    from snn2hw.compiler import compile_graph

    graph, kind, limits, ptq, calibration = _compile_inputs(args)
    nir_notes = graph.metadata.get("nir", {})
    provenance = {"source": str(args.input), "source_kind": kind, "dt": graph.dt}
    if kind == "nir":
        provenance.update(nir_convention=nir_notes.get("source_convention"), nir_notes=nir_notes.get("notes", []))
    art = compile_graph(graph, limits=limits, ptq=ptq, calibration_inputs=calibration, provenance=provenance)
    for note in nir_notes.get("notes", []):
        print(f"note: {note}")
    artefact.save(art, args.output)
    r = art.resources
    print(f"wrote {args.output}: {r['neurons']} neurons, {r['synapses']} synapses, {r['cores']} cores on "
          f"{r['chips']} chip(s)")
    return 0


def cmd_check(args) -> int:
    from snn2hw.compiler import check, format_table, run_passes

    graph, kind, limits, ptq, _ = _compile_inputs(args)
    violations = check(graph, limits, ptq)
    if violations:
        print(f"{args.input}: {len(violations)} design-rule violation(s)", file=sys.stderr)
        print(format_table(violations), file=sys.stderr)
        return EXIT_USAGE
    state = run_passes(graph, limits, ptq, until="allocate")
    s, placement = state.graph.summary(), state.placement
    print(f"{args.input} ({kind}): passes the design rules: {s['neurons']} neurons, {s['synapses']} synapses, "
          f"{len(placement.cores)} cores on {placement.chips} chip(s)")
    return 0


def _add_compile_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("input", help="NIR file, snn2hw checkpoint, artefact, or JSON model/training config (recognised by content)")
    c.add_argument("--dt", type=_positive_float, default=None,
                   help="seconds per time step (NIR files: default the dt recorded in the file, else the convention's; "
                        "models default to 1e-3)")
    c.add_argument("--weight-bits", type=int, default=8, help="weight mantissa bits, 1..8 (default 8)")
    c.add_argument("--threshold-target", type=int, default=1024, help="integer threshold the scaling aims for (default 1024)")
    c.add_argument("--neurons-per-core", type=int, default=None, help="shorthand for --limit neurons_per_core=N")
    c.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                   help="override a resource limit (see docs/compiler.md), e.g. --limit boards=2")
    c.add_argument("--ptq", action="store_true", help="post-training quantization search (exponents, clipping, calibration)")
    c.add_argument("--quant-config", metavar="JSON", help="quantizer settings and per-layer overrides (implies the settings given in it)")
    c.add_argument("--convention", default=None, metavar="NAME",
                   help="producer conventions of a NIR input: nir, snn2hw, snntorch, norse, sinabs, spikingjelly, "
                        "rockpool, spyx (default: snn2hw if it wrote the file, else nir; see docs/nir.md)")
    c.add_argument("--approximate", action="store_true",
                   help="accept what has no exact Loihi mapping in a NIR input (a subtract reset becomes reset to zero)")


def cmd_run(args) -> int:
    from snn2hw import artefact
    from snn2hw.artefact import atomic_write_bytes
    from snn2hw.backends import get_backend

    art = artefact.load(args.artefact)
    inputs = _load_inputs(Path(args.inputs), art.graph)
    readouts = [o for o in art.graph.outputs if _is_readout(art, art.graph.population(o))]
    record_state = list(dict.fromkeys([*args.record_state, *readouts]))
    if args.backend == "sim" and (args.distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        # under torchrun: each rank simulates a shard of the batch; rank 0 alone writes the result
        from snn2hw.backends.sim.distributed import run_distributed
        from snn2hw.train.distributed import is_main_process, teardown

        result = run_distributed(art, inputs, record=args.record, record_state=record_state)
        main_rank = is_main_process()
        # leave the group before exiting: a process that exits with gloo's threads alive aborts
        # ("terminate called without an active exception") and torchrun reports the run as failed
        teardown()
        if not main_rank:
            return 0
    else:
        result = get_backend(args.backend)(art, inputs, record=args.record, record_state=record_state)
    arrays = {f"spikes/{k}": v for k, v in result.spikes.items()}
    arrays.update({f"counts/{k}": v.sum(axis=1) for k, v in result.spikes.items()})
    arrays.update({f"u/{k}": v for k, v in result.u.items()})
    arrays.update({f"v/{k}": v for k, v in result.v.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(args.output, lambda f: f.write(buf.getvalue()))
    lines, summary = [], {}
    for name, spikes in result.spikes.items():
        pop = art.graph.population(name)
        entry = {"samples": int(spikes.shape[0]), "steps": int(spikes.shape[1]), "spikes": int(spikes.sum())}
        line = f"{name}: {spikes.shape[0]} samples x {spikes.shape[1]} steps, {int(spikes.sum())} spikes"
        if _is_readout(art, pop):
            # a non-spiking read-out never fires: its output is v, which run records for it
            entry["readout"] = True
            line = (f"{name}: non-spiking read-out, {spikes.shape[0]} samples x {spikes.shape[1]} steps; "
                    f"its output is v (saved as v/{name}; final-step v range "
                    f"[{int(result.v[name][:, -1].min())}, {int(result.v[name][:, -1].max())}])")
        summary[name] = entry
        lines.append(line)
    if result.events:
        lines.append("events: " + json.dumps(result.events))
    lines.append(f"wrote {args.output}")
    _emit(args, {"wrote": str(args.output), "outputs": summary, "events": result.events}, "\n".join(lines))
    return 0


def _is_readout(art, pop) -> bool:
    """A population compiled from a non-spiking read-out (``LIF(spiking=False)``): threshold at the maximum."""
    from snn2hw.hw import loihi2 as hw

    return int(getattr(pop.neuron, "vth", 0)) == hw.VTH_MAX


def cmd_info(args) -> int:
    from snn2hw.inspect.report import info

    _emit(args, info(args.file, dt=args.dt))
    return 0


def cmd_report(args) -> int:
    from snn2hw import artefact
    from snn2hw.inspect.report import build_report, format_report

    art = artefact.load(args.artefact)
    inputs = _load_inputs(Path(args.inputs), art.graph) if args.inputs else None
    rep = build_report(art, inputs, backend=args.backend, samples=args.samples)
    _emit(args, rep, format_report(rep))
    return 0


def cmd_compare(args) -> int:
    from snn2hw import artefact
    from snn2hw.inspect.compare import compare
    from snn2hw.inspect.sources import SourceError, open_source
    from snn2hw.pipeline import lava_available

    art = artefact.load(args.artefact)
    inputs = _load_inputs(Path(args.inputs), art.graph)
    float_graph = None
    if args.float:
        src = open_source(args.float, dt=args.dt if args.dt is not None else art.graph.dt)
        if src.kind == "artefact":
            raise SourceError(f"{args.float}: --float takes the float network (checkpoint or NIR file), not an artefact")
        float_graph = src.graph
    backends = [b for b in args.backends.split(",") if b]
    notes = []
    if "lava" in backends and not lava_available():
        if args.backends != DEFAULT_COMPARE_BACKENDS:
            raise OptionError("--backends names lava, but lava-nc does not import in this environment")
        backends.remove("lava")
        notes.append("lava-nc does not import here: Lava not compared")
    try:
        cmp = compare(art, inputs, float_graph, tuple(backends), samples=args.samples)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    cmp.notes.extend(notes)
    payload = cmp.to_dict()
    if args.plots:
        from snn2hw.inspect.plots import save_plots

        payload["plots"] = save_plots(cmp, args.plots, art.graph)
    text = cmp.format_table() + ("\nplots: " + ", ".join(payload["plots"]) if args.plots else "")
    _emit(args, payload, text)
    diverged = any(v for v in payload["first_divergence"].values())
    return EXIT_DIVERGENCE if (args.fail_on_divergence and diverged) else 0


def cmd_export_onnx(args) -> int:
    from snn2hw.onnx import cli as onnx_cli

    return onnx_cli.export_onnx(args)


def cmd_convert(args) -> int:
    from snn2hw.onnx import cli as onnx_cli

    return onnx_cli.convert(args)


def set_threads(n: int) -> None:
    """Run torch's and numba's parallel code on at most ``n`` threads (``--threads``). numba's kernels (the
    spike-train rules' scans, the event-driven products) otherwise start one thread per core, which on a
    shared machine doubles a "one-thread" run's CPU and spins under oversubscription."""
    import numba
    import torch

    torch.set_num_threads(n)
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def cmd_train(args) -> int:
    from snn2hw.learning import LearningRuleError
    from snn2hw.learning.experiment import ExperimentConfigError, read_config, train_task
    from snn2hw.models.tasks import TaskConfigError

    if args.threads:
        set_threads(args.threads)
    try:
        r = train_task(args.task, args.rule, read_config(args.config), epochs=args.epochs, seed=args.seed, out=args.out,
                       device=args.device, deploy=not args.no_deploy, progress=not args.quiet)
    except (LearningRuleError, ExperimentConfigError, TaskConfigError) as exc:
        where = f"{args.config}: " if args.config and not str(exc).startswith(str(args.config)) else ""
        print(f"snn2hw: error: {where}{exc}", file=sys.stderr)
        return EXIT_USAGE
    shown = {k: r[k] for k in ("float_val_accuracy", "float_test_accuracy", "deployed_test_accuracy",
                               "rule_neuron_test_accuracy", "float_test_nmse", "deployed_test_nmse",
                               "time_per_epoch_s", "peak_memory_mb") if k in r}
    print(json.dumps({"task": r["task"], "rule": r["rule"]["name"], "seed": r["seed"], **shown}))
    if r.get("deployment", {}).get("exact") is False:
        print(f"note: {r['deployment']['note']}; that network is {r['deployed_checkpoint']}")
    print(f"wrote {args.out}/results.json and {r['checkpoint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import snn2hw

    p = argparse.ArgumentParser(prog="snn2hw", description="Train spiking networks and deploy them bit-exactly to Loihi 2.",
                                epilog="exit status: 0 ok, 1 internal error, 2 user error, 3 compare found a divergence "
                                       "(--fail-on-divergence), 130 interrupted; see docs/cli.md")
    p.add_argument("--version", action="version", version=f"snn2hw {snn2hw.__version__}")
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
    e.add_argument("--dt", type=_positive_float, required=True, help="seconds per time step (NIR stores no dt)")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("compile", help="NIR file or checkpoint -> quantized, design-rule-checked, placed artefact")
    _add_compile_options(c)
    c.add_argument("-o", "--output", required=True, help="output artefact (.npz)")
    c.add_argument("--calibrate", metavar="INPUTS", help="sample inputs (.npy/.npz as for run) for --ptq calibration")
    c.set_defaults(func=cmd_compile)

    k = sub.add_parser("check", help="design and resource rules only: every violation in one table (exit 2 if any)")
    _add_compile_options(k)
    k.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="run an artefact on input spikes")
    r.add_argument("artefact", help="compiled artefact (.npz)")
    r.add_argument("inputs", help=".npy (batch, steps, size) for one input, or .npz keyed by input name")
    r.add_argument("-o", "--output", required=True, help="output .npz (spikes/<pop>, counts/<pop>, u/<pop>, v/<pop>)")
    r.add_argument("--backend", choices=("sim", "lava"), default="sim")
    r.add_argument("--record", action="append", default=[], metavar="POP", help="also record spikes of POP")
    r.add_argument("--record-state", action="append", default=[], metavar="POP", help="record u and v of POP")
    r.add_argument("--distributed", action="store_true",
                   help="shard the batch over torchrun's processes (sim backend; automatic when WORLD_SIZE > 1)")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("train", help="train a model-zoo task with a learning rule, then deploy it on the simulator")
    t.add_argument("--task", required=True, help="digits | braille | mnist10k (snn2hw.models.tasks) | delayed_xor | "
                   "pc_ae | yinyang (snn2hw.models.sequence_tasks)")
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

    from snn2hw.onnx.cli import add_parsers as add_onnx_parsers

    add_onnx_parsers(sub, cmd_export_onnx, cmd_convert)

    i = sub.add_parser("info", help="describe a checkpoint, NIR file or artefact (kind found from the content)")
    i.add_argument("file", help="checkpoint (.ckpt), NIR file (.nir) or artefact (.npz)")
    i.add_argument("--dt", type=_positive_float, default=None, help="seconds per step (needed for NIR files)")
    i.set_defaults(func=cmd_info)

    rp = sub.add_parser("report", help="per-layer resources, exponents, scales; with inputs, activity metrics and an energy/latency proxy")
    rp.add_argument("artefact", help="compiled artefact (.npz)")
    rp.add_argument("inputs", nargs="?", help="optional input spikes (.npy/.npz, as for run) for the activity metrics")
    rp.add_argument("--backend", choices=("sim", "lava"), default="sim", help="backend for the recorded run (default sim)")
    rp.add_argument("--samples", type=_positive_int, default=None, help="use only the first N samples")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", help="float network vs simulator vs Lava, layer by layer: first divergent step, errors, plots")
    cp.add_argument("artefact", help="compiled artefact (.npz)")
    cp.add_argument("inputs", help="input spikes (.npy/.npz, as for run)")
    cp.add_argument("--float", metavar="SOURCE", help="the float network: checkpoint or NIR file (reference when given)")
    cp.add_argument("--dt", type=_positive_float, default=None, help="seconds per step to read a NIR --float (default: the artefact's)")
    cp.add_argument("--backends", default=DEFAULT_COMPARE_BACKENDS,
                    help="comma-separated backends to run (default sim,lava; lava is skipped with a note when it does not import)")
    cp.add_argument("--samples", type=_positive_int, default=16, help="compare the first N samples (default 16)")
    cp.add_argument("--plots", metavar="DIR", help="write rasters.png, divergence.png, ranges.png into DIR")
    cp.add_argument("--fail-on-divergence", action="store_true", help="exit with status 3 when any run diverges from the reference")
    cp.set_defaults(func=cmd_compare)

    for command in sub.choices.values():  # --json on every command, including ones added elsewhere
        if not any("--json" in a.option_strings for a in command._actions):
            command.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


DEFAULT_COMPARE_BACKENDS = "sim,lava"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False):
        return _main_json(args)
    try:
        return args.func(args)
    except _errors() as exc:
        from snn2hw.compiler import DesignRuleError

        if isinstance(exc, DesignRuleError):  # every violation, as one table
            print(f"snn2hw: error: {len(exc.violations)} design-rule violation(s):", file=sys.stderr)
            print(exc.table(), file=sys.stderr)
            if getattr(args, "json", False):
                print(json.dumps({"error": "design-rule violations", "type": "DesignRuleError",
                                  "violations": [str(v) for v in exc.violations], "exit_status": EXIT_USAGE}))
            return EXIT_USAGE
        return _user_error(args, exc)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        return _user_error(args, exc)
    except BrokenPipeError:  # stdout closed early (| head): not an error of the command
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("snn2hw: interrupted", file=sys.stderr)
        return 130


def _main_json(args) -> int:
    """``--json``: stdout carries exactly one JSON object. Commands that print their own JSON pass it
    through; any other output is wrapped as {"command", "exit_status", "output"}."""
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            status = args.func(args)
        except (*_errors(), FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            status = None
            error = exc
    out = buf.getvalue()
    if status is None:
        return _user_error(args, error)
    try:
        json.loads(out)
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    except ValueError:
        print(json.dumps({"command": args.command, "exit_status": status, "output": out.rstrip("\n")}))
    return status


def _user_error(args, exc: BaseException) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the exception held
    print(f"snn2hw: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "type": type(exc).__name__, "exit_status": EXIT_USAGE}))
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
