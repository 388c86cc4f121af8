"""``snn2hw export-onnx`` and ``snn2hw convert``: argument parsing and thin calls into ``snn2hw.onnx``.

Imports nothing heavy at module level: ``snn2hw.cli`` builds its parser from here on every call.
"""
from __future__ import annotations

from pathlib import Path


def add_parsers(sub, export_func, convert_func) -> None:
    e = sub.add_parser("export-onnx", help="artefact -> ONNX (bit-exact integer step and sequence models); "
                                           "--float: checkpoint -> ONNX of the float dynamics")
    e.add_argument("source", help="compiled artefact (.npz); with --float a checkpoint (.ckpt)")
    e.add_argument("-o", "--output", required=True, help="output .onnx (the sequence model)")
    e.add_argument("--step-output", default=None,
                   help="where the one-step model goes (default: OUTPUT with .step.onnx); 'none' to skip it")
    e.add_argument("--record-state", action="store_true", help="the sequence model also outputs u/<pop>, v/<pop>")
    e.add_argument("--float", dest="float_model", action="store_true",
                   help="export a checkpoint's float dynamics instead of a compiled artefact's integers")
    e.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float export precision")
    e.set_defaults(func=export_func)

    c = sub.add_parser("convert", help="ONNX ANN (Gemm/MatMul/Conv/ReLU/AveragePool/Flatten/BatchNorm) -> "
                                       "snn2hw spiking network checkpoint (rate coding, calibrated)")
    c.add_argument("model", help="input .onnx model (a chain; inputs in [0, 1])")
    c.add_argument("--calibration", required=True,
                   help=".npy of sample inputs (N, *input shape) in [0, 1], preprocessed as for the ANN")
    c.add_argument("-o", "--output", required=True, help="output checkpoint (.ckpt): snn2hw export / train take it")
    c.add_argument("--steps", type=int, default=64, help="time steps the calibration assumes (default 64)")
    c.add_argument("--percentile", type=float, default=99.9, help="normalisation percentile (default 99.9)")
    c.add_argument("--no-balance", action="store_true", help="skip threshold balancing (pure percentile scaling)")
    c.add_argument("--artefact", default=None, help="also compile the converted network to this artefact (.npz)")
    c.set_defaults(func=convert_func)


def _step_path(output: str, step_output: str | None) -> Path | None:
    if step_output is not None:
        return None if step_output.lower() == "none" else Path(step_output)
    out = Path(output)
    stem = out.name[:-5] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.step.onnx")


def export_onnx(args) -> int:
    from snn2hw.onnx.export import export_float, export_integer, save

    if args.float_model:
        from snn2hw.train.checkpoint import load_checkpoint

        network = load_checkpoint(args.source)
        make = lambda kind, rec: export_float(network, kind=kind, record_state=rec or None,  # noqa: E731
                                              dtype=args.dtype)
    else:
        from snn2hw import artefact

        network = artefact.load(args.source)
        make = lambda kind, rec: export_integer(network, kind=kind, record_state=rec)  # noqa: E731
    seq = make("sequence", args.record_state)
    step_path = _step_path(args.output, args.step_output)
    step = make("step", False) if step_path is not None else None
    save(seq, args.output)
    print(f"wrote {args.output} (sequence model, opset {seq.opset_import[0].version})")
    if step is not None:
        save(step, step_path)
        print(f"wrote {step_path} (one-step model with explicit state)")
    return 0


def convert(args) -> int:
    import numpy as np

    from snn2hw.onnx.convert import ConversionConfig, ConversionError
    from snn2hw.onnx.convert import convert as run_conversion
    from snn2hw.train.checkpoint import save_checkpoint

    path = Path(args.calibration)
    if not path.is_file():
        raise ConversionError(f"{path}: no such calibration file")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConversionError(f"{path}: not a .npy array ({exc})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise ConversionError(f"{path}: expected one numeric .npy array of sample inputs")
    if args.steps < 1:
        raise ConversionError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.percentile <= 100:
        raise ConversionError(f"--percentile must lie in (0, 100], got {args.percentile}")
    config = ConversionConfig(steps=args.steps, percentile=args.percentile, balance_thresholds=not args.no_balance)
    model, report = run_conversion(args.model, x, config)
    art = None
    if args.artefact:
        from snn2hw.compiler import compile_graph

        art = compile_graph(model.to_ir(), provenance={"source": str(args.model), "converted": report.as_dict()})
    save_checkpoint(model, args.output, extra={"converted_from": str(args.model), "steps": args.steps,
                                               "conversion": report.as_dict()})
    print(f"wrote {args.output}: {len(model.layers)} layers, scales {[round(s, 4) for s in report.scales]}, "
          f"thresholds {[round(t, 4) for t in report.thresholds]}")
    if art is not None:
        from snn2hw import artefact

        artefact.save(art, args.artefact)
        r = art.resources
        print(f"wrote {args.artefact}: {r['neurons']} neurons, {r['synapses']} synapses, {r['cores']} cores")
    return 0
