"""Encoders and losses against hand computations."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snn2hw import encode as E
from snn2hw.train import losses as L


# --- encoders ---------------------------------------------------------------------------------------
def test_regular_rate_counts_and_bernoulli_seeded():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    s = E.regular_rate(x, 8)
    assert s.shape == (1, 8, 4)
    assert s.sum(1).tolist() == [[0, 2, 4, 8]]
    a = E.bernoulli_rate(x.expand(3, 4), 50, generator=torch.Generator().manual_seed(1))
    b = E.bernoulli_rate(x.expand(3, 4), 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a[:, :, 0].sum() == 0 and a[:, :, 3].sum() == 150


def test_poisson_rate_probability_and_seed():
    x = torch.full((4000, 2), 0.5)
    x[:, 1] = 1.0
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    s = E.poisson_rate(x, 5, max_rate=2.0, generator=g())
    assert torch.equal(s, E.poisson_rate(x, 5, max_rate=2.0, generator=g()))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    p = s.mean(dim=(0, 1))
    # P(at least one event in a step) = 1 - exp(-x * max_rate)
    assert p[0].item() == pytest.approx(1 - math.exp(-1.0), abs=0.02)
    assert p[1].item() == pytest.approx(1 - math.exp(-2.0), abs=0.02)


def test_latency_linear_by_hand():
    x = torch.tensor([[1.0, 0.5, 0.0, 0.25, 0.3]])
    s = E.latency(x, 5)  # t = round((1 - x) * 4)
    assert s.shape == (1, 5, 5)
    times = [int(s[0, :, i].nonzero()[0]) if s[0, :, i].any() else None for i in range(5)]
    assert times == [0, 2, None, 3, 3]
    assert s.sum(1).max() == 1
    # threshold: values at or below never spike; the range above maps onto all steps
    s = E.latency(torch.tensor([[0.2, 0.6, 1.0]]), 5, threshold=0.2)  # t = round((1-x)/0.8*4)
    assert s[0, :, 0].sum() == 0 and s[0, 2, 1] == 1 and s[0, 0, 2] == 1


def test_latency_log_by_hand():
    x = torch.tensor([[1.0, 0.1, 0.01, 0.005, 0.5]])
    s = E.latency(x, 11, mode="log", threshold=0.01)  # t = round(ln x / ln 0.01 * 10)
    times = [int(s[0, :, i].nonzero()[0]) if s[0, :, i].any() else None for i in range(5)]
    assert times == [0, 5, None, None, round(math.log(0.5) / math.log(0.01) * 10)]
    with pytest.raises(ValueError):
        E.latency(x, 11, mode="log", threshold=0.0)
    with pytest.raises(ValueError):
        E.latency(x, 11, mode="cubic")


def test_delta_by_hand():
    x = torch.tensor([0.0, 0.0, 1.0, 3.5, 3.4, 1.0, 1.0]).view(1, 7, 1)
    n = E.delta(x, 1.0, output="signed", max_events=None)
    assert n.flatten().tolist() == [0, 0, 1, 2, 0, -2, 0]
    split = E.delta(x, 1.0)  # binary ON/OFF, clipped to one event per step
    assert split.shape == (1, 7, 2)
    assert split[0, :, 0].tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert split[0, :, 1].tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert E.delta(x + 5.0, 1.0, output="signed", start="zero")[0, 0, 0] == 1  # 5 clipped to 1


def test_sigma_delta_by_hand():
    # Slow ramp of 0.4 per step: delta never fires, sigma-delta tracks it.
    x = (0.4 * torch.arange(8.0)).view(1, 8, 1)
    assert E.delta(x, 1.0).sum() == 0
    n = E.sigma_delta(x, 1.0, output="signed", max_events=None)
    # r starts at 0; x = 0 .4 .8 1.2 1.6 2.0 2.4 2.8 -> events when x - r reaches 1
    assert n.flatten().tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    # Slew limit: a jump of 3.5 with max_events=1 is paid out one event per step.
    x = torch.tensor([0.0, 3.5, 3.5, 3.5, 3.5, 0.0]).view(1, 6, 1)
    n = E.sigma_delta(x, 1.0, output="signed")
    assert n.flatten().tolist() == [0, 1, 1, 1, 0, -1]
    split = E.sigma_delta(x, 1.0)
    assert split[0, :, 0].tolist() == [0, 1, 1, 1, 0, 0] and split[0, :, 1].tolist() == [0, 0, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        E.sigma_delta(x, 0.0)
    with pytest.raises(ValueError):
        E.sigma_delta(x, 1.0, output="both")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=2, max_size=40), st.floats(0.1, 5.0))
def test_sigma_delta_reconstructs_within_threshold(values, thr):
    x = torch.tensor(values, dtype=torch.float64).view(1, -1, 1)
    n = E.sigma_delta(x, thr, output="signed", max_events=None)
    recon = x[0, 0, 0] + thr * n.cumsum(1)
    assert (recon - x).abs().max() < thr * (1 + 1e-9)
    split = E.sigma_delta(x, thr, output="split", max_events=None)
    assert torch.equal(split[..., :1] - split[..., 1:], n)


def test_resample_keeps_end_points():
    x = torch.tensor([0.0, 1.0, 4.0]).view(1, 3, 1)
    r = E.resample(x, 5)
    assert r.flatten().tolist() == [0.0, 0.5, 1.0, 2.5, 4.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoders_follow_device():
    x = torch.rand(2, 16, 3, device="cuda")
    assert E.sigma_delta(x, 0.1).device.type == "cuda"
    assert E.latency(x[:, 0], 8).device.type == "cuda"
    assert E.poisson_rate(x[:, 0], 4, generator=torch.Generator(device="cuda").manual_seed(0)).device.type == "cuda"


# --- losses -----------------------------------------------------------------------------------------
def test_spike_count_mse_by_hand():
    counts = torch.tensor([[3.0, 1.0, 0.0], [0.0, 6.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    # targets 4 (label) / 1 (others): errors [-1, 0, -1] and [-1, 2, 0]
    loss = L.spike_count_mse(counts, y, target_true=4, target_false=1, reduction="none")
    assert loss.tolist() == [1.0, 2.5]
    assert L.spike_count_mse(counts, y, 4, 1).item() == pytest.approx(1.75)
    # margin 1: |err| <= 1 costs nothing, only the +2 remains
    assert L.spike_count_mse(counts, y, 4, 1, margin=1.0, reduction="sum").item() == pytest.approx(2.0)
    L.spike_count_mse(counts, y, 4, 1, margin=1.0, reduction="sum").backward()
    assert counts.grad.tolist() == [[0, 0, 0], [0, 2, 0]]
    # spike trains are summed over time first
    spikes = torch.zeros(1, 5, 2)
    spikes[0, :3, 0] = 1
    assert L.spike_count_mse(spikes, torch.tensor([1]), 2, 0).item() == pytest.approx(0.5 * (9 + 4))


def test_count_cross_entropy_by_hand():
    spikes = torch.zeros(1, 4, 3)
    spikes[0, :2, 0] = 1
    spikes[0, :, 2] = 1  # counts 2, 0, 4
    logits = torch.tensor([2.0, 0.0, 4.0]) * 0.5
    expected = -(logits[1] - torch.logsumexp(logits, 0))
    assert L.count_cross_entropy(spikes, torch.tensor([1]), scale=0.5).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("over_time,pick", [("max", lambda v: v.max(1).values), ("mean", lambda v: v.mean(1)),
                                             ("last", lambda v: v[:, -1])])
def test_membrane_cross_entropy_by_hand(over_time, pick):
    v = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]]])  # (1, T=3, n=2)
    logits = pick(v)[0]
    expected = -(logits[0] - torch.logsumexp(logits, 0))
    assert L.membrane_cross_entropy(v, torch.tensor([0]), over_time).item() == pytest.approx(expected.item())
    hand = {"max": [2.0, 1.0], "mean": [2.5 / 3, 0.5 / 3], "last": [0.5, 0.5]}[over_time]
    assert logits.tolist() == pytest.approx(hand)


def test_van_rossum_by_hand():
    tau, steps = 4.0, 10
    out = torch.zeros(1, steps, 1)
    tgt = torch.zeros(1, steps, 1)
    out[0, 3, 0] = 1.0
    # one unmatched spike at t=3: f = exp(-(t-3)/tau) for t >= 3
    hand = sum(math.exp(-2 * k / tau) for k in range(steps - 3)) / tau
    assert L.van_rossum_distance(out, tgt, tau).item() == pytest.approx(hand)
    assert L.van_rossum_distance(out, out.clone(), tau).item() == 0.0
    # a spike one step late costs less than a missing one
    late = torch.zeros_like(out)
    late[0, 4, 0] = 1.0
    assert 0 < L.van_rossum_distance(late, out, tau).item() < hand
    f = L.exponential_filter(out, tau)
    assert f[0, :, 0].tolist() == pytest.approx([0, 0, 0] + [math.exp(-k / tau) for k in range(7)])


def test_van_rossum_gradient_points_to_target():
    out = torch.zeros(1, 6, 1, requires_grad=True)
    tgt = torch.zeros(1, 6, 1)
    tgt[0, 2, 0] = 1
    L.van_rossum_distance(out, tgt, 2.0).backward()
    assert out.grad[0, 2, 0] < 0  # adding the missing spike lowers the loss


def test_rate_penalty_by_hand():
    s = torch.zeros(2, 10, 3)
    s[:, :5, 0] = 1  # rate 0.5
    s[0, :2, 1] = 1  # rate 0.1; neuron 2 silent
    up = L.rate_penalty(s, upper=0.2)  # only neuron 0 above: (0.3)^2 / 3
    assert up.item() == pytest.approx(0.09 / 3)
    lo = L.rate_penalty(s, lower=0.2)  # neurons 1 and 2 below: (0.1^2 + 0.2^2) / 3
    assert lo.item() == pytest.approx(0.05 / 3)
    both = L.rate_penalty([s, s], lower=0.2, upper=0.2)
    assert both.item() == pytest.approx(2 * (0.09 + 0.05) / 3)
    with pytest.raises(ValueError):
        L.rate_penalty(s)


def test_count_l2_penalty_by_hand():
    s = torch.zeros(2, 4, 2)
    s[0, :3, 0] = 1  # counts [[3, 0], [0, 1]]
    s[1, :1, 1] = 1
    assert L.count_l2_penalty(s).item() == pytest.approx((9 + 1) / 4)
    assert L.count_l2_penalty([s, s]).item() == pytest.approx(5.0)


def test_reduction_validation():
    with pytest.raises(ValueError):
        L.spike_count_mse(torch.zeros(1, 2), torch.tensor([0]), reduction="avg")
    with pytest.raises(ValueError):
        L.spike_counts(torch.zeros(3))


def test_regular_rate_is_floor_of_steps_times_rate_as_documented():
    steps = 10
    x = torch.tensor([[0.0, 0.05, 0.15, 0.26, 0.5, 0.74, 0.99, 1.0, 0.3, 0.7]])
    counts = E.regular_rate(x, steps).sum(1)[0]
    expected = torch.floor(x[0] * steps + 1e-6)
    assert counts.tolist() == expected.tolist()  # floor, not round: 0.74 * 10 -> 7, 0.99 * 10 -> 9
    assert counts[5] == 7 and counts[6] == 9
