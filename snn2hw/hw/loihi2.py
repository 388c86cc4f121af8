"""Loihi-2 fixed-point arithmetic, exactly as Lava 0.10.0's bit-accurate process models compute it.

This module is the single definition of the integer neuron and synapse in snn2hw. The bit-accurate
simulator, training-time fake quantization and the quantizer all call these functions; nothing else
in the code base re-derives this arithmetic. It imports nothing of snn2hw outside ``snn2hw.hw``.

All functions are pure and work on ``torch.int64`` tensors (CPU or CUDA), so the same code serves the
simulator and training.

The per-neuron formulas (listed in ``FORMULAS``) use nothing but Python operators, the module's integer
constants, each other, and six primitives looked up as module globals (``_sign``, ``_abs``, ``_where``,
``_clamp``, bound to torch functions here, ``_int32`` and ``wrap_int32``). ``snn2hw.hw.compiled`` re-creates these very functions from
their code objects with numba scalar primitives and compiles them, so the simulator's fast path runs
this code, not a second copy of it (see docs/fixed-point.md, "How the simulator stays exact and fast").

Integer state is kept in int64 and the narrower hardware/Lava widths are applied explicitly
(``wrap_int32``, ``wrap_u24_once``, ``saturate_v24``), which makes every wrap a visible, testable step
rather than an accident of a dtype.

Reference: ``lava/proc/lif/models.py`` (``AbstractPyLifModelFixed``, ``PyLifModelBitAcc``),
``lava/proc/dense/models.py`` (``AbstractPyDenseModelBitAcc``), ``lava/utils/weightutils.py``, and the
message channels, which carry every synaptic activation and spike payload as int32.
"""
from __future__ import annotations

from enum import IntEnum

import torch

# --- constants (names follow the meaning; Lava's own names in comments) -------------------------------
DECAY_SHIFT = 12  # decay_shift
DECAY_UNITY = 1 << DECAY_SHIFT  # decay_unity = 4096
DECAY_MASK = DECAY_UNITY - 1
U_DECAY_OFFSET = 1  # ds_offset: du = 0 still decays u by 1/4096; du = -1 is "no decay"
V_DECAY_OFFSET = 0  # dm_offset
STATE_BITS = 24  # uv_bitwidth
STATE_HALF = 1 << (STATE_BITS - 1)  # max_uv_val = 2**23
V_MAX = STATE_HALF - 1  # v saturates to [-(2**23 - 1), 2**23 - 1]
ACTIVATION_SHIFT = 6  # act_shift: synaptic input is MSB-aligned with u
ACTIVATION_LIMIT = 1 << (31 - ACTIVATION_SHIFT)  # a << 6 stays in int32 iff -2**25 <= a < 2**25
U_MAX = (1 << 31) - (1 << STATE_BITS)  # |u| after any step (wrap_u24_once of an int32 word)
THRESHOLD_SHIFT = 6  # vth_shift

DU_MIN, DU_MAX = -1, (1 << 12) - 1
DV_MIN, DV_MAX = 0, (1 << 12) - 1
VTH_MIN, VTH_MAX = 0, (1 << 17) - 1
BIAS_MANT_MIN, BIAS_MANT_MAX = -(1 << 12), (1 << 12) - 1  # 13-bit signed (Lava does not enforce it)
BIAS_EXP_MIN, BIAS_EXP_MAX = -7, 7  # negative exponents shift right (Lava allows it)
WEIGHT_BITS_MAX = 8
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7
MESSAGE_BITS_MAX = 24  # graded spike payloads in Lava's CPU models
MAX_DELAY = 63  # DelayDense: 6-bit synaptic delay

_INT32_SPAN = 1 << 32
_INT32_HALF = 1 << 31
_INT32_MASK = _INT32_SPAN - 1

# Primitives of the formulas below. They are module globals on purpose: snn2hw.hw.compiled rebinds
# these five names and ``wrap_int32`` (and nothing else) to numba scalar functions. torch.where/torch.clamp
# accept Python scalars for the value arguments, so the formulas may pass literals such as 0.
_sign = torch.sign
_abs = torch.abs
_where = torch.where
_clamp = torch.clamp


