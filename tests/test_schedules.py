import math

import pytest
import torch

from ddpm_utils.schedules import (
    SCHEDULES,
    cosine_alphas_cumprod,
    cosine_betas,
    linear_betas,
    make_betas,
    quadratic_betas,
    sigmoid_betas,
)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_betas_shape_dtype_and_alphas_cumprod_strictly_decreasing_in_0_1(name, T):
    betas = make_betas(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert ((betas > 0) & (betas < 1)).all()
    abar = torch.cumprod(1 - betas, 0)
    assert ((abar > 0) & (abar < 1)).all()
    assert (abar[1:] < abar[:-1]).all()


def test_linear_matches_ho_et_al():
    betas = linear_betas(1000)
    # Ho et al. 2020, Sec. 4: beta_1 = 1e-4 to beta_T = 0.02, linearly.
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # alpha-bar_T: 4.0358297653756754e-05, the product computed with plain Python floats in a loop.
    assert torch.prod(1 - betas).item() == pytest.approx(4.0358297653756754e-05, rel=1e-9)


def test_cosine_matches_eq_17_where_not_clipped():
    T, s = 100, 0.008
    betas = cosine_betas(T, s=s)
    # Independent computation of Nichol & Dhariwal Eq. (17) with math.cos, one t at a time.
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = torch.tensor([ft / f[0] for ft in f], dtype=torch.float64)
    assert torch.allclose(cosine_alphas_cumprod(T, s), abar)
    unclipped = betas < 0.999
    expected = 1 - abar[1:] / abar[:-1]
    assert torch.allclose(betas[unclipped], expected[unclipped])
    assert betas[-1].item() == 0.999  # abar(T) = 0 would give beta_T = 1, clipped to max_beta


def test_cosine_max_beta_clips():
    betas = cosine_betas(50, max_beta=0.2)
    assert betas.max().item() == pytest.approx(0.2) and (betas <= 0.2).all()


def test_quadratic_and_sigmoid_end_points_and_shape():
    q = quadratic_betas(100, 1e-4, 0.02)
    assert q[0].item() == pytest.approx(1e-4) and q[-1].item() == pytest.approx(0.02)
    assert torch.allclose(q.sqrt().diff(), q.sqrt().diff()[0].expand(99))  # linear in sqrt(beta)
    s = sigmoid_betas(101, 1e-4, 0.02)
    # sigmoid(0) = 1/2: the midpoint of the sigmoid schedule is halfway between the ends
    assert s[50].item() == pytest.approx((1e-4 + 0.02) / 2)
    assert (s.diff() > 0).all() and s[0] > 1e-4 and s[-1] < 0.02


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: linear_betas(0), "T .* >= 1"),
        (lambda: linear_betas(2.5), "T .* int"),
        (lambda: linear_betas(10, beta_start=0.0), "beta_start must lie in \\(0, 1\\)"),
        (lambda: linear_betas(10, beta_end=1.0), "beta_end must lie in \\(0, 1\\)"),
        (lambda: linear_betas(10, beta_start=0.1, beta_end=0.01), "beta_start must be <= beta_end"),
        (lambda: quadratic_betas(10, beta_start=-1e-4), "beta_start"),
        (lambda: sigmoid_betas(10, beta_start=0.5, beta_end=0.1), "beta_start must be <= beta_end"),
        (lambda: cosine_betas(10, s=-0.1), "s \\(cosine offset\\) must lie in \\[0, 1\\)"),
        (lambda: cosine_betas(10, max_beta=1.0), "max_beta must lie in \\(0, 1\\)"),
        (lambda: cosine_betas(0), "T .* >= 1"),
        (lambda: make_betas("exponential", 10), "unknown schedule 'exponential'; expected one of"),
        (lambda: make_betas("cosine", 10, beta_start=1e-4), "schedule 'cosine' takes \\['s', 'max_beta'\\]"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_make_betas_passes_keywords():
    assert torch.equal(make_betas("linear", 10, beta_end=0.05), linear_betas(10, beta_end=0.05))
    assert torch.equal(make_betas("cosine", 10, s=0.01), cosine_betas(10, s=0.01))
