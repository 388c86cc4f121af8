"""The compiler: a float or integer IR graph -> a design-rule-checked, placed ``Artefact``.

Named passes in a fixed order (``snn2hw.compiler.passes``): normalize, legalize (design rules and
resource rules, every violation at once), quantize (post-training quantization with exponent search
and calibration, ``snn2hw.compiler.ptq``), allocate (cores and chips, ``snn2hw.compiler.allocate``),
lower (the artefact). The Loihi-2 resource model with its sources is ``snn2hw.compiler.resources``.
See docs/compiler.md.
"""
from __future__ import annotations

from snn2hw.compiler.allocate import CoreSlice, Placement, allocate
from snn2hw.compiler.calibrate import Calibration, calibrate
from snn2hw.compiler.passes import PASSES, CompileState, check, lower, run_passes
from snn2hw.compiler.ptq import PTQConfig, load_config, plan_quantization
from snn2hw.compiler.resources import LIMIT_SOURCES, LOIHI2, CoreLimits
from snn2hw.compiler.rules import DesignRuleError, Violation, design_rule_violations, format_table
from snn2hw.artefact import Artefact
from snn2hw.ir import Graph
from snn2hw.quantize import QuantConfig

__all__ = [
    "PASSES", "LIMIT_SOURCES", "LOIHI2", "Artefact", "Calibration", "CompileState", "CoreLimits", "CoreSlice",
    "DesignRuleError", "PTQConfig", "Placement", "Violation", "allocate", "calibrate", "check", "compile_graph",
    "design_rule_violations", "format_table", "load_config", "lower", "plan_quantization", "run_passes",
]


def compile_graph(graph: Graph, config: QuantConfig = QuantConfig(), limits: CoreLimits = CoreLimits(),
                  provenance: dict | None = None, ptq: PTQConfig | None = None, calibration_inputs=None) -> Artefact:
    """Run every pass and return the artefact.

    Without ``ptq`` the quantizer is the straight one with ``config`` (no-clipping exponents, one
    threshold target): the integers quantization-aware training used, bit for bit. ``ptq=PTQConfig()``
    turns the search on; ``calibration_inputs`` ((samples, steps, size) spikes, or a dict by input name)
    add calibration (threshold targets, rate-weighted exponents, bias correction).
    """
    ptq = ptq or PTQConfig.straight(config)
    calib = calibrate(graph, calibration_inputs) if calibration_inputs is not None and not graph.is_quantized else None
    state = run_passes(graph, limits, ptq, calib, until="allocate")
    return lower(state, provenance)
