"""ONNX both ways: export compiled (integer) and trained (float) networks as ONNX models, and convert
conventional ONNX networks (ANNs) into snn2hw spiking networks. See docs/onnx.md.

Export needs only ``onnx``; running exported models needs ``onnxruntime`` (``snn2hw[onnx]``).
"""
from snn2hw.onnx.builder import OPSET
from snn2hw.onnx.export import export_float, export_integer, save
from snn2hw.onnx.schedule import OnnxExportError

__all__ = ["OPSET", "OnnxExportError", "export_float", "export_integer", "save"]