def _int32(x):
    """A value that the formulas' domain keeps within int32, unchanged. Compiled code casts it to int32
    (the same integer), which tells LLVM the width: numba types every sum and product int64, and LLVM
    computes in 32-bit lanes only what it sees truncated."""
    return x

# Which limit events lif_step_flags reports, in its order (the simulator's event names).
LIMIT_EVENTS = ("activation_int32_wrap", "u_wrap", "v_saturation")


class SignMode(IntEnum):
    """Weight sign modes; the values equal ``lava.utils.weightutils.SignMode``."""

    NULL = 0
    MIXED = 1
    EXCITATORY = 2
    INHIBITORY = 3


# --- integer helpers ----------------------------------------------------------------------------------
def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement wrap into int32, as numpy does when Lava stores into an int32 array/channel.

    Keeping the low 32 bits of ``x + 2**31`` is ``(x + 2**31) mod 2**32`` (floor modulo) for any int64 in
    two's complement. A primitive of the formulas: compiled code casts to int32 instead (the same
    integer), and the formulas wrap every value that fits int32, so compiled loops run in 32-bit lanes.
    """
    return ((x + _INT32_HALF) & _INT32_MASK) - _INT32_HALF


def shift_by(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """``x << e`` for e >= 0, arithmetic ``x >> -e`` (rounds toward -inf) for e < 0; ``e`` an integer."""
    return x << exponent if exponent >= 0 else x >> -exponent


def shift(x: torch.Tensor, exponent: torch.Tensor | int) -> torch.Tensor:
    """``shift_by`` for an integer or a tensor of exponents (one per element)."""
    if isinstance(exponent, int):
        return shift_by(x, exponent)
    exponent = exponent.to(torch.int64)
    return torch.where(exponent >= 0, x << exponent.clamp(min=0), x >> (-exponent).clamp(min=0))


def decay(x: torch.Tensor, keep: torch.Tensor | int) -> torch.Tensor:
    """``sign(x * keep) * (|x * keep| >> 12)``: multiply by keep/4096, rounding toward zero, for
    ``|x| <= U_MAX`` and ``keep`` in [0, 4096] (what u_keep and v_keep give), as an int32.

    With ``|x| = 4096 h + l`` (l < 4096), ``|x| * keep >> 12 = h * keep + (l * keep >> 12)`` exactly, and
    both products then fit 32 bits (below 2**31 - 2**24 and 2**24), so compiled loops multiply 32-bit
    lanes (8 per AVX2 vector) instead of 64-bit ones (``_int32`` marks each value that fits).
    """
    m = _int32(_abs(x))
    k = _int32(keep)
    high = _int32(_int32(m >> DECAY_SHIFT) * k)
    low = _int32(_int32(_int32(m & DECAY_MASK) * k) >> DECAY_SHIFT)
    q = _int32(high + low)
    # a select, not ``_sign(x) * q``: equal, and compiled loops then need no multiply by the sign
    return _int32(_where(x < 0, -q, q))


def u_keep(du: torch.Tensor | int) -> torch.Tensor | int:
    """Integer factor (of 4096) that u keeps each step."""
    return DECAY_UNITY - (du + U_DECAY_OFFSET)


def v_keep(dv: torch.Tensor | int) -> torch.Tensor | int:
    """Integer factor (of 4096) that v keeps each step."""
    return DECAY_UNITY - (dv + V_DECAY_OFFSET)


def wrap_u24_once(x: torch.Tensor) -> torch.Tensor:
    """Lava's single 24-bit wrap of u: subtract 2**24 if x > 2**23, add 2**24 if x <= -2**23.

    The bounds are asymmetric (2**23 itself is kept, -2**23 becomes +2**23) and only one wrap is
    applied, exactly as ``AbstractPyLifModelFixed.subthr_dynamics`` does. For an int32 ``x`` (what
    u_update passes) both results fit int32 (``_int32``).
    """
    span = 2 * STATE_HALF
    first = _where(x > STATE_HALF, _int32(x - span), x)
    return _where(first <= -STATE_HALF, _int32(x + span), first)


def saturate_v24(x: torch.Tensor) -> torch.Tensor:
    return _clamp(x, -V_MAX, V_MAX)


def effective_bias(bias_mant: torch.Tensor, bias_exp: torch.Tensor | int) -> torch.Tensor:
    """``bias_mant << bias_exp`` (right shift for a negative exponent), in int32 as Lava computes it."""
    return wrap_int32(shift(bias_mant.to(torch.int64), bias_exp))


def effective_threshold(vth: torch.Tensor | int) -> torch.Tensor | int:
    return vth << THRESHOLD_SHIFT


# --- synapses -----------------------------------------------------------------------------------------
def determine_sign_mode(weights: torch.Tensor) -> SignMode:
    if weights.numel() == 0 or weights.min() >= 0:
        return SignMode.EXCITATORY
    if weights.max() <= 0:
        return SignMode.INHIBITORY
    return SignMode.MIXED


def weight_range(sign_mode: SignMode) -> tuple[int, int]:
    """Representable 8-bit weight range of a sign mode (before truncation of low bits)."""
    if sign_mode == SignMode.MIXED:
        return -(1 << WEIGHT_BITS_MAX), (1 << WEIGHT_BITS_MAX) - 1
    if sign_mode == SignMode.INHIBITORY:
        return -((1 << WEIGHT_BITS_MAX) - 1), 0
    return 0, (1 << WEIGHT_BITS_MAX) - 1


def weight_step(sign_mode: SignMode, num_weight_bits: int) -> int:
    """Spacing of representable weights: the low ``8 - bits + mixed`` bits are dropped."""
    return 1 << (WEIGHT_BITS_MAX - num_weight_bits + int(sign_mode == SignMode.MIXED))


def prepare_weights(weights: torch.Tensor, sign_mode: SignMode, num_weight_bits: int) -> torch.Tensor:
    """Clip then truncate integer weights as Lava's Dense does once before its first step.

    Inhibitory weights are negated, processed as excitatory, and negated back (so -3 stays -3 at
    8 bits, while mixed-sign -1 becomes -2).
    """
    return prepared_weight(weights.to(torch.int64), *weight_preparation(sign_mode, num_weight_bits))


def weight_preparation(sign_mode: SignMode, num_weight_bits: int) -> tuple[int, int, int, int]:
    """``(sign, lo, hi, drop)`` of ``prepared_weight`` for a sign mode and weight width."""
    sign = -1 if sign_mode == SignMode.INHIBITORY else 1
    mixed = sign_mode == SignMode.MIXED
    lo = -(1 << WEIGHT_BITS_MAX) if mixed else 0
    hi = (1 << WEIGHT_BITS_MAX) - 1
    drop = WEIGHT_BITS_MAX - num_weight_bits + int(mixed)
    return sign, lo, hi, drop


def prepared_weight(w: torch.Tensor, sign: int, lo: int, hi: int, drop: int) -> torch.Tensor:
    """One weight as ``prepare_weights`` leaves it: sign-normalised, clipped, low bits dropped."""
    return ((_clamp(w * sign, lo, hi) >> drop) << drop) * sign


def synaptic_output(accumulated: torch.Tensor, weight_exp: int, graded: bool, delayed: bool = False) -> torch.Tensor:
    """What a Dense process sends, given its exact accumulation ``W @ s`` (int64).

    Binary spikes: Lava sums in int64, shifts by ``weight_exp``, and the int32 channel wraps. (A binary
    Dense takes any non-zero payload as a spike: ``s`` must be 0/1.)
    Graded spikes: ``weights.dot(s)`` is computed in int32 (wraps), then shifted in int32 (wraps).
    Graded spikes through a ``DelayDense`` (``delayed``): the products ``w * s`` are int32, but they are
    summed in int64 and the sum is shifted before it wraps into the int32 ``a_buff``; pass the exact
    sum of the int32-wrapped products (see ``delay_dense_product_wraps``).
    """
    if graded and not delayed:
        return wrap_int32(shift_by(wrap_int32(accumulated), weight_exp))
    return wrap_int32(shift_by(accumulated, weight_exp))


def delay_dense_product_wraps(weights_t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """How much int32 wrapping of the products changes a ``DelayDense``'s graded accumulation (int64).

    ``DelayDense`` multiplies weights (int32) by graded payloads (int32) element-wise before summing.
    With prepared weights in [-256, 255] and payloads of at most 24 bits, the only product outside int32
    is (-256) * (-2**23) = 2**31, which wraps to -2**31: each such pair lowers the sum by 2**32.
    ``weights_t`` is (src, dst), ``s`` is (..., src); returns (..., dst).
    """
    hits = (s == -(1 << 23)).to(torch.float64) @ (weights_t == -(1 << WEIGHT_BITS_MAX)).to(torch.float64)
    return -torch.round(hits).to(torch.int64) * _INT32_SPAN


def sum_activations(activations: list[torch.Tensor]) -> torch.Tensor:
    """An InPort adds the int32 messages of all its connected ports in int32."""
    total = activations[0]
    for a in activations[1:]:
        total = add_messages(total, a)
    return total


def add_messages(total: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """One addition of ``sum_activations``: int32 plus int32, wrapped to int32."""
    return wrap_int32(total + a)


# --- the CUBA-LIF neuron ------------------------------------------------------------------------------
# Domain: the state as Lava can hold it (|u| <= U_MAX: wrap_u24_once of an int32; |v| <= V_MAX: saturated),
# int32 inputs and biases, du and dv in their 12-bit ranges. Every value below is then an int32 word, and
# each width-limit event is read from the wrapped sum: a sum that left int32 wraps to at least 2**24 - 2
# away from 0 (its terms are at most U_MAX + V_MAX and 2**31 in magnitude), so it is outside the 24-bit
# range whenever the exact sum is. The same integers and events as summing in int64 and comparing
# (tests/test_hw_loihi2.py checks the formulas against that reference over the domain and on its edges),
# and compiled loops then run in 32-bit lanes (8 per AVX2 vector instead of 4).
def u_update(u, a_in, du):
    """The current's update: ``(a_in << 6 left int32, u left its 24-bit range, new u)``.

    ``a << 6`` is wrapped to int32 before it is added, the sum is wrapped to int32, then u wraps once
    at 24 bits (``wrap_u24_once``). u leaves its range when the exact sum is above 2**23 or at most
    -2**23, which is when the wrapped sum is (see the domain note above).
    """
    shifted = wrap_int32(a_in << ACTIVATION_SHIFT)
    decayed = decay(u, u_keep(du))
    total = wrap_int32(decayed + shifted)
    act_wrap = (a_in < -ACTIVATION_LIMIT) | (a_in >= ACTIVATION_LIMIT)
    u_wrap = (total > STATE_HALF) | (total <= -STATE_HALF)
    return act_wrap, u_wrap, wrap_u24_once(total)


def v_update(v, u_new, dv, bias_eff):
    """The voltage's update: ``(v left +-(2**23 - 1), new v before the spike reset)``.

    ``decay(v) + u_new`` never leaves int32 (|decay(v)| <= V_MAX, |u_new| <= U_MAX); adding the bias may,
    and the wrapped sum is then outside the saturation range too (see the domain note above).
    """
    total = wrap_int32(decay(v, v_keep(dv)) + u_new + bias_eff)
    saturated = (total > V_MAX) | (total < -V_MAX)
    return saturated, saturate_v24(total)


def spike_reset(v_new, vth_eff):
    """``(v with spiking neurons set to 0, spikes)``: a spike where v > vth << 6, strictly."""
    spikes = v_new > vth_eff
    return _where(spikes, 0, v_new), spikes


def lif_step(
    u: torch.Tensor,
    v: torch.Tensor,
    a_in: torch.Tensor,
    du: torch.Tensor | int,
    dv: torch.Tensor | int,
    vth_eff: torch.Tensor | int,
    bias_eff: torch.Tensor | int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Lava's ``PyLifModelBitAcc``. Returns ``(u, v, spikes)``; v is already reset.

    ``a_in`` is the int32 sum of this step's synaptic messages; ``vth_eff = vth << 6`` and
    ``bias_eff = effective_bias(...)`` are precomputed because Lava scales them outside the update.
    """
    _, _, u_new = u_update(u, a_in, du)
    _, v_new = v_update(v, u_new, dv, bias_eff)
    v_new, spikes = spike_reset(v_new, vth_eff)
    return u_new, v_new, spikes


