"""ONNX both ways: export compiled (integer) and trained (float) networks as ONNX models, and convert
conventional ONNX networks (ANNs) into snn2hw spiking networks. See docs/onnx.md.

Export and conversion need only ``onnx``; running exported models needs ``onnxruntime``
(``pip install 'snn2hw[onnx]'``). Names are imported lazily, so ``snn2hw.onnx.cli`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "OPSET": "snn2hw.onnx.builder",
    "OnnxExportError": "snn2hw.onnx.schedule",
    "export_float": "snn2hw.onnx.export",
    "export_integer": "snn2hw.onnx.export",
    "save": "snn2hw.onnx.export",
    "ConversionError": "snn2hw.onnx.convert",
    "UnsupportedOperatorError": "snn2hw.onnx.convert",
    "convert": "snn2hw.onnx.convert",
    "run_sequence": "snn2hw.onnx.runtime",
    "run_steps": "snn2hw.onnx.runtime",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'snn2hw.onnx' has no attribute {name!r}")
