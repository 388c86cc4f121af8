"""The spike-train rules' compiled kernels (snn2hw/learning/spsp_kernels.py) against the tensor code they
replace: the forward and adjoint scans bit for bit, the event-driven products to rounding, and the
rules' gradients with every product event-driven against every product a GEMM."""
from __future__ import annotations

import pytest
import torch

from snn2hw.learning import make_rule, spiketrain, spsp, spsp_kernels
from snn2hw.learning.spsp import NeuronSpec, lif_sequence_chunked, spsp_adjoint
from snn2hw.nn.layers import LIFDense, RecurrentLIFDense, SpikingSequential

pytestmark = pytest.mark.skipif(not spsp_kernels.usable(torch.zeros(1)), reason="numba is not installed")


def _spec(dtype, t_ref, bias=True, per_neuron=False, n=7):
    g = torch.Generator().manual_seed(t_ref)
    alpha = torch.rand(n, generator=g, dtype=dtype) * 0.5 + 0.4 if per_neuron else torch.tensor(0.8, dtype=dtype)
    beta = torch.tensor(0.9, dtype=dtype)
    b = (torch.rand(n, generator=g, dtype=dtype) * 0.1) if bias else None
    return NeuronSpec(alpha, beta, torch.tensor(1.0, dtype=dtype), b, t_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_ref,bias,per_neuron", [(0, False, False), (0, True, True), (2, True, False)])
def test_forward_scan_equals_tensor_loop(monkeypatch, dtype, t_ref, bias, per_neuron):
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(3, 53, 7, generator=g, dtype=dtype) * 1.2).contiguous()
    spec = _spec(dtype, t_ref, bias, per_neuron)
    # a time-weighted sum of the currents made in the same pass (HM2-BP's virtual T-PSP): per step, or per
    # step and neuron
    kernel = torch.rand(53, 7 if per_neuron else 1, generator=g, dtype=dtype)
    out, vsum, weighted, bias_sum, counts = [], [], [], [], []
    for compiled in (True, False):
        if not compiled:
            lam_p = spsp_adjoint(out[0].to(dtype), spec.alpha, spec.beta, t_ref)[1]  # (the compiled adjoint)
            monkeypatch.setattr(spsp.spsp_kernels, "usable", lambda *t: False)
        acc = torch.zeros(3, 7, dtype=torch.float64)
        w = torch.full((3, 7), 0.5, dtype=dtype)
        bsum = torch.zeros(3, 7, dtype=torch.float64)
        cnt = torch.full((3, 7), 2.0, dtype=torch.float64)  # counts are added to what is there, chunk by chunk
        out.append(lif_sequence_chunked(lambda t0, t1: a[:, t0:t1], 3, 53, 7, spec, None, 8, a, torch.bool, acc,
                                        cnt, time_weights=kernel, weighted=w, bias_sum=bsum))
        vsum.append(acc)
        counts.append(cnt)
        weighted.append(w)
        bias_sum.append(bsum)
    assert out[0].sum() > 20
    assert torch.equal(out[0], out[1])  # bit for bit, across chunk boundaries
    for cnt in counts:
        assert torch.equal(cnt, 2.0 + out[0].sum(1, dtype=torch.float64))
    tol = dict(rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
    torch.testing.assert_close(vsum[0], vsum[1], **tol)
    assert bool((vsum[0] > 0).any())
    torch.testing.assert_close(weighted[0], 0.5 + (kernel * a).sum(1), **tol)
    torch.testing.assert_close(weighted[1], weighted[0], **tol)
    # the T-PSP's bias part per unit bias recorded by the forward: the reverse scan's sum of lam_p (t_ref included)
    if bias:
        for bsum in bias_sum:
            torch.testing.assert_close(bsum, lam_p.sum(1).to(torch.float64), **tol)
    else:
        assert not bias_sum[0].any() and not bias_sum[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_ref", [0, 2])
def test_adjoint_scan_equals_tensor_loop_and_chunks(monkeypatch, dtype, t_ref):
    g = torch.Generator().manual_seed(2)
    spikes = (torch.rand(2, 41, 6, generator=g) < 0.3).to(dtype)
    alpha, beta = torch.tensor(0.7, dtype=dtype), torch.tensor(0.85, dtype=dtype)
    lam_u, lam_p = spsp_adjoint(spikes, alpha, beta, t_ref)
    # chunks of 9, last first, with the state carried: the same kernel, the same numbers
    state: dict = {}
    sums = torch.zeros(2, 2, 6, dtype=torch.float64)
    parts = {}
    spec = NeuronSpec(alpha, beta, None, None, t_ref)
    for t1 in range(41, 0, -9):
        t0 = max(t1 - 9, 0)
        parts[t0] = spsp_kernels.adjoint_scan_chunk(spikes.bool(), t0, t1, spec, dtype, state, sums[0], sums[1])[0]
    assert torch.equal(torch.cat([parts[k] for k in sorted(parts)], 1), lam_u)
    torch.testing.assert_close(sums[0].to(dtype), lam_u[:, 1:].sum(1))
    torch.testing.assert_close(sums[1].to(dtype), lam_p.sum(1))
    monkeypatch.setattr(spsp.spsp_kernels, "usable", lambda *t: False)
    ref_u, ref_p = spsp_adjoint(spikes, alpha, beta, t_ref)
    assert torch.equal(lam_u, ref_u) and torch.equal(lam_p, ref_p)


@pytest.mark.parametrize("t_ref", [0, 2])
def test_adjoint_scan_makes_virtual_spikes_as_evenly_spaced_spikes(t_ref):
    """Virtual spikes made inside the reverse scan (per neuron counts, chunks last first) give the kernel of the
    trains with ``evenly_spaced_spikes`` added, bit for bit, for every count up to the refractory cap."""
    steps, n = 37, 16
    g = torch.Generator().manual_seed(4)
    spikes = torch.rand(2, steps, n, generator=g) < 0.2
    spikes[:, :, :13] = False  # silent neurons, given 0..12 virtual spikes (12 > the cap with t_ref = 2)
    k = torch.zeros(2, n)
    k[0, :13] = torch.arange(13.0)
    k[1, :13] = torch.arange(12.0, -1.0, -1.0)
    k = spsp.virtual_counts(steps, k, t_ref)
    post = spsp.evenly_spaced_spikes(steps, k, t_ref, dtype=torch.bool).logical_or_(spikes)
    spec = NeuronSpec(torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.85, dtype=torch.float64), None, None,
                      t_ref)
    out = []
    for trains, virtual in ((post, None), (spikes, k)):
        state: dict = {}
        sums = torch.zeros(2, 2, n, dtype=torch.float64)
        parts = {}
        for t1 in range(steps, 0, -8):
            t0 = max(t1 - 8, 0)
            parts[t0] = spsp_kernels.adjoint_scan_chunk(trains, t0, t1, spec, torch.float64, state, sums[0], sums[1],
                                                        virtual=virtual)[0]
        out.append((torch.cat([parts[t] for t in sorted(parts)], 1), sums))
    assert bool((k > 0).any()) and torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("binary", [True, False])
def test_event_driven_products_equal_dense(binary):
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(3, 11, 5, generator=g, dtype=torch.float64)
    s = torch.rand(3, 11, 9, generator=g) < 0.2
    s = s if binary else s * torch.rand(3, 11, 9, generator=g, dtype=torch.float64)
    sf = s.to(torch.float64)
    shared = torch.zeros(1, 9, 5, dtype=torch.float64)
    spsp_kernels.scatter_rows(grad, s, shared, per_sample=False)
    torch.testing.assert_close(shared[0], sf.reshape(-1, 9).t() @ grad.reshape(-1, 5), rtol=1e-12, atol=1e-12)
    lagged = torch.zeros(1, 9, 5, dtype=torch.float64)  # spikes of step t with the gradient rows of t + 1
    spsp_kernels.scatter_rows(grad, s[:, :-1], lagged, per_sample=False, lag=1)
    torch.testing.assert_close(lagged[0], sf[:, :-1].reshape(-1, 9).t() @ grad[:, 1:].reshape(-1, 5), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError, match="lag"):
        spsp_kernels.scatter_rows(grad, s, lagged, per_sample=False, lag=1)
    per = torch.zeros(3, 9, 5, dtype=torch.float64)
    spsp_kernels.scatter_rows(grad, s, per, per_sample=True)
    torch.testing.assert_close(per, sf.transpose(1, 2) @ grad, rtol=1e-12, atol=1e-12)
    w_t = torch.randn(9, 5, generator=g, dtype=torch.float64)
    dots = torch.zeros(3, 9, dtype=torch.float64)
    spsp_kernels.spike_dots(grad, s, w_t, dots)
    torch.testing.assert_close(dots, ((grad @ w_t.t()) * sf).sum(1), rtol=1e-12, atol=1e-12)


def test_tiled_scatter_equals_row_scatter_bit_for_bit(monkeypatch):
    """A wide shared output (a wide layer's weight gradient) is scattered tile by tile of columns with register
    accumulators; the sums must be the row-by-row kernel's, in the same order, so equal bit for bit: 0/1 bool and
    float trains (both take the 0/1 path) and valued ones, float32 (64-column tiles) and float64 (32), with and
    without the hop's lag, on strided views, over several row blocks (``SCATTER_ROW_BLOCK`` 7) and in one, a
    width that is not a multiple of the tile, onto a non-zero ``out``."""
    g = torch.Generator().manual_seed(6)
    for dtype, kind, lag, block in ((torch.float32, "bool", 1, 7), (torch.float64, "float", 0, 512),
                                    (torch.float64, "valued", 1, 7)):
        s = torch.rand(3, 18, 41, generator=g) < 0.2
        if kind != "bool":
            s = s.to(dtype) * (torch.randn(3, 18, 41, generator=g, dtype=dtype) if kind == "valued" else 1)
        s = s[:, :17]  # a strided view, as the rule passes its stored trains
        grad = torch.randn(3, 17 + lag, 100, generator=g, dtype=dtype)
        start = torch.randn(1, 41, 100, generator=g, dtype=dtype)
        outs = []
        for width in (64, 10 ** 9):  # tiled, then row by row
            monkeypatch.setattr(spsp_kernels, "SCATTER_TILE_MIN_WIDTH", width)
            monkeypatch.setattr(spsp_kernels, "SCATTER_ROW_BLOCK", block)
            out = start.clone()
            spsp_kernels.scatter_rows(grad, s, out, per_sample=False, lag=lag)
            outs.append(out)
        bits = torch.int32 if dtype == torch.float32 else torch.int64
        assert torch.equal(outs[0].view(bits), outs[1].view(bits)), (dtype, kind, lag, block)
        expected = start[0] + s.to(dtype).reshape(-1, 41).t() @ grad[:, lag:lag + 17].reshape(-1, 100)
        torch.testing.assert_close(outs[0][0], expected, rtol=1e-4, atol=1e-4)


def test_scatter_from_forward_csr_equals_scatter_bit_for_bit(monkeypatch):
    """The wide layer's weight gradient listed from the forward product's non-zeros (``spike_linear``'s
    ``csr_out``, ``scatter_rows_csr``) equals ``scatter_rows`` over the dense train bit for bit: float32 and float64,
    0/1 and valued trains, the hop's rows (steps 0..T-2 with lag 1) and an inner range (lag 0), inputs in two chunks
    of the CSR (1100 > 1024 float64 inputs), several row blocks, onto a non-zero ``out``; and declines (False)
    where ``scatter_rows`` would not take the tiled kernel."""
    from snn2hw.nn.spike_dense import spike_linear

    g = torch.Generator().manual_seed(11)
    for dtype, valued, m, block in ((torch.float32, False, 300, 64), (torch.float64, True, 1100, 512),
                                    (torch.float64, False, 1100, 100)):
        monkeypatch.setattr(spsp_kernels, "SCATTER_ROW_BLOCK", block)
        s = (torch.rand(3, 90, m, generator=g) < 0.05).to(dtype)
        if valued:
            s = s * torch.randn(3, 90, m, generator=g, dtype=dtype)
        found = []
        spike_linear(s.reshape(-1, m), torch.randn(70, m, generator=g, dtype=dtype), mode="sparse", csr_out=found)
        assert len(found) == 1 and (found[0][0].shape[1] == 3) == (m == 1100)  # two chunks of inputs, or one
        grad = torch.randn(3, 90, 70, generator=g, dtype=dtype)
        start = torch.randn(1, m, 70, generator=g, dtype=dtype)
        for t_lo, count, lag in ((0, 89, 1), (5, 40, 0)):
            outs = [start.clone(), start.clone()]
            assert spsp_kernels.scatter_rows_csr(grad, found[0], 90, t_lo, count, outs[0], lag=lag)
            spsp_kernels.scatter_rows(grad, s[:, t_lo:t_lo + count], outs[1], per_sample=False, lag=lag)
            bits = torch.int32 if dtype == torch.float32 else torch.int64
            assert torch.equal(outs[0].view(bits), outs[1].view(bits)), (dtype, valued, t_lo, lag)
            assert not torch.equal(outs[0], start)
    narrow = torch.zeros(1, m, 10, dtype=dtype)  # under SCATTER_TILE_MIN_WIDTH: row by row, not from the CSR
    assert not spsp_kernels.scatter_rows_csr(grad[:, :, :10], found[0], 90, 0, 89, narrow, lag=1)
    assert not narrow.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_equals_torch_transpose(dtype):
    """The blocked transpose copy (the event-driven weight gradient to the parameter) equals ``a.t().contiguous()``:
    shapes that are not multiples of the block, a single row, and the fallback for a non-contiguous view."""
    g = torch.Generator().manual_seed(13)
    for shape in ((130, 67), (1, 200), (64, 64)):
        a = torch.randn(*shape, generator=g, dtype=dtype)
        out = spsp_kernels.transposed(a)
        assert out.is_contiguous() and torch.equal(out, a.t())
    view = torch.randn(40, 30, generator=g, dtype=dtype).t()
    assert torch.equal(spsp_kernels.transposed(view), view.t())


def test_rule_weight_gradient_from_forward_csr_is_bit_identical(monkeypatch):
    """HM2-BP's wide first layer takes its event-driven weight gradient from the forward product's non-zeros
    (``LayerTrace.in_csr``): the gradients equal those with the dense train read again, bit for bit, in whole
    windows (groups of several samples) and with blocks of steps (no CSR kept), with a bias and without."""
    g = torch.Generator().manual_seed(12)
    x = (torch.rand(5, 40, 30, generator=g) < 0.08).float()
    y = torch.tensor([0, 1, 2, 1, 0])
    monkeypatch.setattr(spiketrain.plan, "WEIGHT_EVENT_MIN_WIDTH", 64)
    monkeypatch.setattr(spiketrain.plan, "WEIGHT_EVENT_BUDGET", 1e9)
    calls = []
    own = spsp_kernels.scatter_rows_csr
    monkeypatch.setattr(spsp_kernels, "scatter_rows_csr", lambda *a, **k: calls.append(1) or own(*a, **k))
    for chunk_bytes in (40 * 4 * 2 * 100, 0):  # two samples per group; one sample in blocks of steps
        monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
        for bias in (False, True):
            grads = []
            for reuse in (True, False):
                monkeypatch.setattr(spiketrain.record, "REUSE_INPUT_CSR", reuse)
                torch.manual_seed(0)
                net = SpikingSequential([LIFDense(30, 100, du=0.3, dv=0.2, weight_gain=3.0, bias=bias),
                                         LIFDense(100, 3, du=0.3, dv=0.2, weight_gain=2.0)])
                rule = make_rule("hm2bp", margin=0, target_true=8, target_false=2, chunk=10)
                calls.clear()
                rule.compute_gradients(net, x, y, None, {})
                grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
                if reuse:
                    assert bool(calls) == bool(chunk_bytes), (chunk_bytes, bias)
            assert len(grads[0]) == len(grads[1]) >= 2 + bias and bool(grads[0][0].abs().sum() > 0)
            assert all(torch.equal(a, b) for a, b in zip(*grads)), (chunk_bytes, bias)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_neuron_threshold", [False, True])
def test_recurrent_system_equals_tensor_expression_bit_for_bit(dtype, per_neuron_threshold):
    """ST-RSBP's matrix M by the compiled pass equals the tensor expression it replaces bit for bit (signs of zeros
    included): silent pre-synaptic neurons (their ratio is ``random_spike``), a count below 1 (clamped), zero
    weights and S-PSPs of either sign, a scalar and a per-neuron threshold; and it declines what it does not take."""
    g = torch.Generator().manual_seed(3)
    batch, n = 5, 9
    pivots = torch.randn(batch, n, generator=g, dtype=dtype)
    rec = torch.randn(n, n, generator=g, dtype=dtype)
    rec[2, 2] = rec[4, 1] = 0.0
    rec[3, 5] = -0.0
    e_rec = torch.randn(batch, n, n, generator=g, dtype=dtype).abs() * 3
    e_rec[1, 3, 4] = -0.0
    e_rec[2, 0, 0] = 0.0
    counts = torch.randint(0, 4, (batch, n), generator=g).to(dtype)
    counts[0, 2] = 0.5
    counts[:, 6] = 0.0
    random_spike = torch.randn(batch, n, generator=g, dtype=dtype)
    v_th = torch.rand(n, generator=g, dtype=dtype) + 0.5 if per_neuron_threshold else torch.tensor(1.3, dtype=dtype)
    rec_scaled = rec / v_th
    want = torch.diag_embed(pivots) - rec_scaled * spiketrain.SpikeTrainRule.per_spike_ratio(e_rec, counts,
                                                                                           random_spike)
    got = spsp_kernels.recurrent_system(pivots, rec_scaled, e_rec, counts, random_spike)
    assert torch.equal(_bits(got), _bits(want))
    assert spsp_kernels.recurrent_system(pivots, rec_scaled, e_rec, counts, None) is None
    assert spsp_kernels.recurrent_system(pivots.float() if dtype == torch.float64 else pivots.double(), rec_scaled,
                                         e_rec, counts, random_spike) is None
    assert spsp_kernels.recurrent_system(pivots[:, :4], rec_scaled, e_rec, counts, random_spike) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_neuron_threshold", [False, True])
def test_strsbp_pivots_kernel_equals_tensor_code_bit_for_bit(dtype, per_neuron_threshold):
    """ST-RSBP's pivots by the compiled pass (the fitted slope, the drive over the threshold from 1, sign times the
    magnitude clamped at ``min_pivot``) equal the tensor code's bit for bit: silent and saturated neurons, drives of
    either sign and zeros of both signs, pivots on both sides of the clamp."""
    from snn2hw.learning.spsp import polyval_derivative
    from snn2hw.learning.strsbp import spsp_fit

    g = torch.Generator().manual_seed(4)
    fit = spsp_fit(0.8, 0.9, 120, 0)
    top = max(fit["top"], 1)
    counts = torch.randint(0, 121, (6, 40), generator=g).to(dtype)
    counts[0, :4] = 0.0
    counts[1, :4] = 120.0
    drive = torch.randn(6, 40, generator=g, dtype=dtype) * 20
    drive[2, 0], drive[2, 1] = 0.0, -0.0
    v_th = torch.rand(40, generator=g, dtype=dtype) + 0.5 if per_neuron_threshold else torch.tensor(1.2, dtype=dtype)
    d = 1.0 - polyval_derivative(fit["coeffs"], (counts / top).double()).to(dtype) / top * drive / v_th
    want = torch.where(d >= 0, torch.ones_like(d), -torch.ones_like(d)) * d.abs().clamp(min=0.1)
    got = spsp_kernels.pivots(counts, drive, v_th, fit["coeffs"], top, 0.1)
    assert bool((d.abs() < 0.1).any()) and bool((d.abs() > 0.1).any()) and bool((d < 0).any())
    assert torch.equal(_bits(got), _bits(want))
    assert spsp_kernels.pivots(counts, drive[:, :3], v_th, fit["coeffs"], top, 0.1) is None


def test_strsbp_gradients_with_fused_system_are_bit_identical(monkeypatch):
    """ST-RSBP with the recurrent system matrix by ``spsp_kernels.recurrent_system`` (``strsbp.FUSED_SYSTEM``) and the
    pivots by ``spsp_kernels.pivots`` (``strsbp.FUSED_PIVOTS``) gives the gradients of the tensor code bit for bit,
    float32 and float64, with silent hidden neurons."""
    from snn2hw.learning import strsbp

    g = torch.Generator().manual_seed(5)
    x = (torch.rand(6, 50, 12, generator=g) < 0.15).float()
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    calls = []
    own, own_pivots = spsp_kernels.recurrent_system, spsp_kernels.pivots
    monkeypatch.setattr(spsp_kernels, "recurrent_system", lambda *a: calls.append(1) or own(*a))
    monkeypatch.setattr(spsp_kernels, "pivots", lambda *a: calls.append(2) or own_pivots(*a))
    for dtype in (torch.float32, torch.float64):
        grads = []
        for fused in (True, False):
            monkeypatch.setattr(strsbp, "FUSED_SYSTEM", fused)
            monkeypatch.setattr(strsbp, "FUSED_PIVOTS", fused)
            torch.manual_seed(0)
            net = SpikingSequential([RecurrentLIFDense(12, 16, du=0.3, dv=0.2, weight_gain=2.0, rec_gain=0.3),
                                     LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=2.0)]).to(dtype)
            with torch.no_grad():
                net.layers[0].weight[:3] = 0.0  # silent hidden neurons: virtual spikes, random-spike ratios
            calls.clear()
            make_rule("strsbp", margin=0, target_true=10, target_false=2).compute_gradients(net, x.to(dtype), y, None,
                                                                                             {})
            assert sorted(set(calls)) == ([1, 2] if fused else [])
            grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) >= 3 and bool(grads[0][1].abs().sum() > 0)
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(*grads)), dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficient_sum_equals_addcmul_loop_bit_for_bit(dtype):
    """``spsp_kernels.coefficient_sum`` adds ``sum_b c[b, i] e[b, i, j]`` to a non-zero ``out`` exactly as the loop of
    ``addcmul_`` it replaces (widths with and without vector tails, a strided ``c``), and declines what it cannot
    take."""
    g = torch.Generator().manual_seed(6)
    # whether torch's addcmul_ makes a fused multiply-add is its build's and the CPU's choice: where the compiled
    # pass would differ, coefficient_sum declines and leaves ``out`` as it was (the caller then runs the loop)
    used = spsp_kernels._matches_addcmul(dtype)
    for batch, n, k in ((1, 3, 5), (4, 9, 37), (6, 17, 64), (3, 100, 784)):
        e = torch.randn(batch, n, k, generator=g, dtype=dtype)
        c = torch.randn(n, batch, generator=g, dtype=dtype).t()  # strided, as the rules' coefficients may be
        want = torch.randn(n, k, generator=g, dtype=dtype)
        got = want.clone()
        before = want.clone()
        for b in range(batch):
            want.addcmul_(c[b].unsqueeze(1), e[b])
        assert spsp_kernels.coefficient_sum(got, c, e) == used
        assert torch.equal(_bits(got), _bits(want if used else before)), (batch, n, k)
    assert not spsp_kernels.coefficient_sum(torch.zeros(3, 5, dtype=dtype).t(), c[:, :5], e[:, :5, :3])
    assert not spsp_kernels.coefficient_sum(want, c, e[:, :, :3])


