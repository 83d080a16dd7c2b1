"""Every check passes on a correct implementation, stops on a stub, and names the mistake of a realistic wrong one."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_utils import checks
from ddpm_utils.checks import CheckFailed


def stub(*args, **kwargs):
    raise NotImplementedError


# ---- correct implementations (as in the solution notebooks) and realistic mistakes ----

def log_normal(x, mean, var):
    return -0.5 * (math.log(2 * math.pi) + math.log(var) + (x - mean) ** 2 / var)


def log_normal_std(x, mean, var):
    return -0.5 * (math.log(2 * math.pi) + 2 * math.log(var) + (x - mean) ** 2 / var**2)


def kl_gauss(mq, sq, mp, sp):
    return math.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


def kl_reversed(mq, sq, mp, sp):
    return kl_gauss(mp, sp, mq, sq)


def q_sample(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_sample_no_sqrt(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar * x0 + (1 - abar) * noise


def q_sample_one_based(x0, t, noise, alphas_cumprod):
    return q_sample(x0, (t - 1).clamp(min=0), noise, alphas_cumprod)


def q_sample_no_view(x0, t, noise, alphas_cumprod):
    abar = alphas_cumprod[t]  # (B,) against (B, 1, 4, 4): broadcasts along the last axis
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def cosine(T, s=0.008, max_beta=0.999, clip=True):
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta) if clip else betas


def posterior(betas, prev_is_roll=False):
    abar = torch.cumprod(1 - betas, 0)
    prev = torch.roll(abar, 1) if prev_is_roll else torch.cat([torch.ones(1, dtype=betas.dtype), abar[:-1]])
    return prev.sqrt() * betas / (1 - abar), (1 - betas).sqrt() * (1 - prev) / (1 - abar), (1 - prev) / (1 - abar) * betas


def embed(t, dim, max_period=10000, cos_first=False, shift=0):
    half = dim // 2
    args = t.double()[:, None] * max_period ** (-torch.arange(half, dtype=torch.float64) / (half - shift))
    parts = [args.cos(), args.sin()] if cos_first else [args.sin(), args.cos()]
    return torch.cat(parts, -1)


class Block(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, groups=8, use_emb=True):
        super().__init__()
        self.use_emb = use_emb
        self.norm1, self.conv1 = nn.GroupNorm(groups, in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = nn.GroupNorm(groups, out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.use_emb:
            h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)


class BlockWithoutTime(Block):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, use_emb=False)


def loss(model, x0, y, t, eps, alphas_cumprod, target_x0=False):
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    return (((x0 if target_x0 else eps) - model(x_t, t, y)) ** 2).mean()


def ancestral(d, x_t, eps, t, z, noise_at_zero=False, clip=True):
    x0 = (x_t - (1 - d.alphas_cumprod[t]).sqrt() * eps) / d.alphas_cumprod[t].sqrt()
    if clip:
        x0 = x0.clamp(-1, 1)
    mean = d.posterior_mean_coef1[t] * x0 + d.posterior_mean_coef2[t] * x_t
    return mean + d.betas[t].sqrt() * z if t > 0 or noise_at_zero else mean


def ddim(d, x_t, eps, t, s, eta, z, keep_sigma_in_direction=False):
    a_t, a_s = d.alphas_cumprod[t], d.alphas_cumprod[s]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
    direction = (1 - a_s).sqrt() if keep_sigma_in_direction else (1 - a_s - sigma**2).sqrt()
    return a_s.sqrt() * x0 + direction * eps + sigma * z


def guided(model, x, t, y, s, null_label, from_cond=False):
    eps_c, eps_u = model(x, t, y), model(x, t, torch.full_like(y, null_label))
    return (eps_c if from_cond else eps_u) + s * (eps_c - eps_u)


def group_norm(x, num_groups, eps=1e-5, unbiased=False):
    g = x.reshape(x.shape[0], num_groups, -1)
    return ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=unbiased, keepdim=True) + eps).sqrt()).reshape(x.shape)


def ema_step(ema, weights, decay, swapped=False):
    return decay * weights + (1 - decay) * ema if swapped else decay * ema + (1 - decay) * weights


def drop_labels(y, p_uncond, null_label, inverted=False):
    drop = torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) < p_uncond
    return torch.where(~drop if inverted else drop, torch.full_like(y, null_label), y)


def rotation(k, dim, max_period=10000, sign=1):
    half = dim // 2
    angle = sign * k * max_period ** (-torch.arange(half, dtype=torch.float64) / half)
    cos, sin = torch.diag(angle.cos()), torch.diag(angle.sin())
    return torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)], 0)



def v_target(diffusion, x0, t, noise, sign=1.0):
    a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * noise - sign * (1 - a).sqrt() * x0


def learned_log_variance(diffusion, v, t, from_v=False):
    frac = v if from_v else (v + 1) / 2
    log_beta = diffusion.betas[t].log().view(-1, 1, 1, 1)
    return frac * log_beta + (1 - frac) * diffusion.posterior_log_variance_clipped[t].view(-1, 1, 1, 1)


def score_from_eps(eps, abar, power=0.5):
    return -eps / (1 - abar) ** power


def dpm_solver_update(x_t, D, abar, abar_prev, flip=1.0):
    lam, lam_prev = 0.5 * torch.log(abar / (1 - abar)), 0.5 * torch.log(abar_prev / (1 - abar_prev))
    h = flip * (lam_prev - lam)
    return ((1 - abar_prev) / (1 - abar)).sqrt() * x_t - abar_prev.sqrt() * torch.expm1(-h) * D


def to_model_input(image, size, squash=False, corner=False, unit=False, no_crop=False):
    from torchvision.transforms import functional as TF

    image = TF.resize(image, [size, size] if squash else size)
    image = image if no_crop else TF.crop(image, 0, 0, size, size) if corner else TF.center_crop(image, size)
    x = TF.pil_to_tensor(image).float()
    return x / 255 if unit else x / 127.5 - 1


CASES = [  # (check, correct implementation, realistic mistake, words the hint must contain)
    (checks.check_log_normal, log_normal, log_normal_std, "standard deviation"),
    (checks.check_kl_gauss, kl_gauss, kl_reversed, "KL(p || q)"),
    (checks.check_q_sample, q_sample, q_sample_no_sqrt, "take square roots"),
    (checks.check_q_sample, q_sample, q_sample_one_based, "0-based"),
    (checks.check_q_sample, q_sample, q_sample_no_view, "(B, 1, 1, 1)"),
    (checks.check_cosine_betas, cosine, lambda T, s=0.008, max_beta=0.999: cosine(T, s, clip=False), "clip the betas"),
    (checks.check_posterior_coefficients, posterior, lambda b: posterior(b, prev_is_roll=True), "prepend a 1"),
    (checks.check_sinusoidal_embedding, embed, lambda t, dim, mp=10000: embed(t, dim, mp, cos_first=True), "sin comes first"),
    (checks.check_sinusoidal_embedding, embed, lambda t, dim, mp=10000: embed(t, dim, mp, shift=1), "-i / (half - 1)"),
    (checks.check_rotation, rotation, lambda k, d, mp=10000: rotation(k, d, mp, sign=-1), "rotates backwards"),
    (checks.check_res_block, Block, BlockWithoutTime, "time embedding is not used"),
    (checks.check_group_norm, group_norm, lambda x, g, eps=1e-5: group_norm(x, g, eps, unbiased=True), "biased variance"),
    (checks.check_ema_step, ema_step, lambda *a: ema_step(*a, swapped=True), "decay multiplies the old average"),
    (checks.check_drop_labels, drop_labels, lambda *a: drop_labels(*a, inverted=True), "probability 1 - p_uncond"),
    (checks.check_drop_labels, drop_labels, lambda y, p, n: torch.where(torch.rand(y.shape) < p, 0, y), "null label 10"),
    (checks.check_training_loss, loss, lambda *a: loss(*a, target_x0=True), "target is the noise"),
    (checks.check_ancestral_step, ancestral, lambda *a: ancestral(*a, clip=False), "clip the predicted x0"),
    (checks.check_ancestral_step, ancestral, lambda *a: ancestral(*a, noise_at_zero=True), "no noise at the last step"),
    (checks.check_ddim_step, ddim, lambda *a: ddim(*a, keep_sigma_in_direction=True), "sigma^2 must come out"),
    (checks.check_guided_eps, guided, lambda *a: guided(*a, from_cond=True), "start from the unconditional"),
    (checks.check_folder_transform, to_model_input, lambda im, s: to_model_input(im, s, squash=True), "squashes the picture"),
    (checks.check_folder_transform, to_model_input, lambda im, s: to_model_input(im, s, corner=True), "crop the centre"),
    (checks.check_folder_transform, to_model_input, lambda im, s: to_model_input(im, s, unit=True), "x / 255 gives 0..1"),
    (checks.check_folder_transform, to_model_input, lambda im, s: to_model_input(im, s, no_crop=True), "crop the centre square"),
    (checks.check_v_target, v_target, lambda *a: v_target(*a, sign=-1.0), "that is x_t (a plus sign)"),
    (checks.check_learned_log_variance, learned_log_variance, lambda *a: learned_log_variance(*a, from_v=True),
     "turn it into a fraction first"),
    (checks.check_score_from_eps, score_from_eps, lambda e, a: score_from_eps(e, a, power=1.0), "not the variance"),
    (checks.check_dpm_solver_update, dpm_solver_update, lambda *a: dpm_solver_update(*a, flip=-1.0), "you have its negative"),
]


@pytest.mark.parametrize("check, correct, wrong, hint", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_check_accepts_correct_stops_on_stub_and_explains_mistake(check, correct, wrong, hint, capsys):
    check(correct)
    assert "✓" in capsys.readouterr().out
    with pytest.raises(NotImplementedError, match="not written yet"):
        check(stub)
    with pytest.raises(CheckFailed) as failure:
        check(wrong)
    assert hint in str(failure.value), str(failure.value)


def test_a_missing_return_and_a_crash_are_explained():
    with pytest.raises(CheckFailed, match="returned None"):
        checks.check_kl_gauss(lambda *a: None)
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        checks.check_kl_gauss(lambda *a: 1 / 0)


def test_res_block_with_other_parameter_names_is_explained():
    class Renamed(nn.Module):
        def __init__(self, in_ch, out_ch, emb_dim, groups=8):
            super().__init__()
            self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    with pytest.raises(CheckFailed, match="parameters differ"):
        checks.check_res_block(Renamed)


def test_a_failed_check_hides_its_own_frame_from_the_traceback():
    """IPython (and so nbgrader's feedback) skips frames with `__tracebackhide__`: the student sees their cell and the message."""
    import inspect

    names = [n for n in dir(checks) if n.startswith("check_")]
    assert len(names) >= 20
    assert all("__tracebackhide__ = True" in inspect.getsource(getattr(checks, n)) for n in names)
