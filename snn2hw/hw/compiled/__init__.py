"""numba-compiled instances of ``snn2hw.hw.loihi2``'s formulas and the simulator's kernels.

Nothing here defines arithmetic: ``twins`` re-creates loihi2's formulas from their own bytecode and
compiles them; every kernel calls those twins. The package, one idea per module, in the order data flows:

* ``twins``: the compiled formulas (``formulas()``, ``available()``, the fingerprint in every cache key);
* ``runtime``: thread count and CPU checks shared by the kernels;
* ``scan``: the layer schedule's whole-sequence scan of one population (``lif_scan``, ``layer_scan``);
* ``products``: the layer schedule's exact products (``prepare_weights``, ``accumulate_events``,
  ``conv_accumulate``); ``binary``: binary inputs checked and converted in one pass (``binary_spikes``);
* ``plan``: a graph's projections lowered to the network kernel's flat arrays (``Projection``,
  ``network_spec`` -> ``NetworkSpec``);
* ``input_stages``: a binary input's projections turned into messages for all steps before the scan;
* ``neurons``: the network kernel's neuron update in 32-bit lanes;
* ``network_kernel``: the whole-network kernel (all steps of all populations in one compiled call);
* ``runner``: ``network_scan``, which runs a ``NetworkSpec`` over a batch in slices.

Kernels are cached on disk by numba (see ``twins.formulas_fingerprint`` for why that is safe). numba is
optional: ``available()`` says whether the fast path can be used (``SNN2HW_NO_NUMBA=1`` switches it off);
callers fall back to the torch functions, which also serve CUDA tensors. The names below are this
package's interface; tuning constants live in their modules (tests patch them there).
"""
from __future__ import annotations

from snn2hw.hw.compiled.binary import binary_spikes
from snn2hw.hw.compiled.input_stages import conv_message_table, dense_conv_taps, dense_pool_weights
from snn2hw.hw.compiled.plan import NetworkSpec, Projection, common_shift, network_spec
from snn2hw.hw.compiled.products import accumulate_events, conv_accumulate, prepare_weights
from snn2hw.hw.compiled.runner import network_scan
from snn2hw.hw.compiled.runtime import _set_threads  # noqa: F401  (snn2hw.nn's and learning's kernels use it)
from snn2hw.hw.compiled.scan import ScanResult, layer_scan, lif_scan
from snn2hw.hw.compiled.twins import available, check_formula, formulas, formulas_fingerprint, numba

__all__ = [
    "NetworkSpec", "Projection", "ScanResult", "accumulate_events", "available", "binary_spikes", "check_formula",
    "common_shift", "conv_accumulate", "conv_message_table", "dense_conv_taps", "dense_pool_weights", "formulas", "formulas_fingerprint",
    "layer_scan", "lif_scan", "network_scan", "network_spec", "numba", "prepare_weights",
]
