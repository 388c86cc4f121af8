"""Running exported models with onnxruntime (an optional dependency: ``pip install snn2hw[onnx]``).

``run_sequence`` and ``run_steps`` return the same ``RunResult`` as snn2hw's backends, so an exported
model can be compared with the simulator array for array.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np
import onnx

from snn2hw.backends.base import RunResult
from snn2hw.onnx.builder import metadata


class OnnxRuntimeMissing(ImportError):
    """onnxruntime is not installed."""


def session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for ``model`` (a ModelProto or a path)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise OnnxRuntimeMissing("running ONNX models needs onnxruntime: pip install 'snn2hw[onnx]'") from exc
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _inputs(meta: dict, inputs: Mapping[str, np.ndarray] | np.ndarray, dtype) -> dict[str, np.ndarray]:
    names = [n for n, _ in json.loads(meta["snn2hw.inputs"])]
    if not isinstance(inputs, Mapping):
        if len(names) != 1:
            raise ValueError(f"the model has inputs {names}; pass a dict")
        inputs = {names[0]: inputs}
    out = {}
    for n in names:
        x = np.asarray(inputs[n])
        out[n] = (x[None] if x.ndim == 2 else x).astype(dtype)
    return out


def _dtype(meta: dict):
    return np.int64 if meta["snn2hw.arithmetic"] == "loihi2-integer" else np.dtype(meta["snn2hw.arithmetic"])


def run_sequence(model: onnx.ModelProto | str | os.PathLike, inputs, sess=None) -> RunResult:
    """Run an exported sequence model on (batch, steps, n) inputs (a dict by input name, or one array)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    meta = metadata(proto)
    sess = sess or session(proto)
    x = _inputs(meta, inputs, _dtype(meta))
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {f"in/{k}": v for k, v in x.items()})))
    res = RunResult(spikes={}, backend="onnxruntime")
    for key, arr in values.items():
        kind, pop = key.split("/", 1)
        getattr(res, kind)[pop] = arr
    return res


def run_steps(model: onnx.ModelProto | str | os.PathLike, inputs, sess=None) -> RunResult:
    """Run an exported step model over the steps of (batch, steps, n) inputs, feeding its state back;
    returns spikes, u and v of every population after every step."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    meta = metadata(proto)
    sess = sess or session(proto)
    dtype = _dtype(meta)
    x = _inputs(meta, inputs, dtype)
    batch, steps = next(iter(x.values())).shape[:2]
    pops = json.loads(meta["snn2hw.populations"])
    state = {}
    for n, size in pops:
        state[f"u/{n}"] = np.zeros((batch, size), dtype)
        state[f"v/{n}"] = np.zeros((batch, size), dtype)
    for n, depth, size in json.loads(meta["snn2hw.history"]):
        state[f"hist/{n}"] = np.zeros((batch, depth, size), dtype)
    out_names = [o.name for o in sess.get_outputs()]
    res = RunResult(spikes={n: np.zeros((batch, steps, s), np.uint8) for n, s in pops},
                    u={n: np.zeros((batch, steps, s), dtype) for n, s in pops},
                    v={n: np.zeros((batch, steps, s), dtype) for n, s in pops}, backend="onnxruntime")
    for t in range(steps):
        feed = dict(state)
        feed.update({f"in/{k}": v[:, t] for k, v in x.items()})
        values = dict(zip(out_names, sess.run(out_names, feed)))
        for n, _ in pops:
            res.spikes[n][:, t] = values[f"spikes/{n}"]
            res.u[n][:, t], res.v[n][:, t] = values[f"next_u/{n}"], values[f"next_v/{n}"]
        state = {k: values[f"next_{k}"] for k in state}
    return res