@pytest.mark.parametrize("rule_name", ["hm2bp", "strsbp"])
def test_rule_gradients_with_compiled_coefficient_sum_are_bit_identical(monkeypatch, rule_name):
    """The rules' gradients with ``sums.add_coefficient_sum``'s per-sample loop (every S-PSP matrix taken there) made by
    the compiled pass equal those of the ``addcmul_`` loop bit for bit: ST-RSBP's recurrent layer (its weight and
    recurrent weight gradients) and HM2-BP's output layer, float32 and float64."""
    monkeypatch.setattr(spiketrain.sums, "COEFFICIENT_SUM_BMM_MAX", 0)
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(5, 40, 12, generator=g) < 0.2).float()
    y = torch.tensor([0, 1, 2, 1, 0])
    calls = []
    own = spsp_kernels.coefficient_sum
    monkeypatch.setattr(spsp_kernels, "coefficient_sum", lambda *a: calls.append(1) or own(*a))
    for dtype in (torch.float32, torch.float64):
        grads = []
        for fused in (True, False):
            monkeypatch.setattr(spiketrain.sums, "FUSED_COEFFICIENT_SUM", fused)
            torch.manual_seed(0)
            first = (RecurrentLIFDense(12, 16, du=0.3, dv=0.2, weight_gain=2.0, rec_gain=0.3) if rule_name == "strsbp"
                     else LIFDense(12, 16, du=0.3, dv=0.2, weight_gain=2.0))
            net = SpikingSequential([first, LIFDense(16, 3, du=0.3, dv=0.2, weight_gain=2.0)]).to(dtype)
            calls.clear()
            make_rule(rule_name, margin=0, target_true=10, target_false=2).compute_gradients(net, x.to(dtype), y, None,
                                                                                              {})
            assert bool(calls) == fused
            grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) >= 2 and bool(grads[0][-1].abs().sum() > 0)
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(*grads)), dtype


