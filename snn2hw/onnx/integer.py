"""``snn2hw.hw.loihi2``'s integer arithmetic lowered to ONNX integer operators (int64 tensors).

Each function here emits the nodes of the loihi2 function of the same name, with loihi2's constants, so
the exported graph computes exactly what the simulator computes; ``tests/test_onnx_export.py`` checks it
against the simulator on every spike and state value. Only portable integer operators are used: ``Add``,
``Sub``, ``Neg``, ``Mul``, ``Div`` (on exact multiples only, so a runtime's rounding of integer division never
matters), ``Mod`` (``fmod=0``: the floor modulo, which gives both two's-complement wraps and arithmetic
right shifts), ``Abs``, ``Min``, ``Max``, ``Where``, comparisons, ``MatMul``, ``Gather``.

What is computed once, before the first step, is baked into constants, as Lava does it: weights after
``prepare_weights`` (clip and truncation), ``effective_bias`` and ``effective_threshold``.
"""
from __future__ import annotations

import numpy as np
import torch

from snn2hw.hw import loihi2 as hw
from snn2hw.ir import LoihiConv2d, LoihiDense, Population
from snn2hw.onnx.builder import INT64, GraphBuilder

_INT32_HALF = 1 << 31
_INT32_SPAN = 1 << 32


# --- integer helpers (loihi2's names) -----------------------------------------------------------------
def floor_div_pow2(b: GraphBuilder, x: str, bits: int) -> str:
    """``x >> bits`` (arithmetic, rounds toward -inf) as ``(x - x mod 2**bits) / 2**bits``: an exact division."""
    if bits == 0:
        return x
    d = b.const(1 << bits)
    return b.op("Div", b.op("Sub", x, b.op("Mod", x, d, fmod=0)), d)


def wrap_int32(b: GraphBuilder, x: str) -> str:
    """``((x + 2**31) mod 2**32) - 2**31``: the two's-complement int32 wrap."""
    half = b.const(_INT32_HALF)
    return b.op("Sub", b.op("Mod", b.op("Add", x, half), b.const(_INT32_SPAN), fmod=0), half)


def shift_by(b: GraphBuilder, x: str, exponent: int) -> str:
    if exponent >= 0:
        return x if exponent == 0 else b.op("Mul", x, b.const(1 << exponent))
    return floor_div_pow2(b, x, -exponent)


def decay(b: GraphBuilder, x: str, keep: int) -> str:
    """``sign(x * keep) * (|x * keep| >> 12)``: multiply by keep/4096, rounding toward zero.

    The sign is applied with ``Where``/``Neg`` rather than ``Sign``: onnxruntime 1.23's int64 ``Sign``
    returns -1 for products of 2**31 and more (found by the equality tests)."""
    p = b.op("Mul", x, b.const(keep))
    q = floor_div_pow2(b, b.op("Abs", p), hw.DECAY_SHIFT)
    return b.op("Where", b.op("Less", p, b.const(0)), b.op("Neg", q), q)


def wrap_u24_once(b: GraphBuilder, x: str) -> str:
    span, half = b.const(2 * hw.STATE_HALF), b.const(hw.STATE_HALF)
    first = b.op("Where", b.op("Greater", x, half), b.op("Sub", x, span), x)
    low = b.op("Not", b.op("Greater", first, b.const(-hw.STATE_HALF)))  # first <= -2**23
    return b.op("Where", low, b.op("Add", x, span), first)


def saturate_v24(b: GraphBuilder, x: str) -> str:
    return b.op("Max", b.op("Min", x, b.const(hw.V_MAX)), b.const(-hw.V_MAX))


def wrap_int24(b: GraphBuilder, x: str) -> str:
    half = b.const(1 << (hw.CONV_OUTPUT_BITS - 1))
    return b.op("Sub", b.op("Mod", b.op("Add", x, half), b.const(1 << hw.CONV_OUTPUT_BITS), fmod=0), half)


def conv_output(b: GraphBuilder, acc: str) -> str:
    """Lava Conv's float64 -> int32 cast (out of range: INT32_MIN, as on x86) and 24-bit wrap."""
    inside = b.op("And", b.op("Not", b.op("Less", acc, b.const(-_INT32_HALF))), b.op("Less", acc, b.const(_INT32_HALF)))
    return wrap_int24(b, b.op("Where", inside, acc, b.const(-_INT32_HALF)))


def binary(b: GraphBuilder, x: str) -> str:
    """A binary synapse takes any non-zero payload as a spike: ``(x != 0)`` as 0/1."""
    return b.op("Cast", b.op("Not", b.op("Equal", x, b.const(0))), to=INT64)


# --- synapses -------------------------------------------------------------------------------------------
def dense(b: GraphBuilder, p: LoihiDense, src: str, src_binary: bool) -> str:
    """What a Dense/DelayDense/Sparse sends (``synaptic_output``) for the source value ``src`` (batch, n_src)."""
    w = hw.prepare_weights(torch.as_tensor(np.asarray(p.weight, dtype=np.int64)), hw.SignMode(p.sign_mode),
                           p.num_weight_bits).numpy()
    graded = p.num_message_bits > 0
    if not graded and not src_binary:
        src = binary(b, src)
    acc = b.op("MatMul", src, b.const(w.T.copy(), name=b.fresh(f"weight/{p.name}")))
    delayed = p.delay > 0
    if graded and delayed and np.any(w == -(1 << hw.WEIGHT_BITS_MAX)):
        # DelayDense: the int32 products wrap before the int64 sum (delay_dense_product_wraps)
        hits = b.op("MatMul", b.op("Cast", b.op("Equal", src, b.const(-(1 << 23))), to=INT64),
                    b.const((w.T == -(1 << hw.WEIGHT_BITS_MAX)).astype(np.int64), name=b.fresh(f"wrap/{p.name}")))
        acc = b.op("Add", acc, b.op("Mul", hits, b.const(-_INT32_SPAN)))
    if graded and not delayed:
        return wrap_int32(b, shift_by(b, wrap_int32(b, acc), p.weight_exp))
    return wrap_int32(b, shift_by(b, acc, p.weight_exp))


