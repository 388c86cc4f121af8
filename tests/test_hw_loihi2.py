"""Known-answer tests of the integer model (values worked out by hand from Lava's source)."""
import torch

from snn2hw.hw import loihi2 as hw

T = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731


def test_decay_rounds_toward_zero():
    assert hw.decay(T(100, -100), 4095).tolist() == [99, -99]  # 100*4095/4096 = 99.98 -> 99
    assert hw.decay(T(1, -1), 4095).tolist() == [0, 0]


def test_du_zero_still_decays_and_minus_one_does_not():
    assert hw.u_keep(0) == 4095 and hw.u_keep(-1) == 4096 and hw.v_keep(0) == 4096


def test_u_wraps_once_with_lava_bounds():
    h = hw.STATE_HALF
    assert hw.wrap_u24_once(T(h, h + 1, -h, -h + 1, 3 * h + 5)).tolist() == [h, -h + 1, h, -h + 1, h + 5]


def test_v_saturates():
    assert hw.saturate_v24(T(2**23, -(2**23), 5)).tolist() == [2**23 - 1, -(2**23 - 1), 5]


def test_weight_preparation_matches_lava_rules():
    w = T(3, -1, -3, 300, -300)
    assert hw.prepare_weights(w, hw.SignMode.MIXED, 8).tolist() == [2, -2, -4, 254, -256]
    assert hw.prepare_weights(T(-3, -300), hw.SignMode.INHIBITORY, 8).tolist() == [-3, -255]
    assert hw.prepare_weights(T(7, 300), hw.SignMode.EXCITATORY, 6).tolist() == [4, 252]


def test_weight_exp_shift_floors_and_channel_wraps():
    assert hw.synaptic_output(T(-3, 3), -1, graded=False).tolist() == [-2, 1]
    assert hw.synaptic_output(T(2**31), 0, graded=False).tolist() == [-(2**31)]


def test_lif_step_by_hand():
    # u = 0*... + (2 << 6) = 128; v = 0 + 128 + bias 4 = 132 > vth_eff 128 -> spike, v reset to 0
    u, v, s = hw.lif_step(T(0), T(0), T(2), 0, 0, hw.effective_threshold(2), T(4))
    assert (u.item(), v.item(), s.item()) == (128, 0, True)
    # no spike at equality (strict >)
    u, v, s = hw.lif_step(T(0), T(0), T(2), 0, 0, hw.effective_threshold(2), T(0))
    assert (u.item(), v.item(), s.item()) == (128, 128, False)
    # decays: u 4096 with du=2047 keeps 2048/4096; v 4096 with dv=1024 keeps 3072/4096
    u, v, s = hw.lif_step(T(4096), T(4096), T(0), 2047, 1024, 10**6, T(0))
    assert (u.item(), v.item()) == (2048, 3072 + 2048)


def test_effective_bias_negative_exponent_floors():
    assert hw.effective_bias(T(5, -5), T(-1, -1)).tolist() == [2, -3]
    assert hw.effective_bias(T(5), T(3)).tolist() == [40]


# --- the int32-word formulation against Lava's arithmetic in unbounded integers ------------------------
def _lava_step(u, v, a, du, dv, vth_eff, bias):
    """Lava's PyLifModelBitAcc step written plainly on Python ints (the reference the formulas must
    equal): the exact sums, then the wraps and saturation, and the limit events from the exact sums."""
    def wrap32(x):
        return (x + 2**31) % 2**32 - 2**31

    def dec(x, keep):
        p = x * keep
        return -(abs(p) >> 12) if p < 0 else abs(p) >> 12

    shifted = a << 6
    u_pre = dec(u, hw.u_keep(du)) + wrap32(shifted)
    w = wrap32(u_pre)
    u_new = w - 2**24 if w > 2**23 else (w + 2**24 if w <= -(2**23) else w)
    v_pre = dec(v, hw.v_keep(dv)) + u_new + bias
    v_new = max(-hw.V_MAX, min(hw.V_MAX, wrap32(v_pre)))
    spike = v_new > vth_eff
    flags = (shifted != wrap32(shifted), u_pre > 2**23 or u_pre <= -(2**23), abs(v_pre) > hw.V_MAX)
    return (u_new, 0 if spike else v_new, spike, *flags)


def _edges(limit):
    base = [0, 1, -1, 2**23, 2**24, hw.V_MAX, 2**25, 2**31 - 2**24, 2**31]
    return sorted({s * e + d for e in base for s in (1, -1) for d in (-1, 0, 1) if abs(s * e + d) <= limit}
                  | {limit, -limit})


def test_lif_step_counted_equals_lavas_unbounded_arithmetic_on_the_domains_edges():
    """Every combination of edge values of u (|u| <= U_MAX), v (|v| <= V_MAX), the input and the bias
    (int32), at the extreme and a middle decay: the int32-word formulas give Lava's integers and events."""
    us, vs = _edges(hw.U_MAX), _edges(hw.V_MAX)
    ints = [x for x in _edges(2**31) if x < 2**31]
    grid = torch.cartesian_prod(T(*us), T(*vs), T(*ints), T(*[0, -5, 2**31 - 1, -(2**31)]))
    u, v, a, b = grid.unbind(1)
    for du, dv, vth in [(-1, 0, 0), (0, 4095, 640), (4095, 1, 2**23 - 64), (2047, 1024, 64 * 1000)]:
        got = hw.lif_step_counted(u, v, a, du, dv, vth, b)
        want = [_lava_step(int(r[0]), int(r[1]), int(r[2]), du, dv, vth, int(r[3])) for r in grid]
        for k in range(6):
            assert [int(x) for x in got[k].tolist()] == [int(w[k]) for w in want], (du, dv, k)


def test_lif_step_counted_equals_lavas_arithmetic_on_random_states():
    g = torch.Generator().manual_seed(0)
    n = 4000
    u = torch.randint(-hw.U_MAX, hw.U_MAX + 1, (n,), generator=g)
    v = torch.randint(-hw.V_MAX, hw.V_MAX + 1, (n,), generator=g)
    a = torch.randint(-(2**31), 2**31, (n,), generator=g)
    small = torch.randint(-(2**26), 2**26, (n,), generator=g)
    a = torch.where(torch.arange(n) % 2 == 0, a, small)  # half of the inputs near the activation limit
    b = torch.randint(-(2**31), 2**31, (n,), generator=g)
    for du, dv in [(-1, 0), (410, 410), (4095, 4095)]:
        got = hw.lif_step_counted(u, v, a, du, dv, 64 * 5000, b)
        rows = torch.stack([u, v, a, b], 1).tolist()
        want = [_lava_step(r[0], r[1], r[2], du, dv, 64 * 5000, r[3]) for r in rows]
        for k in range(6):
            assert [int(x) for x in got[k].tolist()] == [int(w[k]) for w in want], (du, dv, k)
