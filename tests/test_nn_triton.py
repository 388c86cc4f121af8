"""The Triton (CUDA) training kernels against the tensor loop.

Here (no GPU) they run through Triton's interpreter on the CPU, in a subprocess because
``TRITON_INTERPRET`` is read when the kernels are defined; on a machine with CUDA the same checks also
run on the GPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

# Runs the feed-forward and the recurrent operator twice on one device, through the Triton kernels and
# through the tensor loop (SNN2HW_NO_TRITON=1), and checks: forward outputs bit-identical (same arithmetic,
# no fused multiply-adds; the recurrent product is the same torch.mm in both), gradients to rounding.
CHECK = r'''
import os, sys
import torch
from snn2hw.nn import functional as F, recurrent as R
from snn2hw.nn.kernels import triton_for

device = sys.argv[1]
for dtype in (torch.float32, torch.float64):
  g = torch.Generator().manual_seed(0)
  batch, steps, n = 2, 9, 70
  a = (torch.randn(batch, steps, n, generator=g, dtype=dtype) * 0.8 + 0.25).to(device)
  par = {"alpha": torch.rand(n, generator=g, dtype=dtype) * 0.9, "beta": torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.15,
         "v_th": torch.tensor(0.9, dtype=dtype), "bias": torch.randn(n, generator=g, dtype=dtype) * 0.1}
  weight = torch.randn(n, n, generator=g, dtype=dtype) * 0.2
  gens = [torch.randn(batch, steps, n, generator=g, dtype=dtype).to(device) for _ in range(3)]

  def run(op, triton_on, **kw):
      os.environ["SNN2HW_NO_TRITON"] = "0" if triton_on else "1"
      assert (triton_for(a) is not None) == triton_on
      x = a.clone().requires_grad_(True)
      leaves = {k: v.clone().to(device).requires_grad_(True) for k, v in par.items()}
      w = weight.clone().to(device).requires_grad_(True)
      if op == "ff":
          outs = F.cuba_lif_sequence(x, *leaves.values(), return_state=True, **kw)
      else:
          outs = R.recurrent_cuba_lif_sequence(x, w, *leaves.values(), return_state=True, **kw)
      sum((o * gg).sum() for o, gg in zip(outs, gens)).backward()
      grads = {"a": x.grad, **{k: v.grad for k, v in leaves.items()}}
      if op == "rec":
          grads["weight"] = w.grad
      return outs, grads

  rtol = 1e-4 if dtype == torch.float32 else 1e-10
  for op in ("ff", "rec"):
      for kw in ({}, {"detach_reset": False, "surrogate": "arctan"}):
          fast_out, fast = run(op, True, **kw)
          ref_out, ref = run(op, False, **kw)
          assert 0 < float(fast_out[0].mean()) < 1, op
          for x, y in zip(fast_out, ref_out):
              assert torch.equal(x, y), (op, kw)
          for k in ref:
              err = float((fast[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12))
              assert err <= rtol, (op, kw, k, err)
  # alpha = 0, no bias, an expanded (stride-0) incoming gradient from s.sum()
  res = []
  for on in (True, False):
      os.environ["SNN2HW_NO_TRITON"] = "0" if on else "1"
      x = a.clone().requires_grad_(True)
      beta = torch.tensor(0.9, dtype=dtype, device=device, requires_grad=True)
      s = F.cuba_lif_sequence(x, 0.0, beta, 1.0, None)
      s.sum().backward()
      res.append((s, x.grad, beta.grad))
  assert torch.equal(res[0][0], res[1][0])
  for u, v in zip(res[0][1:], res[1][1:]):
      assert float((u - v).abs().max() / v.abs().max()) <= rtol
print("ok")
'''


def _check(device: str, interpret: bool) -> None:
    env = dict(os.environ, SNN2HW_NO_NUMBA="1")
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CHECK, device], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@needs_triton
def test_triton_kernels_equal_tensor_loop_in_interpreter():
    _check("cpu", interpret=True)


@needs_triton
@needs_cuda
def test_triton_kernels_equal_tensor_loop_on_cuda():
    _check("cuda", interpret=False)


def test_cpu_tensors_never_import_triton():
    # the CPU paths decide without importing Triton (it costs start-up time and is a CUDA-only accelerator)
    proc = subprocess.run([sys.executable, "-c", "import sys, torch\n"
                           "from snn2hw.nn.kernels import triton_for\n"
                           "assert triton_for(torch.zeros(1)) is None and 'triton' not in sys.modules\n"],
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