@pytest.mark.parametrize("rule_name,rec,t_ref", [("hm2bp", False, 0), ("hm2bp", False, 2), ("strsbp", True, 0)])
@pytest.mark.parametrize("chunk_bytes", [0, 4 << 20])
def test_event_driven_gradients_equal_gemm_gradients(monkeypatch, rule_name, rec, t_ref, chunk_bytes):
    """The chunked backward with every product event-driven against every product a GEMM, in blocks of
    exactly ``chunk`` steps (``CHUNK_BYTES`` 0) and in whole windows; the first layer's weight gradient alone
    (``hop.hop_backward_chunked``) is event-driven when ``WEIGHT_EVENT_*`` allow it."""
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(4, 37, 12, generator=g) < 0.15).double()
    y = torch.tensor([0, 1, 2, 1])
    grads = []
    monkeypatch.setattr(spiketrain.plan, "CHUNK_BYTES", chunk_bytes)
    calls = []
    scatter = spsp_kernels.scatter_rows
    monkeypatch.setattr(spsp_kernels, "scatter_rows", lambda *a, **k: calls.append(k["per_sample"]) or scatter(*a, **k))
    for density in (1.0, 0.0):
        monkeypatch.setattr(spiketrain.plan, "EVENT_DENSITY", density)
        monkeypatch.setattr(spiketrain.plan, "WEIGHT_EVENT_BUDGET", 1e9 if density else 0.0)
        monkeypatch.setattr(spiketrain.plan, "WEIGHT_EVENT_MIN_WIDTH", 1)
        torch.manual_seed(0)
        hidden = (RecurrentLIFDense(12, 9, du=0.3, dv=0.2, weight_gain=3.0, rec_gain=0.3) if rec else
                  LIFDense(12, 9, du=0.3, dv=0.2, weight_gain=3.0))
        net = SpikingSequential([hidden, LIFDense(9, 3, du=0.3, dv=0.2, weight_gain=2.0)]).double()
        rule = make_rule(rule_name, margin=0, target_true=8, target_false=2, t_ref=t_ref, chunk=10)
        rule.compute_gradients(net, x, y, None, {})
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) >= 2 and any(bool(t.abs().sum() > 0) for t in grads[0])
    assert (False in calls) == (not rec)  # the first layer's weight gradient spike by spike (feed-forward)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_recurrent_forward_scan_equals_layer_forward_float32():
    """The compiled recurrent scan (event-driven V s[t-1]) gives the layer's own float32 spikes."""
    torch.manual_seed(5)
    net = SpikingSequential([RecurrentLIFDense(24, 96, du=0.25, dv=0.1, weight_gain=3.0, rec_gain=0.5),
                             LIFDense(96, 5, du=0.25, dv=0.1, weight_gain=2.0)])
    x = (torch.rand(4, 120, 24, generator=torch.Generator().manual_seed(6)) < 0.2).float()
    records, out = make_rule("strsbp", chunk=16).forward(net, x)
    ref = net(x, return_all=True)
    assert records[0].s_out.sum() > 100
    assert torch.equal(records[0].s_out, ref[0].bool()) and torch.equal(out, ref[1].bool())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjoint_scan_scaled_equals_scaled_kernel(dtype):
    """The deployable neuron's vectorised reverse scan with ``scale`` (per-neuron decays, chunks last first, virtual
    spikes) returns ``lam_u * scale`` bit for bit and the kernel's own sums, as the unscaled scan."""
    steps, n = 29, 11
    g = torch.Generator().manual_seed(8)
    spikes = torch.rand(3, steps, n, generator=g) < 0.25
    spikes[:, :, :3] = False
    k = torch.zeros(3, n)
    k[:, :3] = torch.tensor([1.0, 4.0, 7.0])
    scale = torch.randn(3, n, generator=g, dtype=torch.float64).to(dtype)
    spec = NeuronSpec(torch.rand(n, generator=g, dtype=torch.float64).to(dtype),
                      torch.rand(n, generator=g, dtype=torch.float64).to(dtype), None, None, 0)
    out = []
    for sc in (None, scale):
        state: dict = {}
        sums = torch.zeros(2, 3, n, dtype=torch.float64)
        parts = {t1: spsp_kernels.adjoint_scan_chunk(spikes, max(t1 - 7, 0), t1, spec, dtype, state, sums[0], sums[1],
                                                     virtual=k, scale=sc)[0] for t1 in range(steps, 0, -7)}
        out.append((torch.cat([parts[t] for t in sorted(parts)], 1), sums))
    assert torch.equal(out[0][0] * scale.unsqueeze(1), out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_ref,virtual,scaled", [(0, False, True), (0, True, True), (0, True, False), (2, True, True)])
def test_adjoint_scan_without_sums_gives_the_same_kernel(dtype, t_ref, virtual, scaled):
    """Without the sums (``lu_sum``/``lp_sum`` None: the first layer's weight gradient without a bias) the reverse
    scan returns the same ``lam_u`` bit for bit, chunks last first, with virtual spikes and the scale."""
    steps, n = 31, 13
    g = torch.Generator().manual_seed(9)
    spikes = torch.rand(3, steps, n, generator=g) < 0.25
    spikes[:, :, :3] = False
    k = torch.zeros(3, n)
    k[:, :3] = torch.tensor([1.0, 4.0, 6.0])
    scale = torch.randn(3, n, generator=g, dtype=torch.float64).to(dtype) if scaled else None
    spec = NeuronSpec(torch.rand(n, generator=g, dtype=torch.float64).to(dtype),
                      torch.rand(n, generator=g, dtype=torch.float64).to(dtype), None, None, t_ref)
    out = []
    for summed in (True, False):
        state: dict = {}
        sums = torch.zeros(2, 3, n, dtype=torch.float64) if summed else (None, None)
        parts = {t1: spsp_kernels.adjoint_scan_chunk(spikes, max(t1 - 7, 0), t1, spec, dtype, state, sums[0], sums[1],
                                                     virtual=k if virtual else None, scale=scale)[0].clone()
                 for t1 in range(steps, 0, -7)}
        out.append(torch.cat([parts[t] for t in sorted(parts)], 1))
        if summed:
            assert bool((sums[0] > 0).any())
    assert out[0].abs().sum() > 0 and torch.equal(out[0], out[1])


_CACHE_PROBE = '''
import numba
from snn2hw.learning.spsp_kernels import _njit_cached


def total(x):
    s = 0.0
    for i in numba.prange(x.shape[0]):
        s += x[i]
    return s


SERIAL, PARALLEL = _njit_cached(total, False), _njit_cached(total, True)
PLAIN_SERIAL = numba.njit(parallel=False, cache=True)(total)
PLAIN_PARALLEL = numba.njit(parallel=True, cache=True)(total)
'''


def test_serial_and_parallel_variants_have_their_own_cache_entries(tmp_path):
    """numba keys its cache on signature, machine, bytecode and closure, not on ``parallel``: without
    ``_njit_cached`` the serial compile loads the parallel one a previous process cached (the plain pair
    below shows it), and a one-thread training step ran the parallel kernel from the cache."""
    import os
    import subprocess
    import sys

    (tmp_path / "cache_probe.py").write_text(_CACHE_PROBE)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
    script = ("import sys, numpy as np, cache_probe\n"
              "for name in sys.argv[1:]:\n"
              "    d = getattr(cache_probe, name); assert d(np.ones(5)) == 5.0; print(len(d.stats.cache_hits))")

    def hits(*names):  # one fresh process: how many cached compiles each dispatcher loaded
        r = subprocess.run([sys.executable, "-c", script, *names], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return [int(n) for n in r.stdout.split()]

    assert hits("PLAIN_PARALLEL", "PARALLEL") == [0, 0]  # both compiled and cached
    # numba's own behaviour: the plain serial compile is the parallel one from the cache; ours is its own
    assert hits("PLAIN_SERIAL", "SERIAL") == [1, 0]
    assert hits("SERIAL", "PARALLEL") == [1, 1]  # and each is found again


def test_every_kernel_variant_has_its_own_cache_name():
    """The serial and parallel compiles of each kernel (and every closure variant) are distinct functions
    to numba's cache: different qualified names for different ``parallel`` flags."""
    names = {}
    for key, dispatcher in spsp_kernels._SCANS.items():
        *variant, parallel = key
        names.setdefault(tuple(variant), {})[parallel] = dispatcher.py_func.__qualname__
    assert names and all(len(set(v.values())) == 2 for v in names.values()), names