def lif_step_flags(u, v, a_in, du, dv, bias_eff):
    """Which neurons hit a width limit in this step (same inputs as ``lif_step``), as a tuple in
    ``LIMIT_EVENTS`` order: int32 wrap of the shifted activation, 24-bit wrap of u, saturation of v.
    """
    act_wrap, u_wrap, u_new = u_update(u, a_in, du)
    saturated, _ = v_update(v, u_new, dv, bias_eff)
    return act_wrap, u_wrap, saturated


def lif_step_counted(u, v, a_in, du, dv, vth_eff, bias_eff):
    """``lif_step`` and ``lif_step_flags`` from one evaluation: ``(u, v, spikes, *flags)``.

    What the compiled scan calls when it counts events (computing the update once, not twice).
    """
    act_wrap, u_wrap, u_new = u_update(u, a_in, du)
    saturated, v_new = v_update(v, u_new, dv, bias_eff)
    v_new, spikes = spike_reset(v_new, vth_eff)
    return u_new, v_new, spikes, act_wrap, u_wrap, saturated


def lif_step_events(u: torch.Tensor, v: torch.Tensor, a_in: torch.Tensor, du, dv, bias_eff) -> dict:
    """``lif_step_flags`` as a dict keyed by ``LIMIT_EVENTS`` (the simulator's overflow accounting)."""
    return dict(zip(LIMIT_EVENTS, lif_step_flags(u, v, a_in, du, dv, bias_eff)))


