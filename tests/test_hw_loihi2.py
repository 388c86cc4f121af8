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
