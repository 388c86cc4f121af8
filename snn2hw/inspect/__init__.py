"""Read-only inspection of compiled networks: ``report`` (structure, NeuroBench-style activity metrics,
an energy/latency proxy), ``compare`` (float network vs simulator vs Lava, layer by layer, with the first
divergent step), ``info`` on any file snn2hw reads. Nothing here changes an artefact."""
from snn2hw.inspect.compare import Comparison, compare
from snn2hw.inspect.metrics import EnergyModel, activity, footprint_bytes, layer_structure
from snn2hw.inspect.report import build_report, format_report
from snn2hw.inspect.sources import Source, SourceError, open_source, sniff

__all__ = ["Comparison", "compare", "EnergyModel", "activity", "footprint_bytes", "layer_structure",
           "build_report", "format_report", "Source", "SourceError", "open_source", "sniff"]
