"""The spike-train level backward pass shared by HM2-BP and ST-RSBP.

One batch: run the network forward without autograd and keep every layer's input and output spike
trains; compute the spike-count loss at the output; then, layer by layer from the top, turn the error
on the layer's firing counts ``g = dE/do`` into

* per-neuron coefficients ``c_w`` (what multiplies ``e_ij`` in ``dE/dw_ij``) and ``c_back`` (what
  multiplies ``w_ij e_ij / o_j`` in the error handed to the layer below) -- the only part where the two
  rules differ (``coefficients``);
* the weight gradient ``sum_b c_w[b, i] e_bij`` and the input error
  ``dE/do_j = sum_i c_back[b, i] w_ij e_bij / o_j``, both as one product through the layer's own hop
  (``snn2hw.learning.spsp``): S-PSPs are never materialised for feed-forward synapses.

Silent neurons (``o = 0``) would stop all learning through them: a silent neuron that receives an
error is given evenly spaced virtual spikes for its S-PSP kernel (HM2-BP gives a silent output its
target count, 35; hidden neurons get ``hidden_virtual_spikes``), and the per-spike S-PSP ``e_ij / o_j`` of a
silent pre-synaptic neuron is the S-PSP one spike at a uniformly random step would add.

Speed and memory. Every layer (the default; ``full_trace`` below is the cross-check) keeps only its
spike trains, as ``bool``, and their counts, and make everything else per group of
samples or block of steps: the forward makes a group's currents by one GEMM (over the stored rows when
whole windows fit, else per sample in blocks of steps) and runs the compiled LIF scan over them
(``spsp_kernels``; recurrent input inside the scan), recording each neuron's count and membrane summed
at its spikes, which is HM2-BP's T-PSP without keeping any current; the backward runs the compiled
reverse S-PSP recursion once per layer and group (virtual spikes made inside it), making the group's
S-PSP matrices by one batched GEMM per block, from which every gradient and the input error are
elementwise (``chunked.layer_backward_chunked``) -- or, for a feed-forward layer that hands no error down and
whose coefficients are known first, its weight gradient as one GEMM over (sample, step) rows, with no
S-PSP matrix (``hop.hop_backward_chunked``). Products with sparse trains (at most ``plan.EVENT_DENSITY`` non-zero) are
event-driven (cost per spike), denser ones GEMMs. Conv and pool layers make their currents by the
layer's own convolution per block of (sample, step) images, and their backward is the convolution's
weight and input gradients of ``c lam_u`` per block, BPTT's own backward products
(``hop.hop_backward_chunked``). Float temporaries are bounded by ``plan.CHUNK_BYTES``, not by T. The
``low_memory`` option of earlier versions is accepted and has no further effect.

The modules, in the order of the import graph (each imports only those above it):

* ``plan``: how the chunked path runs (event-driven or GEMM, groups and blocks, compiled scan or tensor loop) and
  its tuning constants (``EVENT_DENSITY``, ``WEIGHT_EVENT_*``, ``CHUNK_BYTES``);
* ``trace``: ``LayerTrace``, ``PostStats``, ``BackwardOptions`` (what the layer backward needs of a rule), the
  layer walk (``spiking_layers``) and ``check_steps``;
* ``errors``: the output's and the hidden-activity term's count errors, and ``bound_error``;
* ``sums``: the per-sample coefficient sum (``COEFFICIENT_SUM_BMM_MAX``, ``FUSED_COEFFICIENT_SUM``) and the
  hand-over of a gradient to its parameter;
* ``scan``: the reverse S-PSP scan of the chunked path and the virtual spikes it adds;
* ``record``: the forward record of one layer, chunked (``REUSE_INPUT_CSR``) or whole-window;
* ``whole``: the whole-window layer backward (``full_trace``) and its hop products;
* ``hop``: the chunked backward by the hop's own products (conv, pool, coefficients-first dense layers;
  ``SKIP_UNREAD_SUMS``);
* ``chunked``: the chunked backward of dense and recurrent layers through their S-PSP matrices;
* ``rule``: ``SpikeTrainRule``, the batch loop.

Every switch and constant lives in one module and is read there at call time, so that a test or a benchmark's
``--variant snn2hw.learning.spiketrain.MODULE:NAME=VALUE`` changes it.
"""
from snn2hw.learning.spiketrain.rule import SpikeTrainRule
from snn2hw.learning.spiketrain.trace import BackwardOptions, LayerTrace, PostStats, check_steps

__all__ = ["SpikeTrainRule", "LayerTrace", "PostStats", "BackwardOptions", "check_steps"]