def conv_patch_index(p) -> np.ndarray:
    """(groups, H_out*W_out, C/groups*kh*kw) indices into the flat (C*H*W) image of every tap of every
    output position, in the kernel's (c, ky, kx) order; taps in the padding point at C*H*W (a zero)."""
    c, h, w = p.in_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel_size, p.stride, p.padding, p.dilation
    _, ho, wo = p.out_shape
    cg = c // p.groups
    oy, ox = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    iy = oy.reshape(-1, 1) * sh - ph + ky.reshape(1, -1) * dh  # (L, kh*kw)
    ix = ox.reshape(-1, 1) * sw - pw + kx.reshape(1, -1) * dw
    valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    pix = np.where(valid, iy * w + ix, 0)
    chan = np.arange(p.groups)[:, None] * cg + np.arange(cg)[None, :]  # (G, cg)
    idx = chan[:, None, :, None] * (h * w) + pix[None, :, None, :]  # (G, L, cg, kh*kw)
    idx = np.where(valid[None, :, None, :], idx, c * h * w)
    return idx.reshape(p.groups, ho * wo, cg * kh * kw).astype(np.int64)


def conv_accumulate(b: GraphBuilder, p, src: str, weight: np.ndarray, dtype=np.int64) -> str:
    """Exact cross-correlation of the flat image ``src`` (batch, C*H*W) as (batch, O*H_out*W_out):
    gather every output position's taps (a zero appended for the padding), then one batched MatMul."""
    o, cg, kh, kw = weight.shape
    g = p.groups
    padded = b.op("Pad", src, b.const([0, 0, 0, 1]), b.const(0, dtype=dtype))
    taps = b.op("Gather", padded, b.const(conv_patch_index(p), name=b.fresh(f"taps/{p.name}")), axis=1)  # (B, G, L, K)
    wg = weight.reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1).astype(dtype)  # (G, K, O/G)
    acc = b.op("MatMul", taps, b.const(wg.copy(), dtype=dtype, name=b.fresh(f"weight/{p.name}")))  # (B, G, L, O/G)
    acc = b.op("Transpose", acc, perm=[0, 1, 3, 2])
    return b.op("Reshape", acc, b.const([0, -1]))


def conv(b: GraphBuilder, p: LoihiConv2d, src: str, src_binary: bool) -> str:
    """What Lava's Conv sends: weights as given (no clip, no truncation, weight_exp ignored), the exact sum
    cast to int32 and wrapped to 24 bits."""
    if p.num_message_bits == 0 and not src_binary:
        src = binary(b, src)
    return conv_output(b, conv_accumulate(b, p, src, np.asarray(p.weight, dtype=np.int64)))


# --- the neuron -----------------------------------------------------------------------------------------
class IntegerArithmetic:
    """Loihi 2's fixed-point CUBA-LIF (``snn2hw.hw.loihi2``) for the step-graph scheduler."""

    state_type = INT64
    value_type = INT64  # spikes and payloads travel as int64

    def __init__(self, graph):
        self.graph = graph

    def projection(self, b: GraphBuilder, p, src: str, src_binary: bool) -> str:
        if isinstance(p, LoihiConv2d):
            return conv(b, p, src, src_binary)
        return dense(b, p, src, src_binary)

    def neuron(self, b: GraphBuilder, pop: Population, parts: list[str], u: str, v: str):
        """One ``lif_step``; ``parts`` are the int32 messages arriving this step. Returns (spikes 0/1, u, v)."""
        n = pop.neuron
        u_dec = decay(b, u, hw.u_keep(int(n.du)))
        if parts:
            a_in = parts[0]
            for part in parts[1:]:  # sum_activations: int32 additions (one wrap at the end is the same)
                a_in = b.op("Add", a_in, part)
            a_in = wrap_int32(b, a_in) if len(parts) > 1 else a_in
            shifted = b.op("Mul", a_in, b.const(1 << hw.ACTIVATION_SHIFT))
            u_pre = b.op("Add", u_dec, wrap_int32(b, shifted))
        else:  # Lava's LIF receives zeros on an unconnected a_in
            u_pre = u_dec
        u_new = wrap_u24_once(b, wrap_int32(b, u_pre))
        bias = hw.effective_bias(torch.as_tensor(np.asarray(n.bias_mant, dtype=np.int64)),
                                 torch.as_tensor(np.asarray(n.bias_exp, dtype=np.int64))).numpy()
        v_pre = b.op("Add", b.op("Add", decay(b, v, hw.v_keep(int(n.dv))), u_new),
                     b.const(bias, name=b.fresh(f"bias/{pop.name}")))
        v_new = saturate_v24(b, wrap_int32(b, v_pre))
        fired = b.op("Greater", v_new, b.const(hw.effective_threshold(int(n.vth))))
        v_out = b.op("Where", fired, b.const(0), v_new)
        return b.op("Cast", fired, to=INT64), u_new, v_out
