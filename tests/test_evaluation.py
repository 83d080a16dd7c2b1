"""Evaluation: Frechet distance against closed forms, nearest-neighbour distances, scores of real and fake digits, the CLI."""

import math

import pytest
import torch

from ddpm_utils.__main__ import main
from ddpm_utils.checkpoints import save_checkpoint
from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.evaluation import (
    Evaluator,
    bits_per_dim,
    classify,
    format_table,
    frechet_distance,
    generate,
    nearest_distances,
    proportion_interval,
    within_class_distance,
)
from ddpm_utils.unet import UNet, UNetConfig


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator()


def gaussian(n, mean, cov, seed):
    """n samples whose sample mean and covariance are exactly `mean` and `cov` (whitened, then coloured)."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    return z @ torch.linalg.cholesky(cov.double()).T + mean


def test_frechet_distance_matches_closed_forms():
    a = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(a, a)) < 1e-9
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-6)
    # commuting (diagonal) covariances: sum of (sqrt(var_a) - sqrt(var_b))^2
    va, vb = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    x, y = gaussian(500, torch.zeros(3), torch.diag(va), 1), gaussian(500, torch.zeros(3), torch.diag(vb), 2)
    assert frechet_distance(x, y) == pytest.approx((va.sqrt() - vb.sqrt()).square().sum().item(), rel=1e-6)
    # non-commuting 2x2: tr sqrt(S_a S_b) = sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b))
    sa, sb = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64), torch.tensor([[1.0, -0.5], [-0.5, 3.0]], dtype=torch.float64)
    cross = math.sqrt((sa @ sb).trace() + 2 * math.sqrt(sa.det() * sb.det()))
    x, y = gaussian(400, torch.zeros(2), sa, 3), gaussian(400, torch.ones(2), sb, 4)
    expected = 2 + sa.trace().item() + sb.trace().item() - 2 * cross
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(y, x) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))


def test_nearest_distances_brute_force():
    g = torch.Generator().manual_seed(0)
    images, reference = torch.randn(7, 1, 4, 4, generator=g), torch.randn(20, 1, 4, 4, generator=g)
    want = torch.tensor([min((im - r).norm().item() for r in reference) for im in images])
    torch.testing.assert_close(nearest_distances(images, reference, batch_size=3), want)
    assert nearest_distances(reference[:5], reference).abs().max() < 1e-2  # an image's nearest is itself


def test_within_class_distance_pairs_only_equal_labels():
    images = torch.tensor([0.0, 3.0, 10.0, 14.0, 100.0]).view(5, 1, 1, 1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # label 2 has a single image: no pair
    assert within_class_distance(images, labels) == pytest.approx((3 + 4) / 2)
    assert math.isnan(within_class_distance(images[:2], torch.tensor([0, 1])))


def test_real_digits_score_well_and_noise_scores_badly(evaluator):
    real = evaluator.score(evaluator.test_images, evaluator.test_labels)
    assert real["accuracy"] > 0.97 and real["confidence"] > 0.95 and sum(real["histogram"]) == 500
    assert real["fd"] < 1e-6 and real["copies"] < 0.02  # the held-out set against itself
    reference = evaluator.score_real(200)
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = evaluator.score(noise, torch.arange(200) % 10)
    assert fake["accuracy"] < 0.3 and fake["fd"] > 10 * reference["fd"] and fake["nearest"] > 2 * fake["nearest_real"]
    assert abs(reference["kid"]) < 0.02 * fake["kid"]  # real digits: KID near 0 (unbiased), noise: far from it
    copies = evaluator.score(evaluator.train_images[:50])  # memorised training digits are caught
    assert copies["nearest_real"] > 5  # real held-out digits are far from every training digit
    assert 5 < real["diversity"] < 25 and fake["diversity"] > real["diversity"]
    assert copies["copies"] == 1.0 and copies["nearest"] < 0.05 and copies["accuracy"] is None
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        evaluator.score(torch.zeros(4, 1, 32, 32))
    with pytest.raises(ValueError, match="labels must have shape"):
        evaluator.score(noise[:4], torch.arange(3))
    table = format_table([{"setting": "real", **reference}, {"setting": "noise", "seconds": 2.0, **fake}])
    assert "real" in table.splitlines()[1] and "0.010" in table.splitlines()[2]  # 2 s / 200 images


def test_proportion_interval_is_wilsons():
    # reference values of the Wilson score interval: 80 of 100 -> [0.7112, 0.8666]; 0 of 10 -> [0, z^2 / (n + z^2)]
    lo, hi = proportion_interval(0.8, 100)
    assert lo == pytest.approx(0.7112, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)
    assert proportion_interval(0.0, 10) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)))
    assert proportion_interval(1.0, 10)[1] == 1.0 and proportion_interval(1.0, 10)[0] < 1.0
    # coverage by simulation: the interval contains the true p in about 95 % of 2,000 draws of n = 50
    g = torch.Generator().manual_seed(0)
    hits = [(lambda ci: ci[0] <= 0.3 <= ci[1])(proportion_interval((torch.rand(50, generator=g) < 0.3).float().mean().item(), 50))
            for _ in range(2000)]
    assert 0.93 < sum(hits) / len(hits) < 0.97
    with pytest.raises(ValueError, match="n >= 1"):
        proportion_interval(0.5, 0)


def test_score_and_fd_interval_report_uncertainty(evaluator):
    idx = torch.randperm(len(evaluator.train_images), generator=torch.Generator().manual_seed(1))
    small, large = evaluator.train_images[idx[:50]], evaluator.train_images[idx[:400]]
    scored = evaluator.score(small, evaluator.train_labels[idx[:50]])
    lo, hi = scored["accuracy_ci"]
    assert lo <= scored["accuracy"] <= hi and hi - lo > 0.03  # 50 digits cannot pin an accuracy down
    fd_lo, fd_hi = evaluator.fd_interval(small, num_boot=50)
    big_lo, big_hi = evaluator.fd_interval(large, num_boot=50)
    assert fd_lo < frechet_distance(*[classify(x, evaluator.classifier)[1] for x in (small, evaluator.test_images)]) < fd_hi
    assert big_hi - big_lo < fd_hi - fd_lo  # more samples, a narrower interval
    assert evaluator.fd_interval(small, num_boot=50) == (fd_lo, fd_hi)  # seeded
    with pytest.raises(ValueError, match="at least 2"):
        evaluator.fd_interval(small[:1])
    # paired: the same images shifted slightly differ by a small, certain amount; unrelated noise by a large one
    noise = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    diff, lo, hi = evaluator.fd_difference_interval(noise, small)
    assert lo > 0 and diff > 10 * (fd_hi - fd_lo)  # noise is far worse than real digits, beyond doubt
    same, same_lo, same_hi = evaluator.fd_difference_interval(small, small)
    assert same == 0.0 and same_lo == 0.0 == same_hi  # identical settings: no difference, no spread
    with pytest.raises(ValueError, match="same number"):
        evaluator.fd_difference_interval(small, large)


def test_generate_asks_for_digits_in_turn():
    torch.manual_seed(0)
    model, diffusion = UNet(UNetConfig.preset("tiny")).eval(), GaussianDiffusion.from_schedule("cosine", 20)
    images, labels, seconds = generate(model, diffusion, 13, steps=2, batch_size=5)
    assert images.shape == (13, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(13)] and seconds > 0
    again, _, _ = generate(model, diffusion, 13, steps=2, batch_size=5)
    torch.testing.assert_close(images, again)  # seeded
    unconditional = UNet(UNetConfig.preset("tiny", num_classes=None)).eval()
    with pytest.raises(ValueError, match="unconditional"):
        generate(unconditional, diffusion, 2, steps=2)


def test_bits_per_dim_in_batches_is_the_bound_of_each_image():
    from ddpm_utils.toy import IdealDenoiser

    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    points = (torch.randint(0, 256, (4, 1, 3, 3), generator=torch.Generator().manual_seed(0)).float() / 127.5) - 1
    ideal = IdealDenoiser(diffusion, points)
    out = bits_per_dim(ideal, diffusion, points.repeat(4, 1, 1, 1), batch_size=5)
    whole = diffusion.variational_bound(ideal, points.repeat(4, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert out["n"] == 16 and out["terms_bpd"].shape == (100,)
    # the KL terms of an ideal denoiser of 4 points add up to about log2 4 = 2 bits per image (notebook 01;
    # measured with 8 copies and three seeds: 1.92, 2.01, 2.05)
    assert (out["terms_bpd"][1:].sum() * 9).item() == pytest.approx(2.0, abs=0.35)
    assert out["bpd"] == pytest.approx(whole["total_bpd"].mean().item(), rel=0.05)  # same formula, other noise draws
    assert out["bpd"] == pytest.approx(out["prior_bpd"] + out["terms_bpd"].sum().item(), rel=1e-5)
    assert 0 < out["sem"] < out["bpd"]
    with pytest.raises(ValueError, match="N >= 2"):
        bits_per_dim(ideal, diffusion, points[:1])


def test_cli_evaluate(tmp_path, capsys):
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny"))
    path = save_checkpoint(tmp_path / "m.pt", model, GaussianDiffusion.from_schedule("cosine", 20), ema=model)
    assert main(["evaluate", "--checkpoint", str(path), "--num", "10", "--steps", "2,0", "--guidance-scale", "1,3",
                 "--unconditional"]) == 0
    table = capsys.readouterr().out.split("setting")[-1].splitlines()
    assert [line[:20].strip() for line in table[1:]] == ["real training images", "DDIM 2, s=1", "DDIM 2, s=3", "DDPM 20, s=1",
                                                         "DDPM 20, s=3", "DDIM 2, uncond.", "DDPM 20, uncond."]
    assert main(["evaluate", "--checkpoint", str(path), "--num", "4", "--steps", "3", "--ancestral", "--nll", "2"]) == 0
    out = capsys.readouterr().out
    assert "DDPM 3, s=3" in out and "bits/dim on 2 held-out digits" in out
    assert main(["evaluate", "--checkpoint", str(path), "--steps", "ten"]) == 2
    assert "--steps must be comma-separated numbers, got 'ten'" in capsys.readouterr().err


def test_kernel_distance_is_unbiased_where_fd_is_not():
    from ddpm_utils.evaluation import kernel_distance

    # the estimator, written out pair by pair on a tiny case
    a, b = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    k = lambda x, y: (x.double() @ y.double() / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert kernel_distance(a, b) == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-9)
    # two samples of one Gaussian: KID is 0 on average (unbiased), FD is not (biased upwards at small n)
    g = torch.Generator().manual_seed(2)
    kids, fds = [], []
    for _ in range(200):
        x, y = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
        kids.append(kernel_distance(x, y))
        fds.append(frechet_distance(x, y))
    kids = torch.tensor(kids)
    assert abs(kids.mean()) < 3 * kids.std() / 200**0.5 and min(kids) < 0 < max(kids)
    assert torch.tensor(fds).mean() > 1.0  # measured about 4.9: every FD is positive, none is near 0
    assert kernel_distance(torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 1) > 50 * kids.std()
    with pytest.raises(ValueError, match="same D"):
        kernel_distance(torch.zeros(10, 3), torch.zeros(10, 4))