# --- float relaxation (what training uses outside quantization-aware mode) -----------------------------
def u_keep_fraction(du: float) -> float:
    """Fraction of u kept per step for a 12-bit du: (4096 - du - 1) / 4096."""
    return u_keep(du) / DECAY_UNITY


def v_keep_fraction(dv: float) -> float:
    return v_keep(dv) / DECAY_UNITY


# --- whole-sequence helpers (shared by the simulator and quantization-aware training) -------------------
def accumulation_dtype(weight: torch.Tensor, max_input: int) -> torch.dtype:
    """Narrowest dtype in which ``s @ weight.T`` is exact for |s| <= max_input.

    A float matrix product of integers is exact while every partial sum stays below 2**24 (float32)
    or 2**53 (float64); the largest row sum of |W| times max_input bounds every partial sum.
    """
    bound = int(weight.abs().sum(dim=1).max().item()) * max_input if weight.numel() else 0
    if bound < 2**24:
        return torch.float32
    if bound < 2**53:
        return torch.float64
    return torch.int64


def accumulate_exact(s: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """Exact ``s @ weight_t`` as int64; ``weight_t`` (src, dst) is already in ``accumulation_dtype``."""
    if weight_t.dtype == torch.int64:
        return s.to(torch.int64) @ weight_t
    return torch.round(s.to(weight_t.dtype) @ weight_t).to(torch.int64)


def lif_scan(a_in: torch.Tensor, du: int, dv: int, vth_eff: int, bias_eff: torch.Tensor,
             keep_state: bool = False, on_step=None):
    """Run ``lif_step`` over a whole input sequence ``a_in`` (batch, steps, n) from zero state.

    Returns ``(spikes bool, u, v)``, the last two (batch, steps, n) when ``keep_state`` else None.
    ``on_step(t, u, v, a_t)`` is called before each step (the simulator's overflow accounting).

    On CPU tensors (without ``on_step``) this runs ``snn2hw.hw.compiled``'s kernel when numba is
    available: the same ``lif_step`` compiled, with identical results; otherwise the loop below.
    """
    if on_step is None and a_in.device.type == "cpu":
        from snn2hw.hw import compiled  # imported here: compiled imports this module

        if compiled.available():
            s_all, u_all, v_all = compiled.lif_scan(a_in, du, dv, vth_eff, bias_eff, keep_state)[:3]
            return s_all, u_all, v_all
    return lif_scan_torch(a_in, du, dv, vth_eff, bias_eff, keep_state, on_step)


def lif_scan_torch(a_in: torch.Tensor, du: int, dv: int, vth_eff: int, bias_eff: torch.Tensor,
                   keep_state: bool = False, on_step=None):
    """``lif_scan`` as a loop of tensor ``lif_step`` calls (any device; the reference for the kernel)."""
    batch, steps, size = a_in.shape
    u = torch.zeros(batch, size, dtype=torch.int64, device=a_in.device)
    v = torch.zeros_like(u)
    s_all = torch.zeros(batch, steps, size, dtype=torch.bool, device=a_in.device)
    u_all = torch.zeros(batch, steps, size, dtype=torch.int64, device=a_in.device) if keep_state else None
    v_all = torch.zeros_like(u_all) if keep_state else None
    for t in range(steps):
        if on_step is not None:
            on_step(t, u, v, a_in[:, t])
        u, v, s = lif_step(u, v, a_in[:, t], du, dv, vth_eff, bias_eff)
        s_all[:, t] = s
        if keep_state:
            u_all[:, t], v_all[:, t] = u, v
    return s_all, u_all, v_all


# --- convolution (lava/proc/conv: PyConvModelFixed, utils.conv_scipy, utils.signed_clamp) ---------------
# Lava's fixed-point Conv neither clips nor truncates its weights and ignores weight_exp and
# num_weight_bits. Each step it sends the previous step's result, then computes the convolution of this
# step's input (binary: s != 0; graded: the int32 payload) with scipy in float64 (exact for the sums snn2hw
# allows), casts it to int32 (``astype``: a float outside int32 becomes INT32_MIN on x86, with numpy's
# "invalid value encountered in cast" warning) and wraps that to 24 bits. snn2hw's design rules keep
# every possible sum inside int32 (``CONV_ACC_LIMIT``), so the cast is exact on any platform.
CONV_OUTPUT_BITS = 24
CONV_ACC_LIMIT = 1 << 31  # |accumulation| must stay below this for the float64 -> int32 cast to be exact


def wrap_int24(x: torch.Tensor) -> torch.Tensor:
    """Lava's ``signed_clamp(x, bits=24)``: ``(x + 2**23) mod 2**24 - 2**23`` (a wrap, not a clamp)."""
    return ((x + (1 << (CONV_OUTPUT_BITS - 1))) & ((1 << CONV_OUTPUT_BITS) - 1)) - (1 << (CONV_OUTPUT_BITS - 1))


def conv_output(accumulated: torch.Tensor) -> torch.Tensor:
    """What a Conv process sends, given its exact accumulation (int64).

    The float64 -> int32 cast of an out-of-range sum is modelled as x86 does it (INT32_MIN, which the
    24-bit wrap turns into 0); the design rules reject graphs where that can happen.
    """
    cast = _where((accumulated >= -_INT32_HALF) & (accumulated < _INT32_HALF), accumulated, -_INT32_HALF)
    return wrap_int24(cast)


def conv_accumulate_exact(s: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int,
                          max_input: int) -> torch.Tensor:
    """Exact integer cross-correlation (PyTorch orientation) of images ``s`` (N, C, H, W) with integer
    ``weight`` (O, C/groups, kh, kw), as int64 (N, O, Ho, Wo).

    float32 ``conv2d`` when the largest per-output-channel sum of |w| times ``max_input`` is below 2**24,
    float64 below 2**53 (every partial sum is then an exactly represented integer); otherwise an im2col
    product in int64.
    """
    out = conv_accumulate(s, weight, stride, padding, dilation, groups, max_input)
    return out if out.dtype == torch.int64 else torch.round(out).to(torch.int64)


def _float32_conv_exact(device: torch.device, max_weight: int, max_input: int) -> bool:
    """Whether a float32 ``conv2d`` multiplies integers up to these magnitudes exactly on ``device``.

    Sums are exact below 2**24 whatever the order; the products are exact unless the backend rounds its
    inputs: oneDNN on the CPU when its float32 precision is lowered (TF32/BF16 modes), and TF32 on CUDA
    (on by default for convolutions), which keeps 11 significant bits, so integers up to 2048 survive.
    """
    if device.type == "cpu":
        try:
            if torch._C._get_onednn_allow_tf32():
                return False
            precision = torch._C._get_fp32_precision_getter("mkldnn", "conv")
        except (AttributeError, RuntimeError, TypeError):  # older torch: no reduced-precision modes
            return True
        return precision in ("none", "ieee")
    return max_weight <= 2048 and max_input <= 2048


def _sum_pool(s: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor | None:
    """Sum pooling (``ir.sum_pool2d``: one channel per group, each channel's kernel one repeated value) as
    a window sum times that value, in float32; None when ``w`` is not of that form. Exact under the
    caller's bound: the window sum and its product by the weight are integers below 2**24."""
    o, cg, kh, kw = w.shape
    if not (cg == 1 and o == groups == s.shape[1] and tuple(dilation) == (1, 1)
            and 2 * padding[0] <= kh and 2 * padding[1] <= kw):
        return None
    per_channel = w.reshape(o, -1)
    if not bool((per_channel == per_channel[:, :1]).all()):
        return None
    window = torch.nn.functional.avg_pool2d(s.to(torch.float32), (kh, kw), stride, padding, ceil_mode=False,
                                            count_include_pad=True, divisor_override=1)
    return window.mul_(per_channel[:, 0].to(torch.float32).view(1, o, 1, 1))


def conv_bound(weight: torch.Tensor, max_input: int) -> int:
    """The largest per-output-channel sum of |w| times the largest input magnitude: it bounds every
    partial sum of every output of the convolution, in any summation order."""
    return int(weight.to(torch.int64).abs().flatten(1).sum(dim=1).max().item()) * max_input if weight.numel() else 0


def conv_accumulate(s: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int,
                    max_input: int) -> torch.Tensor:
    """``conv_accumulate_exact`` before its conversion to int64: float32 or float64 holding exact integers,
    or int64 (the simulator's compiled path converts element by element, saving passes over the arrays).

    The bound B = (largest per-output-channel sum of |w|) * max_input bounds every partial sum of every
    output, in any summation order. float32 ``conv2d`` is exact when B < 2**24 and the backend multiplies
    in full float32 (``_float32_conv_exact``); float64 when B < 2**53; else int64 im2col products.
    """
    w = weight.to(torch.int64)
    bound = conv_bound(w, max_input)
    if bound < 2**24 and _float32_conv_exact(s.device, int(w.abs().max().item()) if w.numel() else 0, max_input):
        pooled = _sum_pool(s, w, stride, padding, dilation, groups)
        if pooled is not None:
            return pooled
        return torch.nn.functional.conv2d(s.to(torch.float32), w.to(torch.float32), stride=stride, padding=padding,
                                          dilation=dilation, groups=groups)
    if bound < 2**53:
        return torch.nn.functional.conv2d(s.to(torch.float64), w.to(torch.float64), stride=stride, padding=padding,
                                          dilation=dilation, groups=groups)
    n, c, h, wd = s.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # unfold copies values (no arithmetic), exact for inputs below 2**53; the products are int64
    cols = torch.nn.functional.unfold(s.to(torch.float64), (kh, kw), dilation=dilation, padding=padding,
                                      stride=stride).to(torch.int64)  # (N, C*kh*kw, L)
    cols = cols.view(n, groups, cg * kh * kw, ho * wo)
    wg = w.view(groups, o // groups, cg * kh * kw)
    out = torch.stack([wg[g] @ cols[:, g] for g in range(groups)], dim=1)  # (N, G, O/G, L), int64
    return out.reshape(n, o, ho, wo)


# --- what snn2hw.hw.compiled compiles -------------------------------------------------------------------
# The per-neuron formulas (leaves first). Each may use only Python operators, the integer constants
# above, the primitives (_sign, _abs, _where, _clamp, _int32, wrap_int32) and the functions listed here;
# compiled.twins refuses anything else.
FORMULAS = (
    shift_by, synaptic_output, add_messages, prepared_weight,
    decay, u_keep, v_keep, wrap_u24_once, saturate_v24,
    u_update, v_update, spike_reset, lif_step, lif_step_flags, lif_step_counted,
    wrap_int24, conv_output,
)
