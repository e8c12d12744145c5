"""Each clipping method's formula on hand-made gradients: what it does to the gradient, the
pre-clip norm it returns and its ``clipped`` flag."""

from __future__ import annotations

import math

import pytest
import torch

from gradtune import clipping


def params(*grads: list[float] | list[list[float]], weights=None) -> list[torch.nn.Parameter]:
    """Parameters holding ``grads`` (weights 1 unless given)."""
    out = []
    for i, g in enumerate(grads):
        g_t = torch.tensor(g, dtype=torch.float32)
        w = torch.ones_like(g_t) if weights is None else torch.tensor(weights[i], dtype=torch.float32)
        p = torch.nn.Parameter(w)
        p.grad = g_t.clone()
        out.append(p)
    return out


def grads(ps):
    return [p.grad.tolist() for p in ps]


def set_norm(ps, norm: float) -> None:
    """Scale the single-element gradient of ``ps`` so the global norm is ``norm``."""
    ps[0].grad = torch.tensor([norm])


# ----------------------------------------------------------------------------- none, norm


def test_none_leaves_gradients_and_returns_norm():
    ps = params([3.0, 4.0])
    norm, clipped = clipping.make("none")(ps)
    assert norm.item() == pytest.approx(5.0)
    assert not clipped.item()
    assert grads(ps) == [[3.0, 4.0]]


def test_norm_scales_the_global_norm_to_the_threshold():
    ps = params([3.0, 0.0], [0.0, 4.0])  # global norm 5 over two tensors
    norm, clipped = clipping.make("norm", 1.0)(ps)
    assert norm.item() == pytest.approx(5.0)  # the pre-clip norm
    assert clipped.item()
    flat = torch.cat([p.grad for p in ps])
    assert flat.tolist() == pytest.approx([0.6, 0.0, 0.0, 0.8], abs=1e-5)  # direction kept
    assert torch.linalg.vector_norm(flat).item() == pytest.approx(1.0, abs=1e-5)


def test_norm_below_threshold_is_untouched():
    ps = params([3.0, 4.0])
    norm, clipped = clipping.make("norm", 10.0)(ps)
    assert norm.item() == pytest.approx(5.0)
    assert not clipped.item()
    assert grads(ps) == [[3.0, 4.0]]


def test_parameters_without_gradient_are_skipped():
    ps = params([3.0, 4.0])
    ps.append(torch.nn.Parameter(torch.ones(3)))  # grad is None
    norm, _ = clipping.make("norm", 1.0)(ps)
    assert norm.item() == pytest.approx(5.0)
    assert ps[1].grad is None


# ----------------------------------------------------------------------------- value


def test_value_clamps_each_element():
    ps = params([0.5, -3.0, 2.0])
    norm, clipped = clipping.make("value", 1.0)(ps)
    assert norm.item() == pytest.approx(math.sqrt(0.25 + 9 + 4))
    assert clipped.item()
    assert grads(ps) == [[0.5, -1.0, 1.0]]


def test_value_below_threshold_is_not_clipped():
    ps = params([0.5, -0.9])
    _, clipped = clipping.make("value", 1.0)(ps)
    assert not clipped.item()
    assert grads(ps) == [pytest.approx([0.5, -0.9])]


# ----------------------------------------------------------------------------- agc


def test_unitwise_norm_is_per_output_row():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert clipping.unitwise_norm(w).flatten().tolist() == [5.0, 1.0]
    assert clipping.unitwise_norm(torch.tensor([3.0, 4.0])).item() == 5.0  # a bias: one unit
    conv = torch.ones(2, 3, 2, 2)
    assert clipping.unitwise_norm(conv).flatten().tolist() == pytest.approx([math.sqrt(12)] * 2)


