"""NIR interop: read any NIR graph into snn2hw's IR under a producer's conventions, write every layer
kind snn2hw trains, and simulate an imported graph in float (see docs/nir.md)."""
from snn2hw.nir.conventions import CONVENTIONS, DT_METADATA_KEY, Convention, get_convention
from snn2hw.nir.errors import NIRError
from snn2hw.nir.float_model import FloatNetwork, float_model, to_sequential
from snn2hw.nir.files import read_nir_graph
from snn2hw.nir.read import ALWAYS_ON, from_nir, read
from snn2hw.nir.split import merge_split, split_by_decay
from snn2hw.nir.write import to_nir, write

__all__ = ["ALWAYS_ON", "CONVENTIONS", "DT_METADATA_KEY", "Convention", "FloatNetwork", "NIRError", "float_model", "from_nir", "get_convention",
           "merge_split", "read", "read_nir_graph", "split_by_decay", "to_nir", "to_sequential", "write"]
