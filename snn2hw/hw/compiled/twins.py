"""The compiled twins of ``snn2hw.hw.loihi2``'s formulas, built from loihi2's own bytecode.

Nothing here defines arithmetic. ``loihi2.FORMULAS`` are ordinary Python functions written with Python
operators and six primitives that they look up as module globals (``_sign``, ``_abs``, ``_where``,
``_clamp``, and ``_int32`` and ``wrap_int32``, both a cast to int32 here). This module re-creates each of
those functions from its own code object with a globals dict in which the primitives are numba scalar
functions and the other formulas are their compiled twins, then compiles it with ``numba.njit``. The
bytecode that runs is the bytecode of loihi2.py, so the torch path and the compiled path cannot drift
apart (tests/test_hw_compiled.py also checks that they agree, bit for bit, on random inputs over the
full integer ranges and on every wrap edge).

numba is optional: ``available()`` says whether the fast path can be used (``SNN2HW_NO_NUMBA=1``
switches it off); callers fall back to the torch functions, which also serve CUDA tensors.
"""
from __future__ import annotations

import hashlib
import os
import types

import numpy as np

from snn2hw.hw import loihi2

try:  # the fast path is an accelerator, never a requirement
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

_formulas: dict | None = None
_fingerprint: str | None = None

# The kernels call the compiled formulas as module globals of their own modules (``bind``), not as
# closure variables: numba hashes a kernel's closure into its on-disk cache key, which thus stays small
# and deterministic.
_BOUND = {"_lif_step": "lif_step", "_lif_step_counted": "lif_step_counted", "_synaptic_output": "synaptic_output",
          "_add_messages": "add_messages", "_prepared_weight": "prepared_weight", "_conv_output": "conv_output"}


def available() -> bool:
    """Whether the numba fast path can run (numba imported, not switched off, formulas built)."""
    if numba is None or os.environ.get("SNN2HW_NO_NUMBA", "") not in ("", "0"):
        return False
    try:
        formulas()
    except Exception:  # pragma: no cover - a numba that cannot compile is treated as absent
        return False
    return True


def _scalar_primitives() -> dict:
    """numba scalar counterparts of loihi2's torch primitives (same names, same meaning)."""

    @numba.njit
    def _sign(x):
        if x > 0:
            return 1
        if x < 0:
            return -1
        return 0

    @numba.njit
    def _abs(x):
        return -x if x < 0 else x

    @numba.njit
    def _where(cond, a, b):
        return a if cond else b

    @numba.njit
    def _clamp(x, lo, hi):
        return lo if x < lo else (hi if x > hi else x)

    @numba.njit
    def wrap_int32(x):
        # the cast keeps the low 32 bits: the same integer as loihi2.wrap_int32, typed int32, so LLVM
        # computes what depends on it in 32-bit lanes
        return np.int32(x)

    return {"_sign": _sign, "_abs": _abs, "_where": _where, "_clamp": _clamp, "_int32": wrap_int32,
            "wrap_int32": wrap_int32}


def _namespace() -> tuple[dict, set]:
    """Globals for the re-created formulas: loihi2's integer constants plus the numba primitives."""
    ns = {k: v for k, v in vars(loihi2).items() if type(v) is int}  # IntEnums and bools excluded
    ns.update(_scalar_primitives())
    allowed = set(ns) | {f.__name__ for f in loihi2.FORMULAS}
    return ns, allowed


def check_formula(fn, allowed: set) -> None:
    """Refuse a formula that uses anything but operators and the ``allowed`` global names.

    ``co_names`` holds every global AND attribute name the bytecode uses, so a method call such as
    ``x.abs()`` or a ``torch.*`` call shows up here: a formula that would only work on tensors is
    refused loudly instead of compiling into something else.
    """
    code = fn.__code__
    stray = sorted(set(code.co_names) - allowed) + list(code.co_freevars)
    if stray or any(isinstance(c, types.CodeType) for c in code.co_consts):
        raise RuntimeError(
            f"loihi2.{fn.__name__} uses {stray or 'a nested function'}: formulas may use only operators, "
            "loihi2's integer constants, the primitives (_sign, _abs, _where, _clamp, _int32, wrap_int32) and other "
            "FORMULAS"
        )


def formulas() -> dict:
    """{name: numba dispatcher} for every function in ``loihi2.FORMULAS`` (built once, lazily)."""
    global _formulas, _fingerprint
    if _formulas is not None:
        return _formulas
    if numba is None:
        raise RuntimeError("numba is not installed; the compiled fast path is unavailable")
    ns, allowed = _namespace()
    compiled = {"wrap_int32": ns["wrap_int32"]}
    for fn in loihi2.FORMULAS:
        check_formula(fn, allowed)
        clone = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__)
        clone.__doc__ = fn.__doc__
        # Every compiled formula shares ``ns``, so calls between formulas resolve to compiled twins.
        ns[fn.__name__] = compiled[fn.__name__] = numba.njit(clone)
    _fingerprint = formulas_fingerprint()
    _formulas = compiled
    return compiled


def formulas_fingerprint() -> str:
    """Hash of everything in loihi2 that the compiled code depends on: each formula's bytecode,
    literals and names, and the values of the integer constants.

    numba's on-disk cache revalidates a kernel only against its own file (its module), not against
    the functions it calls; the kernels carry this fingerprint in their closure, which numba hashes
    into the cache key, so editing a formula in loihi2.py can never load a stale kernel.
    """
    h = hashlib.sha256()
    for fn in loihi2.FORMULAS:
        code = fn.__code__
        h.update(repr((fn.__name__, code.co_code, code.co_consts, code.co_names, code.co_varnames)).encode())
    h.update(repr(sorted((k, v) for k, v in vars(loihi2).items() if type(v) is int)).encode())
    return h.hexdigest()


# How the kernel reads its input array: "raw" takes it as the summed int32 input of each step (what
# loihi2.lif_scan receives); "float"/"int" take exact accumulations ``W @ s`` (float32/float64 holding


def bind(namespace: dict) -> str:
    """Set the compiled formulas that kernels call (``_lif_step``, ``_synaptic_output``, ...; ``_BOUND``)
    as globals of a kernel module (``namespace``: its ``globals()``) and return ``formulas_fingerprint()``,
    which each kernel puts into its closure: numba's on-disk cache revalidates a kernel only against its
    own file, so editing a formula in loihi2.py then never loads a stale kernel."""
    compiled = formulas()
    for alias, name in _BOUND.items():
        namespace[alias] = compiled[name]
    return _fingerprint