def test_agc_clips_each_unit_to_lambda_times_its_weight_norm():
    # Row 0: ||W|| = 5, ||G|| = 10 -> limit 0.1 * 5 = 0.5, scaled by 0.05.
    # Row 1: ||W|| = 1, ||G|| = 0.05 -> under 0.1 * 1: untouched.
    ps = params([[6.0, 8.0], [0.03, 0.04]], weights=[[[3.0, 4.0], [0.0, 1.0]]])
    norm, clipped = clipping.make("agc", 0.1)(ps)
    assert norm.item() == pytest.approx(math.sqrt(100 + 0.0025))
    assert clipped.item()
    g = ps[0].grad
    assert g[0].tolist() == pytest.approx([0.3, 0.4], rel=1e-4)
    assert torch.linalg.vector_norm(g[0]).item() == pytest.approx(0.5, rel=1e-4)
    assert g[1].tolist() == pytest.approx([0.03, 0.04])


def test_agc_uses_eps_for_tiny_weights():
    # ||W|| = 0 -> max(||W||, 1e-3) = 1e-3; limit lambda * 1e-3 = 1e-4.
    ps = params([3.0, 4.0], weights=[[0.0, 0.0]])
    _, clipped = clipping.make("agc", 0.1)(ps)
    assert clipped.item()
    assert torch.linalg.vector_norm(ps[0].grad).item() == pytest.approx(1e-4, rel=1e-3)


def test_agc_not_clipped_when_every_unit_is_within():
    ps = params([[0.01, 0.0]], weights=[[[1.0, 1.0]]])
    _, clipped = clipping.make("agc", 0.1)(ps)
    assert not clipped.item()
    assert ps[0].grad.tolist() == [[pytest.approx(0.01), 0.0]]


# ----------------------------------------------------------------------------- autoclip


def test_autoclip_clips_at_the_percentile_of_the_norm_history():
    clip = clipping.make("autoclip", 50.0)  # the median of all norms so far, current included
    for n in (1.0, 2.0, 3.0):
        ps = params([n])
        norm, clipped = clip(ps)
        assert norm.item() == pytest.approx(n)
    # History [1, 2, 3]: the last norm 3 is clipped to the median 2.
    assert clipped.item() and ps[0].grad.item() == pytest.approx(2.0, rel=1e-5)
    ps = params([10.0])
    norm, clipped = clip(ps)  # history [1, 2, 3, 10]: median 2.5 (linear interpolation)
    assert norm.item() == pytest.approx(10.0)
    assert clipped.item() and ps[0].grad.item() == pytest.approx(2.5, rel=1e-5)


def test_autoclip_first_step_and_100th_percentile_never_clip():
    ps = params([7.0])
    _, clipped = clipping.make("autoclip", 10.0)(ps)
    assert not clipped.item() and ps[0].grad.item() == 7.0  # history of one: its own norm
    clip = clipping.make("autoclip", 100.0)
    for n in (1.0, 5.0, 2.0):
        ps = params([n])
        _, clipped = clip(ps)
        assert not clipped.item()


def test_autoclip_keeps_nonfinite_norms_out_of_history():
    clip = clipping.make("autoclip", 50.0)
    for n in (1.0, 3.0):
        clip(params([n]))
    norm, _ = clip(params([math.inf]))
    assert math.isinf(norm.item())
    ps = params([5.0])
    clip(ps)  # history without the inf: [1, 3, 5], median 3
    assert ps[0].grad.item() == pytest.approx(3.0, rel=1e-5)


def test_autoclip_rejects_a_percentile_outside_0_100():
    with pytest.raises(ValueError, match="percentile"):
        clipping.make("autoclip", 150.0)


# ----------------------------------------------------------------------------- zclip


def zclip_warm(norms, z=2.5, alpha=0.97, warmup=4):
    clip = clipping.ZClip(z, alpha=alpha, warmup=warmup)
    for n in norms:
        ps = params([n])
        norm, clipped = clip(ps)
        assert not clipped.item() and ps[0].grad.item() == n  # no clipping in warm-up
    return clip


def test_zclip_warmup_sets_mean_and_population_variance():
    clip = zclip_warm([1.0, 2.0, 3.0, 2.0])
    assert clip.mean.item() == pytest.approx(2.0)
    assert clip.var.item() == pytest.approx(0.5)  # mean of squared deviations


def test_zclip_scales_an_outlier_to_mean_plus_z2_std_over_zt():
    clip = zclip_warm([1.0, 2.0, 3.0, 2.0])  # mean 2, std sqrt(0.5)
    std = math.sqrt(0.5)
    ps = params([10.0])
    norm, clipped = clip(ps)
    z_t = (10.0 - 2.0) / (std + 1e-6)
    expected = 2.0 + 2.5**2 * std / z_t
    assert norm.item() == pytest.approx(10.0)  # pre-clip
    assert clipped.item()
    assert ps[0].grad.item() == pytest.approx(expected, rel=1e-4)
    # EMA updated with the clipped norm, the variance with the new mean.
    mean = 0.97 * 2.0 + 0.03 * expected
    assert clip.mean.item() == pytest.approx(mean, rel=1e-5)
    assert clip.var.item() == pytest.approx(0.97 * 0.5 + 0.03 * (expected - mean) ** 2, rel=1e-4)


def test_zclip_leaves_an_inlier_and_updates_the_ema_with_it():
    clip = zclip_warm([1.0, 2.0, 3.0, 2.0])
    ps = params([3.0])  # z = 1.41 < 2.5
    norm, clipped = clip(ps)
    assert not clipped.item() and ps[0].grad.item() == 3.0
    assert clip.mean.item() == pytest.approx(0.97 * 2 + 0.03 * 3)


def test_zclip_keeps_nonfinite_norms_out_of_its_statistics():
    clip = zclip_warm([1.0, 2.0, 3.0, 2.0])
    norm, clipped = clip(params([math.nan]))
    assert math.isnan(norm.item()) and not clipped.item()
    assert clip.mean.item() == pytest.approx(2.0)  # EMA took the mean in its place
    assert math.isfinite(clip.var.item())


# ----------------------------------------------------------------------------- make


@pytest.mark.parametrize("method", ["norm", "value", "agc", "autoclip", "zclip"])
def test_every_method_needs_a_positive_threshold(method):
    with pytest.raises(ValueError, match="clip_threshold"):
        clipping.make(method, None)
    with pytest.raises(ValueError, match="clip_threshold"):
        clipping.make(method, 0.0)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown clip method"):
        clipping.make("median", 1.0)


@pytest.mark.parametrize("method", ["none", "norm", "value", "agc", "autoclip", "zclip"])
def test_returns_zero_dim_tensors_without_host_sync(method):
    ps = params([3.0, 4.0])
    norm, clipped = clipping.make(method, 1.0)(ps)
    assert isinstance(norm, torch.Tensor) and norm.ndim == 0
    assert isinstance(clipped, torch.Tensor) and clipped.dtype == torch.bool


# ------------------------------------------------------------------- the norm after clipping
@pytest.mark.parametrize(("method", "threshold"), [("none", None), ("norm", 2.0), ("norm", 100.0)])
def test_norm_after_is_the_clipped_gradients_norm(method, threshold):
    ps = params([3.0, 4.0], [12.0])  # norm 13
    clipper = clipping.make(method, threshold)
    norm, _ = clipper(ps)
    after = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ps]))
    assert clipping.norm_after(clipper).item() == pytest.approx(after.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["value", "agc", "autoclip", "zclip"])
def test_norm_after_is_unknown_where_it_does_not_follow_from_the_norm(method):
    clipper = clipping.make(method, 1.0)
    clipper(params([3.0, 4.0]))
    assert clipping.norm_after(clipper) is None


def test_norm_after_an_inf_norm_is_not_finite():
    clipper = clipping.make("norm", 1.0)
    clipper(params([math.inf, 1.0]))
    assert not math.isfinite(clipping.norm_after(clipper).item())
